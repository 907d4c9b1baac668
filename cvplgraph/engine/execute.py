"""Execute a plan: one compute over every write and small result, then commit.

Where it computes is :mod:`cvplgraph.engine.cluster`'s choice (the caller's client, a
scheduler address, a factory, a LocalCluster, or dask's local schedulers).
Manifest entries are committed only after the compute returned, so an entry
never describes an incomplete store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask
import fsspec
import xarray as xr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from cvplgraph._version import __version__
from cvplgraph.cache.checkpoint import CheckpointGone, clear_dead_scratch, remove_scratch, scratch_url
from cvplgraph.cache.lease import Holder
from cvplgraph.cache.store import read_cached
from cvplgraph.engine.cluster import connect, ship_plugins
from cvplgraph.engine.commit import commit, provenance
from cvplgraph.engine.failures import cluster_failed_keys, local_failed_keys, node_failure, task_owners
from cvplgraph.engine.lean import lean_workers
from cvplgraph.engine.lower import Lowered, known_ids, lower
from cvplgraph.engine.plan import Plan, make_plan
from cvplgraph.engine.progress import Display, as_display, cluster_progress, counting, local_progress
from cvplgraph.errors import CacheError, CvplError, DamagedStore
from cvplgraph.io.outputs import PointsOutput, region_dataset, write_block_counts, write_regions
from cvplgraph.io.stores import write_array
from cvplgraph.io.tables import is_partitioned, points_dataset
from cvplgraph.kernels import graph_sources, keys_token
from cvplgraph.spec.cluster import ClusterSpec
from cvplgraph.spec.targets import PROVENANCE_SUFFIX
from cvplgraph.types import PortType
from cvplgraph.values import BlockCounts, Table

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a run did."""

    computed: list[str] = field(default_factory=list)  # nodes whose op ran
    cached: list[str] = field(default_factory=list)  # nodes read from the cache
    committed: list[str] = field(default_factory=list)  # nodes newly stored
    outputs: dict[str, str] = field(default_factory=dict)
    tallies: dict[str, int] = field(default_factory=dict)  # e.g. "input.nonfinite": NaN/±Inf voxels read as 0
    blocks: dict[str, tuple[int, int]] = field(default_factory=dict)  # node → (blocks written, blocks resumed)
    seconds: float = 0.0
    dashboard: str | None = None
    node_seconds: dict[str, float] = field(default_factory=dict)  # with profile=True: task seconds per node
    cluster: dict[str, Any] = field(default_factory=dict)  # where it ran: kind, workers, threads, memory
    io: dict[str, int] = field(default_factory=dict)  # tasks, read_bytes, written_bytes of the compute
    fused: list[list[str]] = field(default_factory=list)  # nodes computed by one task per block, per group


class Results(Mapping[str, Any]):
    """Node name → xarray value (DataArray for arrays, Dataset for Points, DataArray for BlockCounts)."""

    def __init__(self, values: dict[str, Any], report: RunReport, plan: Plan) -> None:
        self._values = values
        self.report = report
        self.plan = plan

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass
class Targets:
    """What a run's one compute evaluates."""

    values: dict[str, Any]  # node → the lazy frame or counts of a small result (Table, BlockCounts)
    writes: list[Any]  # lazy writes of cache stores and array outputs, computed for their effect
    points: list[tuple[str, str, PointsOutput]] = field(default_factory=list)  # (node, target, its writer)
    # (keys of the failed task, innermost first; its exception) → the one-line error the run stops with
    failure: Callable[[list[str], Exception], CvplError] = lambda keys, exc: CvplError(f"the run failed: {exc}")


def points_store(plan: Plan, lowered: Lowered, name: str) -> str | None:
    """Where a Points node's table is stored in partitions (stored by this run, or cached earlier), or None."""
    if plan.node(name).output is not PortType.Points:
        return None
    store = lowered.stores.get(name) or (plan.entries[name].store if name in plan.entries else None)
    return plan.manifest.store_url(store) if store is not None and is_partitioned(store) else None


