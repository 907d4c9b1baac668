"""Plan: for every node, cached or to compute, and why. Reads metadata only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import networkx as nx

from cvplgraph.cache.fingerprint import fingerprint_atlas, survey_input
from cvplgraph.cache.keys import canonical
from cvplgraph.cache.manifest import Entry, Manifest
from cvplgraph.cache.resume import partial_progress
from cvplgraph.engine.compile import Node, compile_spec, nodes_in_order
from cvplgraph.engine.status import Status  # defined apart to stay light; a plan's users import it from here
from cvplgraph.errors import InputError
from cvplgraph.spec.model import INPUT, AtlasSpec, Spec
from cvplgraph.spec.parse import load_spec


@dataclass(frozen=True, kw_only=True)
class NodePlan:
    """One node of a plan: what it is, its key, and what a run will do with it and why."""

    name: str
    op: str
    type: str
    key: str
    status: Status
    reasons: tuple[str, ...] = ()
    cache: bool = True
    shape: tuple[int, ...] | None = None
    chunks: tuple[int, ...] | None = None
    dtype: str | None = None
    nbytes: int | None = None
    done: float | None = None  # share of the chunks an interrupted run already wrote (resumed, not redone)

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):  # "cached" given as a string, e.g. from JSON
            object.__setattr__(self, "status", Status(self.status))


@dataclass
class Plan:
    spec: Spec
    graph: nx.DiGraph
    manifest: Manifest
    nodes: dict[str, NodePlan] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)  # node → cached entry
    warnings: list[str] = field(default_factory=list)  # what a user must know before trusting the results
    input_bytes: int | None = None  # the input selection's bytes as stored (None: not surveyed)

    def node(self, name: str) -> Node:
        """The compiled node ``name`` (its op, parameters, input keys and key).

        Raises
        ------
        KeyError
            If the plan has no node ``name``.
        """
        return self.graph.nodes[name]["node"]

    def to_compute(self) -> list[str]:
        return [n for n, p in self.nodes.items() if p.status is Status.COMPUTE]

    def cached(self) -> list[str]:
        return [n for n, p in self.nodes.items() if p.status is Status.CACHED]

    def to_json(self) -> str:
        return json.dumps(
            {
                "spec": self.spec.path,
                "cache": self.manifest.url,
                "nodes": [asdict(p) for p in self.nodes.values()],
                "warnings": self.warnings,
            },
            indent=1,
        )


def _fmt(value: Any) -> str:
    value = list(value) if isinstance(value, tuple) else value
    return json.dumps(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Change:
    """One component of a node that differs from a cache entry: old → new."""

    kind: str  # "op" | "op version" | "parameter" | "storage option" | "input"
    name: str  # the parameter, option or input port ("" for the op)
    old: str
    new: str

    def reason(self) -> str:
        """The change as ``plan`` prints it."""
        if self.kind == "input":
            return f"input `{self.name}` changed"
        if self.kind == "parameter":
            return f"parameter `{self.name}` changed {self.old} → {self.new}"
        if self.kind == "storage option":
            return f"{self.name} {self.old} → {self.new}"
        return f"{self.kind} changed {self.old} → {self.new}"


def changes(node: Node, previous: Entry) -> list[Change]:
    """What makes ``node``'s key differ from ``previous``: op, op version, parameters, input keys."""
    out = []
    if previous.op != node.opdef.name:
        out.append(Change("op", "", previous.op, node.opdef.name))
    elif previous.version != node.opdef.version:
        out.append(Change("op version", node.opdef.name, str(previous.version), str(node.opdef.version)))
    for name in sorted(set(node.params) | set(previous.params)):
        old, new = previous.params.get(name, "(unset)"), node.params.get(name, "(unset)")
        if canonical(old) != canonical(new):
            out.append(Change("parameter", name, _fmt(old), _fmt(new)))
    for port, key in sorted(node.input_keys.items()):
        if previous.inputs.get(port) != key:
            out.append(Change("input", port, previous.inputs.get(port) or "(none)", key))
    return out


def store_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Storage options that differ (never part of a key: the same values, stored differently)."""
    return [
        Change("storage option", k, _fmt(old.get(k)), _fmt(new.get(k)))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def why(node: Node, previous: Entry | None) -> list[str]:
    """Reasons a node's key differs from the newest entry made for the same node name."""
    if previous is None:
        return ["new"]
    return [c.reason() for c in changes(node, previous)] or ["not in the cache"]


