"""Lower a plan to one dask graph: cached nodes become reads, the rest their op's
expression, plus lazy writes for nodes to cache and for declared outputs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import xarray as xr

from cvplgraph.cache.atlas_ids import atlas_ids
from cvplgraph.cache.checkpoint import scope as checkpoint_scope
from cvplgraph.cache.resume import partial_url
from cvplgraph.cache.store import CachedWrite, read_cached, write_cached_value
from cvplgraph.engine.compile import nodes_in_order
from cvplgraph.engine.plan import Plan, Status
from cvplgraph.errors import CvplError, HaloTooLarge, OpFailed, SpecError
from cvplgraph.io.atlas import read_atlas, region_ids
from cvplgraph.io.stores import open_input
from cvplgraph.spec.model import INPUT


@dataclass
class Lowered:
    """Lazy values per node, and the writes the run must perform."""

    values: dict[str, Any] = field(default_factory=dict)
    cached: dict[str, CachedWrite] = field(default_factory=dict)  # node → its cache store and writes
    ops_called: list[str] = field(default_factory=list)
    #: small figures the run computes beside the values, e.g. ``"input.nonfinite"``: NaN/±Inf voxels read as 0
    tallies: dict[str, Any] = field(default_factory=dict)

    @property
    def writes(self) -> dict[str, list[Any]]:
        return {name: w.writes for name, w in self.cached.items()}

    @property
    def stores(self) -> dict[str, str]:
        """Node → store path relative to the cache root."""
        return {name: w.store for name, w in self.cached.items()}


def lower(plan: Plan, *, with_writes: bool = True) -> Lowered:
    """Build every needed node's lazy value; with ``with_writes``, also create the
    stores of nodes to cache and collect their lazy writes."""
    out = Lowered()
    for node in nodes_in_order(plan.graph):
        status = plan.nodes[node.name].status
        if node.is_input:
            spec = plan.spec
            if node.name != INPUT:
                atlas = read_atlas(dict(spec.atlases)[node.name])
                if _read_by_compute(plan, node.name):  # the region ops check its ids against its table
                    ids = atlas_ids(plan.manifest.url, node.key, partial(region_ids, atlas), atlas.source)
                    atlas = replace(atlas, ids=ids)
                out.values[node.name] = atlas
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
        by_port = {port: out.values.get(src) for port, src in node.inputs}
        positional = [by_port.get(port.name) for port in node.opdef.inputs]
        try:
            if with_writes and node.nodespec.cache:  # keep the op's checkpoints, for a resumed run
                with checkpoint_scope(f"{partial_url(plan.manifest.url, node.key)}/checkpoints"):
                    value = node.opdef.func(*positional, **node.params)
            else:
                value = node.opdef.func(*positional, **node.params)
        except HaloTooLarge as exc:  # a parameter the volume cannot hold: a problem of the spec's field
            raise SpecError([plan.spec.problem(f"nodes.{node.name}.{exc.param}", str(exc))]) from None
        except CvplError:  # the op's own, deliberate message
            raise
        except Exception as exc:  # an op (a plugin's above all) that fails while building its graph
            raise OpFailed(node.name, node.opdef.name, exc) from exc
        out.ops_called.append(node.name)
        if isinstance(value, xr.DataArray):
            value.name = node.name
        out.values[node.name] = value
        if with_writes and node.nodespec.cache:
            written = write_cached_value(
                plan.manifest.url, node.key, value, node.output, node.nodespec.store, node.name
            )
            out.cached[node.name] = written
            if written.resumed is not None:  # an interrupted run wrote part of it: consumers read that part
                out.values[node.name] = written.resumed
    return out


def _read_by_compute(plan: Plan, source: str) -> bool:
    """Whether a node this run computes reads ``source`` (else counting its blocks would read them for nothing)."""
    return any(plan.nodes[n].status is Status.COMPUTE for n in plan.graph.successors(source))
