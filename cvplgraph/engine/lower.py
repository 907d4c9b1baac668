"""Lower a plan to one dask graph: cached nodes become reads, the rest their op's
expression, plus lazy writes for nodes to cache and for declared outputs."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import xarray as xr

from cvplgraph.cache.atlas_ids import atlas_ids
from cvplgraph.cache.checkpoint import scope as checkpoint_scope
from cvplgraph.cache.resume import checkpoints_url
from cvplgraph.cache.store import CachedWrite, NotFusable, read_cached, write_cached_value
from cvplgraph.engine.compile import nodes_in_order
from cvplgraph.engine.fuse import Group, build_group, find_groups, sources
from cvplgraph.engine.plan import Plan, Status
from cvplgraph.errors import CvplError, HaloTooLarge, OpFailed, SpecError
from cvplgraph.io.atlas import read_atlas, region_ids
from cvplgraph.io.stores import open_input
from cvplgraph.spec.model import INPUT
from cvplgraph.values import Atlas


@dataclass
class Lowered:
    """Lazy values per node, and the writes the run must perform."""

    values: dict[str, Any] = field(default_factory=dict)
    cached: dict[str, CachedWrite] = field(default_factory=dict)  # node → its cache store and writes
    ops_called: list[str] = field(default_factory=list)
    #: small figures the run computes beside the values, e.g. ``"input.nonfinite"``: NaN/±Inf voxels read as 0
    tallies: dict[str, Any] = field(default_factory=dict)
    #: nodes computed by fused tasks, one list per group (see :mod:`cvplgraph.engine.fuse`)
    fused: list[list[str]] = field(default_factory=list)

    @property
    def writes(self) -> dict[str, list[Any]]:
        return {name: w.writes for name, w in self.cached.items()}

    @property
    def stores(self) -> dict[str, str]:
        """Node → store path relative to the cache root."""
        return {name: w.store for name, w in self.cached.items()}


def lower(plan: Plan, *, with_writes: bool = True, fuse: bool = True, scratch: str | None = None) -> Lowered:
    """Build every needed node's lazy value; with ``with_writes``, also create the
    stores of nodes to cache and collect their lazy writes. With ``fuse`` (and ``with_writes``),
    chains of block kernels run as one task per block (:mod:`cvplgraph.engine.fuse`); the values
    and stores are the same bytes either way; their tasks spill their small results into ``scratch`` (a folder
    the run removes afterwards) when given, or keep them in memory."""
    with paused_gc():
        return _lower(plan, with_writes, fuse, scratch)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off while a graph is built. Building a whole brain's graph makes
    millions of objects (tasks, keys, Delayed) and almost no cycles, and every few thousand new objects the
    collector walked all of them: half the lowering's time at 10⁵ blocks (3 of 6.8 s). What a lowering leaves
    in cycles is collected once the collector is back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _lower(plan: Plan, with_writes: bool, fuse: bool, scratch: str | None) -> Lowered:
    out = Lowered()
    groups = find_groups(plan) if fuse and with_writes else []
    group_of = {name: group for group in groups for name in group.nodes}
    for node in nodes_in_order(plan.graph):
        if node.name in out.values:  # built with its fused group
            continue
        status = plan.nodes[node.name].status
        if node.is_input:
            spec = plan.spec
            if node.name != INPUT:
                out.values[node.name] = atlas_value(plan, node.name)
                continue
            out.values[node.name], replaced = open_input(spec.input)
            if replaced is not None and _read_by_compute(plan, node.name):
                out.tallies[f"{INPUT}.nonfinite"] = replaced
            continue
        if status is Status.CACHED:
            entry = plan.entries[node.name]
            out.values[node.name] = read_cached(plan.manifest.url, entry.store, node.output)
            continue
        if status is not Status.COMPUTE:
            continue
        group = group_of.get(node.name)
        if group is not None and _lower_fused(plan, group, out, scratch):
            continue
        _keep(plan, out, node.name, call_op(plan, node.name, op_inputs(node, out.values), with_writes), with_writes)
    return out


def op_inputs(node: Any, values: dict[str, Any]) -> list[Any]:
    """A compiled node's input values, in its op's argument order (None for an optional port left unset)."""
    by_port = {port: values.get(src) for port, src in node.inputs}
    return [by_port.get(port.name) for port in node.opdef.inputs]


def atlas_value(plan: Plan, name: str) -> Atlas:
    """Atlas input ``name`` as the ops get it: with its distinct ids when a node to compute reads it (the region
    ops check them against its table while their graph is built)."""
    atlas = read_atlas(dict(plan.spec.atlases)[name])
    if _read_by_compute(plan, name):
        atlas = replace(atlas, ids=known_ids(plan, name, atlas))
    return atlas


def known_ids(plan: Plan, name: str, atlas: Atlas | None = None) -> np.ndarray:
    """The distinct region ids of atlas input ``name``: remembered by the atlas's key, else counted once."""
    atlas = atlas or read_atlas(dict(plan.spec.atlases)[name])
    return atlas_ids(plan.manifest.url, plan.node(name).key, partial(region_ids, atlas), atlas.source)


