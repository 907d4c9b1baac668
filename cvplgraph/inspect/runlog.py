"""Run records: what one ``cvplgraph run`` did, kept beside the cache for ``cvplgraph report``.

A record is one JSON document at ``<cache>/runs/<id>.json``: the spec's text,
every node with its status, reasons, key, time, bytes and cache hit, the edges,
the outputs, the counts, the region tables, a sample of the detected points
(for the report's overlay), the input's location and geometry, the environment
and where it computed. Records are small (the point sample is capped) and are
never read by a run, so they cannot make a result stale; ``cache gc`` leaves them.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import xarray as xr

from cvplgraph.engine.plan import Plan
from cvplgraph.errors import CvplError
from cvplgraph.ops.regions import outside_warning
from cvplgraph.types import PortType
from cvplgraph.values import OUTSIDE_ATLAS

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from cvplgraph.engine.execute import Results
    from cvplgraph.engine.progress import Display

FORMAT = 1
#: At most this many points per node are kept for the report's overlay (every k-th, in table order).
POINT_SAMPLE = 20_000
PACKAGES = ("cvplgraph", "dask", "distributed", "numpy", "scipy", "scikit-image", "zarr", "ome-zarr", "xarray",
            "pandas", "networkx", "fsspec", "matplotlib")  # fmt: skip
#: Module names of the :data:`PACKAGES` whose distribution is named otherwise.
MODULES = {"scikit-image": "skimage", "ome-zarr": "ome_zarr"}


def new_run_id(now: float | None = None) -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx``: sorts by start time, unique across concurrent runs."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time())) + "-" + secrets.token_hex(3)


def environment(cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions of Python and the packages that decide results, the machine, and the cluster."""
    versions = {}
    for name in PACKAGES:
        module = sys.modules.get(MODULES.get(name, name))  # an imported package says its version itself: reading
        version = getattr(module, "__version__", None)  # the installed metadata costs milliseconds a package
        try:
            versions[name] = version if isinstance(version, str) else metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "packages": versions,
        "cluster": cluster or {},
    }


def _edges(plan: Plan) -> list[dict[str, str]]:
    return [
        {"source": source, "target": name, "port": port}
        for name in plan.nodes
        for port, source in plan.node(name).inputs
    ]


def _input(plan: Plan, values: Any) -> dict[str, Any]:
    spec = asdict(plan.spec.input)
    value = values.get("input") if values is not None else None
    if not isinstance(value, xr.DataArray):
        return {"spec": spec}
    return {
        "spec": spec,
        "shape": list(value.shape),
        "scale": list(value.attrs.get("scale", (1.0, 1.0, 1.0))),
        "translation": list(value.attrs.get("translation", (0.0, 0.0, 0.0))),
    }


