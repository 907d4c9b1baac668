"""What the cache costs and saves, on a spec over a 1000-chunk volume.

1. ``plan`` and a fully cached ``run`` as fractions of the uncached run (target < 2 %), measured
   in-process (the library calls) and as commands (``cvplgraph plan`` / ``run``, which add Python's
   start-up and imports);
2. resume: a ``cvplgraph run`` killed (SIGKILL) ~70 % of the way through, then rerun; the
   rerun's time as a fraction of a full run (target ≤ 40 %, median of 3). "70 %" in two senses:
   70 % of the uncached command's wall time, and 70 % of the chunk records a full run writes.

The pipeline is the counting one (threshold → connected components → centroids → count) with every
node cached. Runs use dask's threaded scheduler in one process, so cluster start-up does not blur
the ratios; the uncached run is the reference measured in the same invocation.

    python benchmarks/bench_cache.py --workdir /tmp/cvpl-cache-bench --json cache.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_pipeline import spec_text
from machine_info import machine

import cvplgraph
from cvplgraph.synth.volume import SynthParams, write_synthetic


def records(cache: Path) -> int:
    """Chunk records in ``cache`` (not ops' checkpoints)."""
    return sum(
        sum(1 for f in files if f != "layout.json" and not f.startswith("."))
        for path, _, files in os.walk(cache / "partial")
        if "checkpoints" not in Path(path).parts
    )


def checkpoints(cache: Path) -> int:
    """Ops' per-block checkpoints in ``cache``."""
    return sum(len(files) for path, _, files in os.walk(cache / "partial") if "checkpoints" in Path(path).parts)


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
    left = records(cache) + checkpoints(cache)  # 0: both are cleared on commit
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
    uncached_cmds = []
    for _ in range(3):
        clear()
        uncached_cmds.append(command("run", str(spec_path), "--scheduler", "threads", "--quiet"))
    uncached_cmd = statistics.median(uncached_cmds)  # the reference for the kill time, too

    # resume after a kill ~70 % of the way through a run, in two senses: by the uncached command's
    # wall time, and by the chunk records a full run writes (mask and cells: one per chunk each)
    run_args = [sys.executable, "-m", "cvplgraph.cli", "run", str(spec_path), "--scheduler", "threads", "--quiet"]

    def killed_then_rerun(by: str) -> dict[str, object]:
        clear()
        proc = subprocess.Popen(run_args, start_new_session=True)
        if by == "time":
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.7 * uncached_cmd)
        else:
            while proc.poll() is None and records(cache) < 0.7 * 2 * chunks:
                time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done = cvplgraph.plan(cvplgraph.load_spec(spec_path))
        at_kill = {
            "partial": {n: round(p.done or 0.0, 3) for n, p in done.nodes.items() if p.status == "compute"},
            "records_at_kill": records(cache),
            "checkpoints_at_kill": checkpoints(cache),
        }
        start = time.perf_counter()
        subprocess.run(run_args, check=True)
        return {**at_kill, "seconds": time.perf_counter() - start}

    resumes = {by: [killed_then_rerun(by) for _ in range(3)] for by in ("time", "records")}
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
            "uncached_run_s": uncached_cmd,  # median of 3
            "uncached_runs_s": uncached_cmds,
            "plan_s": plan_cmd,
            "cached_run_s": cached_cmd,
            "plan_fraction": plan_cmd / uncached_cmd,
            "cached_run_fraction": cached_cmd / uncached_cmd,
        },
        "resume": {
            "full_run_s": uncached_cmd,
            "records_of_a_full_run": 2 * chunks,
            "records_and_checkpoints_left_after_commit": left,
            **{
                f"killed_by_{by}": {
                    "runs": runs,
                    "fraction": statistics.median(r["seconds"] for r in runs) / uncached_cmd,  # type: ignore[misc]
                }
                for by, runs in resumes.items()
            },
        },
        "machine": machine(["dask", "distributed", "zarr", "numpy", "scipy", "fsspec"]),
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "machine"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
