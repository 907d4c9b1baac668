"""Spec → typed, keyed DAG. Pure: no IO, no compute.

Every node of the graph carries its op definition, its full parameters
(defaults filled in), its output type and its key: a hash of op name, op
version, canonical parameters and the keys of its inputs. The raw input's key
is given (see :mod:`cvplgraph.fingerprint`), so compiling is instant and
testable.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from .errors import Problem, SpecError
from .hashing import node_key
from .outputs import suffix_problem
from .params import check_param
from .registry import REGISTRY, OpDef
from .spec import INPUT, NodeSpec, Spec
from .types import PortType, format_types


@dataclass(frozen=True)
class Node:
    """A compiled node: what it runs, on what, and its cache key."""

    name: str
    op: OpDef | None  # None for the raw input
    spec: NodeSpec | None
    params: tuple[tuple[str, object], ...]
    inputs: tuple[tuple[str, str], ...]  # (port, source node)
    output: PortType
    key: str

    @property
    def is_input(self) -> bool:
        return self.op is None

    @property
    def opdef(self) -> OpDef:
        """The op of a non-input node."""
        if self.op is None:
            raise TypeError("the input node has no op")
        return self.op

    @property
    def nodespec(self) -> NodeSpec:
        """The spec of a non-input node."""
        if self.spec is None:
            raise TypeError("the input node has no node spec")
        return self.spec


def graph_problems(spec: Spec, declared: set[str]) -> list[Problem]:
    """Problems of the graph as a whole: unknown references, wrong edge types, cycles, outputs."""
    problems: list[Problem] = []
    nodes = {n.name: n for n in spec.nodes}
    sources = spec.sources
    names = sorted({*sources, *declared})
    for node in spec.nodes:
        opdef = REGISTRY[node.op]
        for port, source in node.inputs:
            path = f"nodes.{node.name}.{port}"
            if source == node.name:
                problems.append(spec.problem(path, f"node `{node.name}` cannot take its own output as input"))
                continue
            if source not in sources and source not in declared:
                problems.append(spec.problem(path, f"unknown node {source!r}; known: {', '.join(names)}"))
                continue
            if source not in nodes and source not in sources:
                continue  # the source itself is invalid and reported on its own
            produced = PortType(sources[source]) if source in sources else REGISTRY[nodes[source].op].output
            accepted = opdef.port(port).types  # type: ignore[union-attr]
            if produced not in accepted:
                problems.append(
                    spec.problem(
                        path,
                        f"type mismatch: `{source}` produces {produced} but `{node.name}.{port}` "
                        f"({node.op}) expects {format_types(accepted)}",
                    )
                )
    graph = nx.DiGraph([(s, n.name) for n in spec.nodes for _, s in n.inputs if s in nodes and s != n.name])
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = []
    if cycle:
        path = " → ".join([cycle[0][0], *(v for _, v in cycle)])
        problems.append(spec.problem(f"nodes.{cycle[0][0]}", f"cycle in the graph: {path}"))
    for name, target in spec.outputs:
        if name not in declared:
            problems.append(
                spec.problem(f"outputs.{name}", f"unknown node {name!r}; known: {', '.join(sorted(declared))}")
            )
        elif name in nodes and (msg := suffix_problem(REGISTRY[nodes[name].op].output, target)):
            problems.append(spec.problem(f"outputs.{name}", msg))
    return problems


def compile_spec(spec: Spec, input_fingerprint: str, source_keys: dict[str, str] | None = None) -> nx.DiGraph:
    """The typed DAG of ``spec``; node attribute ``node`` holds a :class:`Node`.

    ``input_fingerprint`` is the image's key; ``source_keys`` those of the
    named inputs (atlases).

    Edges run source → consumer with attribute ``port``. Raises SpecError on
    graph problems (already checked by :func:`cvplgraph.spec.parse_spec`).
    """
    problems = graph_problems(spec, {n.name for n in spec.nodes})
    if problems:
        raise SpecError(problems)
    graph = nx.DiGraph()
    graph.add_node(INPUT, node=Node(INPUT, None, None, (), (), PortType.Image, input_fingerprint))
    for name, _ in spec.atlases:
        key = (source_keys or {}).get(name, "")
        graph.add_node(name, node=Node(name, None, None, (), (), PortType.Atlas, key))
    for n in spec.nodes:
        graph.add_node(n.name)
        for port, source in n.inputs:
            graph.add_edge(source, n.name, port=port)
    for name in nx.topological_sort(graph):
        if name in spec.sources:
            continue
        ns = spec.node(name)
        opdef = REGISTRY[ns.op]
        given = ns.param_map
        params = tuple(
            sorted((p.name, given[p.name] if p.name in given else check_param(p, p.default)[1]) for p in opdef.params)
        )
        input_keys = {port: graph.nodes[src]["node"].key for port, src in ns.inputs}
        key = node_key(opdef.name, opdef.version, dict(params), input_keys)
        graph.nodes[name]["node"] = Node(name, opdef, ns, params, ns.inputs, opdef.output, key)
    return graph


def nodes_in_order(graph: nx.DiGraph) -> list[Node]:
    """Compiled nodes, sources first (ties broken by name for stable output)."""
    return [graph.nodes[n]["node"] for n in nx.lexicographical_topological_sort(graph)]