def _named(atlas: AtlasSpec) -> str:
    """How the plan names an atlas given by name: BrainGlobe's name and version."""
    return f"BrainGlobe atlas {atlas.name}" + (f" {atlas.version}" if atlas.version else "")


def make_plan(spec: Spec, *, fingerprint: str | None = None) -> Plan:
    """Compile ``spec`` and compare every node's key with the cache."""
    atlas_keys = {name: fingerprint_atlas(atlas) for name, atlas in spec.atlases}
    survey = survey_input(spec.input) if fingerprint is None else None
    if survey is not None and survey.absent and spec.input.missing_chunks == "error":
        raise InputError(f"{survey.url}: {survey.absent:,} of {survey.total:,} chunks absent "
                         f"({', '.join(survey.examples)}…); [input] missing_chunks = \"error\" expects every chunk "
                         "the selection reads to exist")  # fmt: skip
    graph = compile_spec(spec, survey.key if survey is not None else str(fingerprint), atlas_keys)
    atlases = dict(spec.atlases)
    manifest = Manifest(spec.cache_url)
    plan = Plan(spec, graph, manifest)
    plan.input_bytes = survey.nbytes if survey is not None else None
    note = survey.note() if survey is not None else None
    if note:
        plan.warnings.append(note)
    needed = {name for name, _ in spec.outputs}
    for node in nodes_in_order(graph):
        if node.is_input:
            url = spec.input.url if node.name == INPUT else atlases[node.name].url or _named(atlases[node.name])
            plan.nodes[node.name] = NodePlan(
                name=node.name, op="input", type=str(node.output), key=node.key, status=Status.INPUT, reasons=(url,)
            )
            continue
        entry = manifest.get(node.key) if node.nodespec.cache else None
        restore = store_changes(entry.store_options, node.nodespec.store.to_dict()) if entry is not None else []
        if entry is not None and not restore:
            plan.entries[node.name] = entry
            plan.nodes[node.name] = NodePlan(
                name=node.name,
                op=node.opdef.name,
                type=str(node.output),
                key=node.key,
                status=Status.CACHED,
                shape=_t(entry.shape),
                chunks=_t(entry.chunks),
                dtype=entry.dtype,
                nbytes=entry.bytes,
            )
            continue
        reasons = why(node, manifest.previous(node.name, spec.source)) if node.nodespec.cache else ["cache = false"]
        if restore and entry is not None:  # same values, stored differently: computed again and stored anew
            reasons = ["storage options changed: " + "; ".join(c.reason() for c in restore)]
        done = partial_progress(manifest.url, node.key) if node.nodespec.cache else None
        if done is not None:
            reasons.append(f"an interrupted run wrote {done:.0%} of its chunks; the rest is computed")
        plan.nodes[node.name] = NodePlan(
            name=node.name,
            op=node.opdef.name,
            type=str(node.output),
            key=node.key,
            status=Status.COMPUTE,
            reasons=tuple(reasons),
            cache=node.nodespec.cache,
            done=done,
        )
    # a node that is not cached is computed only when a node to compute or an output needs it;
    # demand flows upstream and stops at cached nodes
    stack = [n for n, p in plan.nodes.items() if p.status is Status.COMPUTE and p.cache] + sorted(needed)
    wanted: set[str] = set()
    while stack:
        name = stack.pop()
        if name in wanted or plan.nodes[name].status is not Status.COMPUTE:
            continue
        wanted.add(name)
        stack.extend(graph.predecessors(name))
    for name, p in plan.nodes.items():
        if p.status is Status.COMPUTE and name not in wanted:
            skipped = ("cache = false and nothing needs it",)
            plan.nodes[name] = replace(p, status=Status.SKIP, reasons=skipped, cache=False)
    return plan


def _t(v: list[int] | None) -> tuple[int, ...] | None:
    return tuple(v) if v is not None else None


def reachable_keys(specs: Sequence[str]) -> set[str]:
    """Keys of every node of the given spec files."""
    keys: set[str] = set()
    for path in specs:
        keys |= {p.key for p in make_plan(load_spec(path)).nodes.values()}
    return keys
