"""Shapes, chunks and sizes of nodes still to compute, from their lazy values (no compute)."""

from __future__ import annotations

import dataclasses
import math

import xarray as xr

from cvplgraph.engine.lower import lower
from cvplgraph.engine.plan import Plan, Status, make_plan
from cvplgraph.spec.model import Spec
from cvplgraph.values import BlockCounts


def plan_with_estimates(spec: Spec) -> Plan:
    """:func:`make_plan` plus output shape, chunks and estimated bytes of every node to compute."""
    plan = make_plan(spec)
    values = lower(plan, with_writes=False).values
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