def _targets(plan: Plan, lowered: Lowered) -> Targets:
    """The small results to compute and every write: the cache's, the array outputs' (whose stores are created
    here) and the Points outputs' (written partition by partition). A Points table stored in partitions is not
    brought into this process: the results read it lazily from its store."""
    values = {
        name: value.frame if isinstance(value, Table) else value.counts
        for name, value in lowered.values.items()
        if isinstance(value, (Table, BlockCounts)) and points_store(plan, lowered, name) is None
    }
    values.update(lowered.tallies)  # small figures computed beside the values, reported by name
    writes = [w for ws in lowered.writes.values() for w in ws]
    points = []
    for name, target in plan.spec.outputs:
        value = lowered.values[name]
        node = plan.node(name)
        if isinstance(value, xr.DataArray):
            writes += write_array(target, value, node.output, node.nodespec.store, name)
        elif node.output is PortType.Points:
            crop = plan.spec.input.crop
            writer = PointsOutput(target, plan.spec.format_of(target), tuple(s for s, _ in crop) if crop else (0, 0, 0))
            try:
                writes += writer.tasks(value)
            except OSError as exc:  # before anything is computed: nothing to redo but this
                raise CvplError(f"{target}: output {name!r} cannot be written ({exc.strerror or exc}); expected a "
                                "writable folder; nothing was computed") from None  # fmt: skip
            points.append((name, target, writer))
    return Targets(values, writes, points, functools.partial(node_failure, plan, lowered))


def _callers_callbacks() -> list[tuple[Any, ...]]:
    """The dask callbacks the caller registered (``with ProgressBar(): cvplgraph.run(...)``), which a compute
    given its callbacks explicitly would not run, less dask's opportunistic cache: napari registers one
    while it slices a layer, and its bookkeeping breaks when a compute in another thread shares it."""
    from dask.cache import Cache
    from dask.callbacks import Callback

    return [c for c in list(Callback.active) if not isinstance(getattr(c[0], "__self__", None), Cache)]


def _compute(
    targets: Targets, client: Any, display: Display, tasks: list[tuple[str, float]] | None = None
) -> dict[str, Any]:
    """Compute ``targets`` in one graph; the computed small results by node name. With ``tasks``,
    append (key, seconds) of every task run."""
    collections = [one_task(list(targets.values.values()), targets.writes)]
    with contextlib.ExitStack() as stack:
        if client is None:
            callbacks = [stack.enter_context(local_progress(display))]
            if tasks is not None:
                from dask.diagnostics import Profiler

                profiler = stack.enter_context(Profiler())
                callbacks.append(profiler)
            try:
                with dask.config.set({"admin.traceback.shorten": []}):  # keep the frames naming the failed task
                    # this compute's callbacks, given explicitly: see progress.local_progress
                    given = _callers_callbacks()  # the profiler, entered above, is among them
                    given += [c._callback for c in callbacks if c._callback not in given]
                    ((out, _),) = dask.compute(*collections, callbacks=given)
            except CvplError:
                raise
            except Exception as exc:
                raise targets.failure(local_failed_keys(exc), exc) from exc
            if tasks is not None:
                tasks += [(str(t.key), t.end_time - t.start_time) for t in profiler.results]
            return dict(zip(targets.values, out))
        if tasks is not None:
            from distributed import get_task_stream

            stream = stack.enter_context(get_task_stream(client))
        figures = stack.enter_context(counting(client, display))
        stack.enter_context(lean_workers(client))  # workers drop their finished tasks' calls (lean.py)
        futures = client.compute(collections)
        try:
            cluster_progress(futures, display, figures)
            out, _ = client.gather(futures)[0]
        except KeyboardInterrupt:  # stop this run's tasks (on a shared scheduler they would run on)
            with contextlib.suppress(Exception):
                client.cancel(futures)
            raise
        except CvplError:
            raise
        except Exception as exc:
            raise targets.failure(cluster_failed_keys(client, futures), exc) from exc
    if tasks is not None:
        for record in stream.data:
            spans = [s["stop"] - s["start"] for s in record.get("startstops", ()) if s.get("action") == "compute"]
            tasks.append((str(record["key"]), sum(spans)))
    return dict(zip(targets.values, out))


def one_task(values: list[Delayed], writes: list[Delayed]) -> Delayed:
    """The values (a list) and the number of writes, as one collection with one result. dask optimizes every
    collection it is given on its own, over the whole graph: a whole brain's per-block writes, given one by one,
    cost minutes, growing with the square of the blocks. And a cluster's client then wants one key only:
    cancelling it (Ctrl-C) never reaches a task nobody wants (which distributed's cancel cannot handle)."""
    keys = [v.key for v in values]
    name = f"run-{keys_token([*keys, *(w.key for w in writes)])}"
    graph = HighLevelGraph.from_collections(name, {name: (_results, keys, [w.key for w in writes])},
                                            dependencies=graph_sources([*values, *writes]))  # fmt: skip
    return Delayed(name, graph)


