"""Committing a run's cache stores: one manifest entry per store the run completed, with its provenance and
chunk checksums, only when the store is whole (see docs/cache.md, "Leases")."""

from __future__ import annotations

import json
import math
import socket
import time
from typing import Any

import networkx as nx
import xarray as xr

from cvplgraph._version import __version__
from cvplgraph.cache.manifest import Entry
from cvplgraph.cache.resume import chunk_grid, clear_partial
from cvplgraph.engine.lower import Lowered
from cvplgraph.engine.plan import Plan
from cvplgraph.errors import CacheError
from cvplgraph.io.tables import finished_marker


def provenance(plan: Plan, name: str) -> tuple[dict[str, int], dict[str, str]]:
    """Op versions of ``name`` and everything upstream, and the keys of the raw inputs it comes from."""
    ops: dict[str, int] = {}
    inputs: dict[str, str] = {}
    for upstream in [*nx.ancestors(plan.graph, name), name]:
        node = plan.node(upstream)
        if node.is_input:
            inputs[upstream] = node.key
        else:
            ops[node.opdef.name] = node.opdef.version
    return dict(sorted(ops.items())), dict(sorted(inputs.items()))


def commit(plan: Plan, lowered: Lowered, started: float, finished: float) -> list[str]:
    """Commit an entry for every store this run completed, then drop its chunk records."""
    committed = []
    host = socket.gethostname()
    for name, written in lowered.cached.items():
        node = plan.node(name)
        value = lowered.values[name]
        array = value.data if isinstance(value, xr.DataArray) else None
        op_versions, input_keys = provenance(plan, name)
        entry = Entry(
            key=node.key,
            node=name,
            op=node.opdef.name,
            version=node.opdef.version,
            params=dict(node.params),
            inputs=dict(node.input_keys),
            type=str(node.output),
            store=written.store,
            store_options=node.nodespec.store.to_dict(),
            shape=list(array.shape) if array is not None else None,
            dtype=str(array.dtype) if array is not None else None,
            chunks=[c[0] for c in array.chunks] if array is not None else None,
            bytes=plan.manifest.bytes_under(written.store),
            seconds=round(finished - started, 3),
            created=time.time(),
            spec=plan.spec.source,
            cvplgraph_version=__version__,
            op_versions=op_versions,
            input_fingerprints=input_keys,
            started=started,
            finished=finished,
            host=host,
        )
        existing = plan.manifest.get(node.key)
        if existing is None or existing.store != written.store:  # same store: a concurrent run committed it
            _commit_whole(plan, name, written, entry)
        clear_partial(plan.manifest.url, node.key)  # records and the op's checkpoints
        committed.append(name)
    return committed


def _commit_whole(plan: Plan, name: str, written: Any, entry: Entry) -> None:
    """Commit ``entry`` with its store's chunk checksums, if the store is whole; a store that is not is never
    committed (:class:`CacheError`), unless a concurrent run committed the key meanwhile (its entry stands)."""
    try:
        sums = _whole(plan, name, written)
    except CacheError:
        if plan.manifest.get(entry.key) is None:
            raise
        return  # committed by a concurrent run just now, which also cleared the records we counted
    if sums is not None:  # the chunk checksums stay beside the store, for `cache verify` and reads
        checksums = json.dumps({"levels": sums}).encode()
        plan.manifest.fs.pipe_file(f"{plan.manifest.root}/{written.store}.chunks.json", checksums)
    plan.manifest.commit(entry)


def _whole(plan: Plan, name: str, written: Any) -> list[dict[str, str | None]] | None:
    """The chunk checksums of a store this run wrote (None for a table), after checking the store is whole:
    its metadata there and every chunk of every level recorded. Anything less (a ``cache gc`` that
    removed it meanwhile) is never committed."""
    fs, root = plan.manifest.fs, plan.manifest.root
    where = f"{plan.manifest.url}/{written.store}"
    if not fs.exists(f"{root}/{written.store}/{finished_marker(written.store)}"):
        raise CacheError(f"{where}: the store of node {name!r} was removed while this run wrote it (a cache gc?); "
                         "nothing committed for it; expected it whole; run again")  # fmt: skip
    if written.records is None:
        return None
    sums = written.records.checksums()
    for level, (recorded, grid) in enumerate(zip(sums, map(chunk_grid, written.records.levels))):
        if len(recorded) != math.prod(grid):
            raise CacheError(f"{where}: level {level} of node {name!r} has {len(recorded)} of {math.prod(grid)} "
                             "chunks recorded (records removed while this run wrote them: a cache gc?); nothing "
                             "committed for it; run again")  # fmt: skip
    return sums


__all__ = ["commit", "provenance"]
