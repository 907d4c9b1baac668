"""What the cache costs and saves, on a spec over a 1000-chunk volume.

1. ``plan`` and a fully cached ``run`` as fractions of the uncached run (target < 2 %), measured
   in-process (the library calls) and as commands (``cvplgraph plan`` / ``run``, which add Python's
   start-up and imports);
2. resume: a ``cvplgraph run`` killed (SIGKILL) once ~70 % of the chunk records it writes in a
   full run exist, then rerun; the rerun's time as a fraction of a full run (target ≤ 40 %).

The pipeline is the counting one (threshold → connected components → centroids → count) with every
node cached. Runs use dask's threaded scheduler in one process, so cluster start-up does not blur
the ratios; the uncached run is the reference measured in the same invocation.

    python benchmarks/bench_cache.py --workdir /tmp/cvpl-cache-bench --json cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench_pipeline import spec_text
from machine_info import machine

import cvplgraph
from cvplgraph.demo import write_synthetic
from cvplgraph.synth import SynthParams


def records(cache: Path) -> int:
    return sum(
        sum(1 for f in files if f != "layout.json" and not f.startswith(".") and not f.endswith(".npy"))
        for _, _, files in os.walk(cache / "partial")
    )


def command(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cvplgraph.cli", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/cvpl-cache-bench")
    parser.add_argument("--shape", type=int, nargs=3, default=[320, 640, 640])
    parser.add_argument("--chunks", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    volume = work / f"volume-{'x'.join(map(str, args.shape))}.ome.zarr"
    if not volume.exists():
        print(f"writing {volume}")
        write_synthetic(str(volume), SynthParams(shape=tuple(args.shape), chunks=tuple(args.chunks), seed=1))
    spec_path = work / "spec.toml"
    cache = work / "cache"
    counting = spec_text(volume, cache, tuple(args.chunks), cache_arrays=True)  # the pipeline benchmark's spec
    spec_path.write_text(counting + '\n[outputs]\ncounts = "results/counts.csv"\n')
    chunks = 1
    for s, c in zip(args.shape, args.chunks):
        chunks *= -(-s // c)

    def clear() -> None:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / "results", ignore_errors=True)

    # in-process: uncached run (best of 2), then plan and cached run (best of 5)
    uncached = []
    for _ in range(2):
        clear()
        start = time.perf_counter()
        cvplgraph.run(cvplgraph.load_spec(spec_path), scheduler="threads")
        uncached.append(time.perf_counter() - start)
    full_records = records(cache)  # 0: records are cleared on commit; counted during the killed run below
    plans, cached = [], []
    for _ in range(5):
        start = time.perf_counter()
        plan = cvplgraph.plan(cvplgraph.load_spec(spec_path))
        plans.append(time.perf_counter() - start)
        assert plan.to_compute() == []
        start = time.perf_counter()
        result = cvplgraph.run(cvplgraph.load_spec(spec_path), scheduler="threads")
        cached.append(time.perf_counter() - start)
        assert result.report.computed == []
    # as commands
    plan_cmd = min(command("plan", str(spec_path)) for _ in range(3))
    cached_cmd = min(command("run", str(spec_path), "--quiet") for _ in range(3))
    clear()
    uncached_cmd = command("run", str(spec_path), "--scheduler", "threads", "--quiet")

    # resume after a kill at ~70 % of the records a full run writes (mask and cells: one per chunk each)
    expected_records = 2 * chunks
    resumes = []
    for _ in range(2):
        clear()
        proc = subprocess.Popen([sys.executable, "-m", "cvplgraph.cli", "run", str(spec_path), "--scheduler",
                                 "threads", "--quiet"], start_new_session=True)  # fmt: skip
        while proc.poll() is None and records(cache) < 0.7 * expected_records:
            time.sleep(0.01)
        killed_at = records(cache)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done = cvplgraph.plan(cvplgraph.load_spec(spec_path))
        partial = {n: round(p.done or 0.0, 3) for n, p in done.nodes.items() if p.status == "compute"}
        rerun = command("run", str(spec_path), "--scheduler", "threads", "--quiet")
        resumes.append({"records_at_kill": killed_at, "partial": partial, "seconds": rerun})
    figures = {
        "volume": {"shape": args.shape, "chunks": args.chunks, "chunk_count": chunks},
        "in_process": {
            "uncached_run_s": min(uncached),
            "plan_s": min(plans),
            "cached_run_s": min(cached),
            "plan_fraction": min(plans) / min(uncached),
            "cached_run_fraction": min(cached) / min(uncached),
        },
        "commands": {
            "uncached_run_s": uncached_cmd,
            "plan_s": plan_cmd,
            "cached_run_s": cached_cmd,
            "plan_fraction": plan_cmd / uncached_cmd,
            "cached_run_fraction": cached_cmd / uncached_cmd,
        },
        "resume": {
            "full_run_s": uncached_cmd,
            "runs": resumes,
            "fraction": min(r["seconds"] for r in resumes) / uncached_cmd,
            "records_of_a_full_run": expected_records,
            "records_left_after_commit": full_records,
        },
        "machine": machine(["dask", "distributed", "zarr", "numpy", "scipy", "fsspec"]),
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "machine"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