def _results(values: list[Any], writes: list[Any]) -> tuple[list[Any], int]:
    return values, len(writes)


#: Inputs smaller than this (as stored) run in this process on dask's threads when nothing says otherwise:
#: starting a LocalCluster costs seconds, more than such a run computes (docs/cluster.md).
SMALL_INPUT_BYTES = 2 * 2**30


def choose_scheduler(plan: Plan, client: Any, scheduler: str | None) -> tuple[str | None, str]:
    """The scheduler a run uses when the caller chose none (``None`` or ``"auto"``), and why.

    A client, an address, ``"threads"``/``"sync"`` and ``"cluster"`` (the spec's ``[cluster]``, else a
    LocalCluster, whatever the size) are kept. Otherwise: everything cached and no image-sized output
    → threads; a spec with ``[cluster]`` settings → its cluster; an input under
    :data:`SMALL_INPUT_BYTES` → threads; else a LocalCluster.
    """
    if client is not None:
        return scheduler, "the caller's client"
    if scheduler == "cluster":
        return None, "asked for a cluster (--scheduler cluster)"
    if scheduler not in (None, "auto"):
        return scheduler, f"asked for --scheduler {scheduler}"
    spec = plan.spec
    # image-sized outputs (not densities: they are atlas-sized) are worth a cluster even when cached
    kinds = {plan.node(n).output for n, _ in spec.outputs}
    if not plan.to_compute() and not any(k.is_array and k is not PortType.Density for k in kinds):
        return "threads", "everything cached: reading a few small tables needs no cluster"
    if spec.cluster != ClusterSpec(connect_timeout=spec.cluster.connect_timeout):
        return None, "the spec's [cluster]"
    size = plan.input_bytes
    if size is not None and size < SMALL_INPUT_BYTES:
        return "threads", f"input {size / 2**20:,.0f} MiB < {SMALL_INPUT_BYTES / 2**30:g} GiB: threads in this process"
    return None, "input ≥ 2 GiB: a LocalCluster" if size is not None else "a LocalCluster"


def _cluster_info(client: Any, scheduler: str | None) -> dict[str, Any]:
    """Where a run computed: dask's local scheduler, or a cluster's workers, threads and memory."""
    if client is None:
        threads = 1 if scheduler == "sync" else os.cpu_count() or 1
        return {"kind": f"dask {scheduler or 'threads'} scheduler", "workers": 1, "threads": threads}
    workers = list(client.scheduler_info().get("workers", {}).values())
    return {
        "kind": type(client.cluster).__name__ if getattr(client, "cluster", None) is not None else "dask scheduler",
        "address": client.scheduler.address,
        "workers": len(workers),
        "threads": sum(int(w.get("nthreads", 0)) for w in workers),
        "memory_bytes": sum(int(w.get("memory_limit") or 0) for w in workers),
    }


def execute(
    plan: Plan,
    *,
    client: Any = None,
    scheduler: str | None = None,
    progress: bool | str | Display = False,
    profile: bool = False,
    fuse: bool = True,
) -> Results:
    """Run everything the plan marks to compute, write outputs, commit the cache.

    ``progress``: True for a bar on stderr, ``"json"`` for JSON lines on stdout,
    or a :class:`~cvplgraph.engine.progress.Display`. With ``profile``, the report's
    ``node_seconds`` holds the task seconds spent on each node. With ``fuse`` (the default), chains of
    block kernels run as one task per block (:mod:`cvplgraph.engine.fuse`); ``fuse=False`` lowers op by
    op, with the same results.

    The run holds a lease on the cache keys it reads and writes (``cache gc`` leaves those alone, see
    :mod:`cvplgraph.cache.lease`) and plans again when an entry it planned to read is gone. When a
    concurrent run computing the same node commits it first, it clears the checkpoints this run's
    graph was built to load; when a cached store turns out damaged while read (a chunk it recorded
    is absent), its entry is invalidated. Either way the run is planned again and carried out once
    more (at most :data:`ATTEMPTS` times)."""
    how = dict(client=client, scheduler=scheduler, progress=progress, profile=profile, fuse=fuse)
    with Holder(plan.manifest, plan.spec.source) as holder:
        for _ in range(ATTEMPTS - 1):
            try:
                return _execute(plan, holder, **how)  # type: ignore[arg-type]
            except CheckpointGone:
                log.info("a concurrent run committed a node this run was computing; planning again")
            except DamagedStore as exc:
                entry = next((e for e in plan.entries.values() if plan.manifest.store_url(e.store) == exc.store), None)
                if entry is None:
                    raise
                plan.manifest.invalidate(entry.key, str(exc))
                log.warning("%s; entry %s (%s) is invalidated and computed again", exc, entry.key, entry.node)
            plan = make_plan(plan.spec)
        return _execute(plan, holder, **how)  # type: ignore[arg-type]


