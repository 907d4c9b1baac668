"""Shapes, chunks and sizes of nodes still to compute, without building their per-block graphs.

``plan`` shows what each node will hold before anything runs. Lowering the whole plan to learn that would build
every per-block graph (the labelling's union, the statistics' merge): seconds at a whole brain's 10⁵ blocks. Here
each node gets a stand-in that has the value's shape, chunks and dtype and nothing more:

- the input and cached nodes are opened as a run opens them (lazily: metadata only);
- an op with a :class:`~cvplgraph.kernels.LocalPass` kernel that declares its value's dtype yields an array of
  its input's shape and chunks, of that dtype (the kernel's contract);
- an op with a :class:`~cvplgraph.kernels.Reduce` kernel yields a table in the geometry of the pass it reduces;
- every other op is called as the lowering calls it (array ops build lazy, blockwise expressions; table ops one
  task on their table).

Nothing is computed: a stand-in table's rows are never asked for.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import dask
import xarray as xr

from cvplgraph.cache.store import read_cached
from cvplgraph.engine.compile import nodes_in_order
from cvplgraph.engine.lower import atlas_value, call_op, op_inputs
from cvplgraph.engine.plan import Plan, Status, make_plan
from cvplgraph.io.stores import open_input
from cvplgraph.kernels import LocalPass, Reduce
from cvplgraph.spec.model import INPUT, Spec
from cvplgraph.types import PortType
from cvplgraph.values import BlockCounts, Geometry, Table, like


def plan_with_estimates(spec: Spec) -> Plan:
    """:func:`make_plan` plus output shape, chunks and estimated bytes of every node to compute."""
    plan = make_plan(spec)
    values = estimate_values(plan)
    for name, p in plan.nodes.items():
        value = values.get(name)
        if p.status not in (Status.COMPUTE, Status.INPUT) or value is None:
            continue
        if isinstance(value, xr.DataArray):
            data = value.data
            plan.nodes[name] = dataclasses.replace(
                p,
                shape=tuple(data.shape),
                chunks=tuple(c[0] for c in data.chunks),
                dtype=str(data.dtype),
                nbytes=int(data.nbytes),
            )
        elif isinstance(value, BlockCounts):
            plan.nodes[name] = dataclasses.replace(
                p, shape=value.grid_shape, dtype="int64", nbytes=8 * math.prod(value.grid_shape)
            )
    return plan


def estimate_values(plan: Plan) -> dict[str, Any]:
    """Per node the input, cached or computed node's stand-in value (see the module's docstring)."""
    values: dict[str, Any] = {}
    spec = plan.spec
    for node in nodes_in_order(plan.graph):
        status = plan.nodes[node.name].status
        if node.is_input:
            values[node.name] = open_input(spec.input)[0] if node.name == INPUT else atlas_value(plan, node.name)
            continue
        if status is Status.CACHED:
            values[node.name] = read_cached(plan.manifest.url, plan.entries[node.name].store, node.output)
            continue
        if status is not Status.COMPUTE:
            continue
        positional = op_inputs(node, values)
        value = _stand_in(node.opdef.kernel, node.output, positional)
        values[node.name] = value if value is not None else call_op(plan, node.name, positional)
    return values


def _stand_in(kernel: Any, output: PortType, positional: list[Any]) -> Any:
    """The value a kernel's contract tells without building it, or None (then the op is called)."""
    first = positional[0] if positional else None
    if not isinstance(first, xr.DataArray):
        return None
    if isinstance(kernel, LocalPass) and kernel.dtype is not None:
        return like(first.data.astype(kernel.dtype), first)
    if isinstance(kernel, Reduce) and output is PortType.Points:
        return Table(dask.delayed(_not_computed)(), Geometry.of(first))
    return None


def _not_computed() -> None:
    raise RuntimeError("a plan's stand-in table was computed; it only carries a geometry")