def call_op(plan: Plan, name: str, positional: list[Any], with_writes: bool = False) -> Any:
    """The op of node ``name`` called on its input values: its lazy value (with ``with_writes``, its checkpoints
    kept for a resumed run where the node is cached)."""
    node = plan.node(name)
    try:
        if with_writes and node.nodespec.cache:  # keep the op's checkpoints, for a resumed run
            with checkpoint_scope(checkpoints_url(plan.manifest.url, node.key)):
                return node.opdef.func(*positional, **node.params)
        return node.opdef.func(*positional, **node.params)
    except HaloTooLarge as exc:  # a parameter the volume cannot hold: a problem of the spec's field
        raise SpecError([plan.spec.problem(f"nodes.{node.name}.{exc.param}", str(exc))]) from None
    except CvplError:  # the op's own, deliberate message
        raise
    except Exception as exc:  # an op (a plugin's above all) that fails while building its graph
        raise OpFailed(node.name, node.opdef.name, exc) from exc


def _keep(plan: Plan, out: Lowered, name: str, value: Any, with_writes: bool) -> None:
    """Record a computed node's value and, when it is cached, its store and lazy writes."""
    node = plan.node(name)
    out.ops_called.append(name)
    if isinstance(value, xr.DataArray):
        value.name = name
    out.values[name] = value
    if with_writes and node.nodespec.cache and name not in out.cached:
        written = write_cached_value(plan.manifest.url, node.key, value, node.output, node.nodespec.store, name)
        out.cached[name] = written
        if written.resumed is not None:  # an interrupted run wrote part of it: consumers read that part
            out.values[name] = written.resumed


def _lower_fused(plan: Plan, group: Group, out: Lowered, scratch: str | None) -> bool:
    """Build every node of ``group`` as fused tasks; False (nothing recorded) when its inputs are not all
    built yet or a store cannot be written block by block: the group's nodes are then lowered op by op."""
    head = out.values.get(group.head)
    others = {src: out.values.get(src) for chain in group.chains for r in chain.reduces
              for src in sources(plan, r)[1:]}  # fmt: skip
    arrays = [head, *others.values()]
    if not all(isinstance(v, xr.DataArray) and v.shape == head.shape for v in arrays):  # type: ignore[union-attr]
        return False
    try:
        built = build_group(plan, group, head, others,  # type: ignore[arg-type]
                            lambda name, x: call_op(plan, name, [x]), scratch)  # fmt: skip
    except NotFusable:
        return False
    out.cached.update(built.cached)
    for name in group.nodes:
        _keep(plan, out, name, built.values[name], with_writes=True)
    out.fused.append(group.nodes)
    return True


def _read_by_compute(plan: Plan, source: str) -> bool:
    """Whether a node this run computes reads ``source`` (else counting its blocks would read them for nothing)."""
    return any(plan.nodes[n].status is Status.COMPUTE for n in plan.graph.successors(source))
