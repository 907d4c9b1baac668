"""One spec per dataset from a suite's variants: each variant's spec on the dataset, then all of
them merged so that identical steps are one node (computed once, cached like any run)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cvplgraph.bench.suite import Dataset, Variant
from cvplgraph.engine.compile import compile_spec, nodes_in_order
from cvplgraph.errors import CvplError
from cvplgraph.plugins import import_plugin
from cvplgraph.registry import get_op, known_ops
from cvplgraph.spec.fields import locate_fields
from cvplgraph.spec.model import NodeSpec, Spec
from cvplgraph.spec.parse import load_toml, spec_from_raw
from cvplgraph.types import PortType


def variant_spec(variant: Variant, dataset: Dataset, cache_url: str) -> tuple[Spec, str]:
    """The variant's spec on the dataset — its input, the suite's cache, the overrides applied,
    only the nodes (and atlases) the scored points and regions need — and the scored node."""
    text = variant.spec.read_text(encoding="utf-8")
    raw = load_toml(text, str(variant.spec))

    for module in raw.get("plugins", []) if isinstance(raw.get("plugins"), list) else []:
        import_plugin(module, variant.spec.resolve().parent)  # its ops decide which nodes are read
    nodes = raw.get("nodes", {})
    for node, param, value in variant.overrides:
        if node not in nodes:
            raise CvplError(f"{variant.spec}: variant {variant.name}: no node {node!r} to set {param} on "
                            f"(nodes: {', '.join(nodes)})")  # fmt: skip
        nodes[node][param] = value
    scored = scored_node(raw, variant)
    keep = set()
    for name in [scored, *([variant.regions] if variant.regions else [])]:
        keep |= _upstream(nodes, name)
    raw["nodes"] = {name: body for name, body in nodes.items() if name in keep}
    raw["input"] = dataset.input
    atlases = dataset.inputs if dataset.inputs is not None else raw.get("inputs", {})
    raw["inputs"] = {name: body for name, body in atlases.items() if name in keep}
    raw["cache"] = {"url": cache_url}
    for key in ("outputs", "cluster", "tune"):
        raw.pop(key, None)
    return spec_from_raw(raw, str(variant.spec), locate_fields(text)), scored


def scored_node(raw: dict[str, Any], variant: Variant) -> str:
    """The node whose points are scored: the variant's ``points``, or the spec's only Points node."""
    nodes = raw.get("nodes", {})
    if variant.points:
        if variant.points not in nodes:
            raise CvplError(f"variant {variant.name}: points = {variant.points!r} is not a node of {variant.spec}")
        return variant.points
    points = [name for name, body in nodes.items() if _op(body) is not None and _op(body).output is PortType.Points]
    if len(points) != 1:
        raise CvplError(
            f"variant {variant.name}: {variant.spec} has {len(points)} Points nodes ({', '.join(points) or 'none'}); "
            'say which to score with points = "NODE"'
        )
    return points[0]


def _op(body: Any) -> Any:
    op = body.get("op") if isinstance(body, dict) else None
    return get_op(op) if isinstance(op, str) and op in known_ops() else None


def _upstream(nodes: dict[str, Any], name: str) -> set[str]:
    """``name`` and every node or input it reads, in a spec's raw [nodes] tables."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        opdef = _op(nodes.get(current))
        if opdef is not None:
            todo += [nodes[current][p.name] for p in opdef.inputs if isinstance(nodes[current].get(p.name), str)]
    return seen


def merge(specs: dict[str, Spec], suite_path: str) -> tuple[Spec, dict[tuple[str, str], str]]:
    """One spec holding every variant's nodes, identical nodes once.

    Two nodes are identical when their cache keys are (same op and version, same parameters
    with defaults filled in, identical inputs; all variants read the same input). Returns the
    merged spec and, per (variant, node), the merged node's name (``variant.node`` of the first variant that needed it).
    """
    names: dict[tuple[str, str], str] = {}
    identity: dict[str, str] = {}  # node key → merged name
    merged: list[NodeSpec] = []
    atlases: dict[str, Any] = {}
    for variant, spec in specs.items():
        for name, atlas in spec.atlases:
            if atlases.setdefault(name, atlas) != atlas:
                raise CvplError(f"variants give different atlases named {name!r}; give them one in the dataset")
        graph = compile_spec(spec, "input", {name: name for name, _ in spec.atlases})
        for compiled in nodes_in_order(graph):
            if compiled.is_input:
                continue
            node, key = compiled.nodespec, compiled.key
            if key not in identity:
                identity[key] = f"{variant}.{node.name}"
                rename = {port: names.get((variant, src), src) for port, src in node.inputs}
                merged.append(replace(node, name=identity[key], inputs=tuple(rename.items())))
            names[(variant, node.name)] = identity[key]
    first = next(iter(specs.values()))
    plugins = tuple(dict.fromkeys(p for s in specs.values() for p in s.plugins))
    spec = replace(first, path=suite_path, nodes=tuple(merged), outputs=(), locations={}, formats=(),
                   atlases=tuple(atlases.items()), plugins=plugins)  # fmt: skip
    return spec, names