#: How many times a run is planned and carried out before a concurrent change of the cache stops it.
ATTEMPTS = 3


def _claim(plan: Plan, holder: Holder) -> Plan:
    """Lease the keys ``plan`` reads and writes, then check its entries are still there (a ``cache gc``
    may have removed one since planning); plan again until they are."""
    for _ in range(ATTEMPTS):
        reads = {plan.nodes[n].key for n in plan.cached()}
        writes = {plan.nodes[n].key for n in plan.to_compute() if plan.nodes[n].cache}
        holder.hold(reads, writes)
        gone = [n for n in plan.cached() if not plan.manifest.fs.exists(plan.manifest.entry_path(plan.nodes[n].key))]
        if not gone:
            return plan
        log.info("entries of %s were removed since planning (cache gc?); planning again", ", ".join(gone))
        plan = make_plan(plan.spec)
    raise CacheError(f"{plan.manifest.url}: entries keep disappearing while this run plans (a cache gc removing "
                     "them?); expected a cache nobody empties meanwhile; try again")  # fmt: skip


def _execute(
    plan: Plan,
    holder: Holder,
    *,
    client: Any,
    scheduler: str | None,
    progress: bool | str | Display,
    profile: bool,
    fuse: bool,
) -> Results:
    """One run of ``plan``, in named steps: :func:`_targets` (what to compute, after connecting and
    lowering), :func:`_compute` (one graph), :func:`_commit` (the cache entries), :func:`_collect`
    (the values handed out) and :func:`_write_outputs`; every step passes values by node name."""
    display = as_display(progress)
    spec = plan.spec
    todo = plan.to_compute()
    report = RunReport(computed=todo, cached=plan.cached())
    scheduler, why = choose_scheduler(plan, client, scheduler)
    start, started = time.perf_counter(), time.time()
    # connect before lowering: a cluster that cannot start leaves the cache untouched
    with connect(spec, client, scheduler) as cl:
        modules = {plan.node(n).opdef.func.__module__ for n in todo}
        if cl is not None:
            report.dashboard = getattr(cl, "dashboard_link", None)
            if report.dashboard:
                display.message(f"dask dashboard: {report.dashboard}")
                display.event("dashboard", url=report.dashboard)
            ship_plugins(cl, modules)
        fresh = not plan.manifest.fs.exists(plan.manifest.root)
        plan = _claim(plan, holder)  # the keys it reads and writes are leased; its entries are still there
        report.computed, report.cached = plan.to_compute(), plan.cached()
        stored = [n for n in report.computed if plan.nodes[n].cache]
        if stored and not holder.held:  # the cache refused the lease: it will refuse the stores too
            raise CacheError(f"{plan.manifest.url}: cannot write into the cache (read-only?), and {len(stored)} "
                             f"node(s) are to be computed and stored ({', '.join(stored)}); expected a writable "
                             "cache (a read-only one serves fully cached specs)")  # fmt: skip
        more = {plan.node(n).opdef.func.__module__ for n in report.computed} - modules
        if cl is not None and more:  # planned again: nodes that were cached are computed now
            ship_plugins(cl, more)
        if report.computed:  # the cache folder is marked before anything is written into it (see docs/cache.md)
            plan.manifest.write_marker()
        scratch = scratch_url(plan.manifest.url, holder.lease.id) if holder.held else None
        if scratch is not None:
            clear_dead_scratch(plan.manifest)
        try:
            lowered = lower(plan, fuse=fuse, scratch=scratch)
            targets = _targets(plan, lowered)
        except BaseException:  # a problem found while building the graph: a cache made for this run goes again
            holder.release()
            if fresh:
                plan.manifest.remove_if_unused()
            raise
        report.blocks = {name: (w.blocks, w.blocks_done) for name, w in lowered.cached.items()}
        report.fused = lowered.fused
        tasks: list[tuple[str, float]] | None = [] if profile else None
        try:
            computed = _compute(targets, cl, display, tasks)
        except BaseException:  # the outputs stay as they were
            for _, _, writer in targets.points:
                writer.discard()
            raise
        finally:  # what the fused tasks spilled is read by this run's tasks only
            if scratch is not None:
                remove_scratch(scratch)
        report.tallies = {name: int(computed.pop(name)) for name in lowered.tallies}
        report.cluster = {**_cluster_info(cl, scheduler), "why": why}
        if display.last is not None:
            last = display.last
            report.io = {"tasks": last.total, "read_bytes": last.read_bytes, "written_bytes": last.written_bytes}
    report.seconds = time.perf_counter() - start
    if tasks is not None:
        owners = task_owners(plan, lowered)
        for key, seconds in tasks:
            if key in owners:
                report.node_seconds[owners[key]] = report.node_seconds.get(owners[key], 0.0) + seconds
    report.committed = commit(plan, lowered, started, time.time())
    results = _collect(plan, lowered, computed)
    report.outputs = _write_outputs(plan, computed, results, targets.points)
    return Results(results, report, plan)