def _sample(ds: xr.Dataset) -> dict[str, Any]:
    n = int(ds.sizes.get("cell", 0))
    step = max(1, -(-n // POINT_SAMPLE))
    out: dict[str, Any] = {"total": n, "every": step}
    for axis in ("z_um", "y_um", "x_um"):
        if axis in ds:
            # every step-th value, picked before anything is read: a whole brain's table is read partition by
            # partition, never into this process whole
            out[axis] = np.round(np.asarray(ds[axis][::step].values, dtype=float), 2).tolist()
    return out


def _region_rows(ds: xr.Dataset) -> dict[str, Any]:
    frame = ds.to_dataframe().reset_index().rename(columns={"region": "id"})
    frame = frame[frame["cells"].notna()]
    return {"columns": list(frame.columns), "rows": json.loads(frame.to_json(orient="values"))}


def make_record(
    plan: Plan,
    report: Any,
    values: Any = None,
    *,
    run_id: str,
    status: str = "done",
    started: float | None = None,
) -> dict[str, Any]:
    """The record of a run of ``plan``: ``report`` is its RunReport, ``values`` its Results (None when interrupted)."""
    nodes = []
    for name, p in plan.nodes.items():
        # cached nodes' entries were read by the plan; only the ones this run committed are read back
        entry = plan.entries.get(name) or (plan.manifest.get(p.key) if name in report.committed else None)
        row = asdict(p)
        row.update(status=str(p.status), reasons=list(p.reasons))  # the plain string: the record is JSON
        row.update(
            seconds=report.node_seconds.get(name),
            bytes=entry.bytes if entry is not None else p.nbytes,
            stored=entry is not None,
            committed=name in report.committed,
            blocks=report.blocks.get(name),
        )
        if entry is not None and entry.shape is not None:
            row.update(shape=entry.shape, chunks=entry.chunks, dtype=entry.dtype)
        nodes.append(row)
    counts: dict[str, int] = {}
    regions: dict[str, Any] = {}
    points: dict[str, Any] = {}
    for name, value in (values or {}).items():
        kind = plan.node(name).output
        if kind is PortType.Points:
            counts[name] = int(value.sizes.get("cell", 0))
            points[name] = _sample(value)
        elif kind is PortType.BlockCounts:
            counts[name] = int(value.attrs.get("total", int(value.sum())))
        elif kind is PortType.RegionTable:
            regions[name] = _region_rows(value)
    return {
        "format": FORMAT,
        "id": run_id,
        "status": status,
        "spec": {"path": plan.spec.source, "text": _spec_text(plan.spec.source)},
        "cache": plan.manifest.url,
        "started": started,
        "finished": time.time(),
        "seconds": round(report.seconds, 3),
        "nodes": nodes,
        "edges": _edges(plan),
        "outputs": dict(report.outputs),
        "counts": counts,
        "regions": regions,
        "points": points,
        "input": _input(plan, values),
        "io": dict(report.io),
        "fused": [list(group) for group in getattr(report, "fused", [])],
        "tallies": dict(getattr(report, "tallies", {})),
        "warnings": [*plan.warnings, *run_warnings(plan, report, values)],
        "dashboard": report.dashboard,
        "environment": environment(report.cluster),
    }


def run_warnings(plan: Plan, report: Any, values: Any = None) -> list[str]:
    """Lines a user must read before trusting a run's numbers: NaN/±Inf voxels read as 0, and results
    whose cells lie mostly outside the atlas (:func:`cvplgraph.ops.regions.outside_warning`)."""
    out = []
    replaced = getattr(report, "tallies", {}).get("input.nonfinite")
    if replaced:
        out.append(f"input: {replaced} non-finite voxel(s) (NaN or ±Inf) of {plan.spec.input.url} were read as 0 "
                   '([input] nonfinite = "zero")')  # fmt: skip
    for name, value in (values or {}).items():
        node = plan.node(name)
        atlas = dict(node.inputs).get("atlas")
        if atlas is None:
            continue
        if node.output is PortType.RegionTable and "cells" in value:
            cells = value["cells"].sel(hemisphere="both")
            outside = int(cells.sel(region=OUTSIDE_ATLAS)) if OUTSIDE_ATLAS in cells["region"] else 0
            warning = outside_warning(name, atlas, outside, int(cells.sum()))
        elif node.output is PortType.Points and "region_id" in value:
            ids = value["region_id"].values
            warning = outside_warning(name, atlas, int((ids == OUTSIDE_ATLAS).sum()), int(ids.size))
        else:
            continue
        if warning:
            out.append(warning)
    return out


def _spec_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def save_record(record: dict[str, Any]) -> str | None:
    """Write ``record`` to ``<cache>/runs/<id>.json``; returns its URL, or None when the cache refuses
    it (a read-only cache still serves cached results; the record is then not kept)."""
    url = f"{record['cache'].rstrip('/')}/runs/{record['id']}.json"
    fs, path = fsspec.core.url_to_fs(url)
    try:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, json.dumps(record, default=str).encode())  # no indent: json's C encoder, 10× faster
    except OSError:
        return None
    return url


@dataclass(frozen=True)
class RecordedRun:
    """A finished run of a plan with its record: what :func:`run_and_record` returns."""

    results: Results
    record: dict[str, Any]
    record_url: str | None  # where the record was saved, ``<cache>/runs/<id>.json`` (None: the cache is read-only)
    page: str | None = None  # the report page written, if one was asked for


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C whose record (status ``interrupted``) was saved.

    It is a KeyboardInterrupt, so code that does not know it treats it as one; its message is
    that of the interrupt it replaces.
    """

    def __init__(self, run_id: str, record_url: str | None, *args: Any) -> None:
        super().__init__(*args)
        self.run_id, self.record_url = run_id, record_url


def run_and_record(
    plan: Plan,
    *,
    scheduler: str | None = None,
    progress: bool | str | Display = False,
    run_id: str | None = None,
    started: float | None = None,
    report: str | None = None,
    fuse: bool = True,
) -> RecordedRun:
    """Execute ``plan``, save its run record beside the cache and, if asked, write its report page.

    What ``cvplgraph run`` and ``cvplgraph demo`` both do: execute with per-node timing, make the
    record, save it to ``<cache>/runs/<id>.json``, write the HTML page.

    Parameters
    ----------
    plan : Plan
        The plan to execute.
    scheduler : str, optional
        As for :func:`~cvplgraph.engine.execute.execute`.
    progress : bool, str or Display
        As for :func:`~cvplgraph.engine.execute.execute`. A Display left mid-line by Ctrl-C is
        closed before the interrupted run's record is saved.
    run_id : str, optional
        The run's id (default: a new one from ``started``).
    started : float, optional
        When the run started, seconds since the epoch (default: now).
    report : str, optional
        Also write the run's report page to this path.
    fuse : bool
        As for :func:`~cvplgraph.engine.execute.execute`.

    Returns
    -------
    RecordedRun
        The results, the record, where it was saved and the page written.

    Raises
    ------
    RunInterrupted
        On Ctrl-C, once the record of the interrupted run (what was to compute, the time so far,
        no values) has been saved; nothing partial was committed to the cache.
    """
    from cvplgraph.engine.execute import RunReport, execute
    from cvplgraph.engine.progress import Display

    started = time.time() if started is None else started
    run_id = run_id or new_run_id(started)
    todo = plan.to_compute()
    try:
        results = execute(plan, scheduler=scheduler, progress=progress, profile=True, fuse=fuse)
    except KeyboardInterrupt as exc:
        if isinstance(progress, Display):
            progress.close()
        interrupted = RunReport(computed=todo, seconds=time.time() - started)
        url = save_record(make_record(plan, interrupted, run_id=run_id, status="interrupted", started=started))
        raise RunInterrupted(run_id, url, *exc.args) from exc
    record = make_record(plan, results.report, results, run_id=run_id, started=started)
    record_url = save_record(record)
    page = None
    if report:
        from cvplgraph.inspect.report import write_report

        page = write_report(record, report)
    return RecordedRun(results, record, record_url, page)


def run_records(cache_url: str) -> list[str]:
    """URLs of every run record in a cache, oldest first."""
    fs, root = fsspec.core.url_to_fs(f"{cache_url.rstrip('/')}/runs")
    try:
        names = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".json"))
    except FileNotFoundError:
        return []
    protocol = cache_url.split("://", 1)[0] + "://" if "://" in cache_url else ""
    return [protocol + n if protocol and not n.startswith(protocol) else n for n in names]


def load_record(ref: str, cache: str | None = None) -> dict[str, Any]:
    """A run record from a record file or URL, a run id (in ``cache``), or a spec (its newest run)."""
    if ref.endswith(".toml"):
        from cvplgraph.spec.parse import load_spec

        spec = load_spec(ref)
        for url in reversed(run_records(spec.cache_url)):  # newest first
            record = _read(url)
            if record.get("spec", {}).get("path") == spec.source:
                return record
        raise CvplError(f"{ref}: no recorded run of this spec in {spec.cache_url}; run `cvplgraph run {ref}` first")
    if not ref.endswith(".json"):
        if cache is None:
            raise CvplError(f"run {ref!r}: give a spec (.toml), a run record (.json), or a run id with --cache")
        matches = [u for u in run_records(cache) if u.rsplit("/", 1)[-1].startswith(ref)]
        if len(matches) != 1:
            found = "no run" if not matches else f"{len(matches)} runs"
            raise CvplError(f"run {ref!r}: {found} with this id in {cache}/runs")
        ref = matches[0]
    return _read(ref)


def _read(url: str) -> dict[str, Any]:
    try:
        with fsspec.open(url, "rt", encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise CvplError(f"{url}: no such run record") from None
    except json.JSONDecodeError as exc:
        raise CvplError(f"{url}: not a run record (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CvplError(f"{url}: not a cvplgraph run record of format {FORMAT}")
    return record
