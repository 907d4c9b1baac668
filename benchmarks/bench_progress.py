"""What watching a run costs: progress, task timing, the run record and the report page.

The counting pipeline (threshold → connected components → centroids → count, mask and labels
cached) on a synthetic float32 volume, on one LocalCluster of 2 single-threaded workers, as

- **bare**: no task counter on the scheduler, no progress, no task timing (the library before
  progress existed; the counter is switched off inside this benchmark only);
- **quiet**: ``cvplgraph.run`` as a library user calls it (the counter is registered, nothing drawn);
- **progress**: JSON progress lines every second, nothing else;
- **cli**: what ``cvplgraph run --json`` does — progress every second (a scheduler call and a call
  to every worker), per-task timing for the report (distributed's task stream), the run record;

alternating, best of ``--runs`` each, each from an empty cache. The report page (``run --report``)
is timed once on its own; it reads the input once for its projection, which the raw read of the
same volume, measured in the same run, puts in proportion.

    python benchmarks/bench_progress.py --size 0.5 --json progress.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench_pipeline import PACKAGES, ensure_volume, raw_read, spec_text, volume_shape
from distributed import Client, LocalCluster
from machine_info import machine

import cvplgraph
from cvplgraph.engine import execute as execute_module
from cvplgraph.engine.progress import Display
from cvplgraph.inspect.report import write_report
from cvplgraph.inspect.runlog import make_record, new_run_id, save_record


@contextlib.contextmanager
def _no_counter(client: Any, display: Any) -> Iterator[None]:
    yield None


def _wait_only(futures: list[Any], display: Any, figures: Any) -> None:
    from distributed import wait

    wait(futures)


def variant(client: Client, spec_path: Path, name: str, last: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """One timed run from an empty cache; the cli variant leaves its run record in ``last``."""
    spec = cvplgraph.load_spec(spec_path)

    def work() -> dict[str, Any]:
        shutil.rmtree(spec.cache_url, ignore_errors=True)
        plan = cvplgraph.plan(spec)
        start = time.perf_counter()
        if name == "bare":
            saved = execute_module.counting, execute_module.cluster_progress
            execute_module.counting, execute_module.cluster_progress = _no_counter, _wait_only  # type: ignore[assignment]
            try:
                results = execute_module.execute(plan, client=client)
            finally:
                execute_module.counting, execute_module.cluster_progress = saved
        elif name == "quiet":
            results = execute_module.execute(plan, client=client)
        elif name == "progress":
            results = execute_module.execute(plan, client=client, progress=Display("json", stream=io.StringIO()))
        else:
            display = Display("json", stream=io.StringIO())
            results = execute_module.execute(plan, client=client, progress=display, profile=True)
            last.update(make_record(plan, results.report, results, run_id=new_run_id(), started=time.time()))
            save_record(last)
        seconds = time.perf_counter() - start
        assert results.report.computed == ["mask", "cells", "centroids", "counts"], results.report.computed
        return {"seconds": seconds, "cells": int(results["counts"].attrs["total"])}

    return work


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=0.5, help="volume size in GiB (default 0.5)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cvpl-progress")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    chunks = (64, 256, 256)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:  # fmt: skip
        shape = volume_shape(args.size)
        url, _ = ensure_volume(args.workdir, shape, chunks, client)
        spec = args.workdir / "progress.toml"
        spec.write_text(spec_text(url, args.workdir / "progress-cache", chunks, cache_arrays=True))
        read = raw_read(client, url)
        read()  # untimed: page cache, imports
        last: dict[str, Any] = {}
        variants = {name: variant(client, spec, name, last) for name in ("bare", "quiet", "progress", "cli")}
        variants["cli"]()  # untimed warm-up
        best: dict[str, float] = {}
        raw = []
        for _ in range(args.runs):
            t = time.perf_counter()
            read()
            raw.append(time.perf_counter() - t)
            for name, work in variants.items():
                figures = work()
                best[name] = min(best.get(name, float("inf")), figures["seconds"])
        t = time.perf_counter()
        page = write_report(last, str(args.workdir / "report.html"))
        report_seconds = time.perf_counter() - t
    out = {
        "machine": machine(PACKAGES),
        "shape": list(shape),
        "chunks": list(chunks),
        "raw_read_seconds": min(raw),
        "seconds": best,
        "cli_over_bare": best["cli"] / best["bare"],
        "quiet_over_bare": best["quiet"] / best["bare"],
        "progress_over_bare": best["progress"] / best["bare"],
        "report_seconds": report_seconds,
        "report_over_raw_read": report_seconds / min(raw),
        "report_bytes": Path(page).stat().st_size,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