def _collect(plan: Plan, lowered: Lowered, computed: dict[str, Any]) -> dict[str, Any]:
    """Every node's value to hand out, by name: computed small results as xarray, values stored in
    this run read back from the cache, the rest (cached reads, arrays not stored) lazy."""
    results: dict[str, Any] = {}
    for name, value in lowered.values.items():
        parted = points_store(plan, lowered, name)
        if parted is not None:  # read lazily, partition by partition
            results[name] = points_dataset(parted)
        elif name in computed and plan.node(name).output is PortType.RegionTable:
            results[name] = region_dataset(computed[name])
        elif name in computed:
            results[name] = value.to_xarray(computed[name])
        elif name in lowered.stores:  # stored in this run: hand out the stored copy, not a recomputation
            results[name] = read_cached(plan.manifest.url, lowered.stores[name], plan.node(name).output)
        else:
            results[name] = value
    return results


def _write_outputs(
    plan: Plan, computed: dict[str, Any], results: dict[str, Any], points: list[tuple[str, str, PointsOutput]]
) -> dict[str, str]:
    """Write the table outputs (array outputs were written by the compute, Points outputs' partitions too: they
    are put in place here) and every output's provenance file; returns node → its output files, comma-separated."""
    outputs: dict[str, str] = {}
    writers = {(name, target): writer for name, target, writer in points}
    for name, target in plan.spec.outputs:
        kind = plan.node(name).output
        try:
            fmt = plan.spec.format_of(target)
            if kind is PortType.Points:
                writers[(name, target)].finish()
            elif kind is PortType.BlockCounts:
                write_block_counts(target, results[name])
            elif kind is PortType.RegionTable:
                atlas = dict(plan.node(name).inputs).get("atlas") if fmt == "brainglobe" else None
                write_regions(target, computed[name], fmt, known_ids(plan, atlas) if atlas else None)
            _write_provenance(plan, name, target)
        except OSError as exc:  # the cache holds the results: a rerun with a writable folder only writes files
            raise CvplError(f"{target}: output {name!r} cannot be written ({exc.strerror or exc}); expected a "
                            "writable folder; the results are cached: a rerun only writes files") from None  # fmt: skip
        outputs[name] = f"{outputs[name]}, {target}" if name in outputs else target
    return outputs


def _write_provenance(plan: Plan, name: str, target: str) -> None:
    """``<target>.cvplgraph.json`` beside an output: the node and cache keys it came from."""
    node = plan.node(name)
    op_versions, input_keys = provenance(plan, name)
    document = {
        "node": name,
        "key": node.key,
        "op": node.opdef.name,
        "params": dict(node.params),
        "op_versions": op_versions,
        "input_fingerprints": input_keys,
        "spec": plan.spec.source,
        "cache": plan.manifest.url,
        "cvplgraph_version": __version__,
    }  # no time stamp: a run that recomputes nothing rewrites its outputs byte for byte
    fs, path = fsspec.core.url_to_fs(f"{target.rstrip('/')}{PROVENANCE_SUFFIX}")  # what spec/targets.py reads
    fs.pipe_file(path, json.dumps(document, indent=1, default=str).encode())
