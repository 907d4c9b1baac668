"""Scale-out figures: throughput against the number of workers, worker memory against chunk size,
and a paper estimate for a whole brain on a large cluster.

1. Throughput: the counting pipeline (threshold → connected components → centroids → count, only
   the small results cached) on a synthetic float32 volume, on LocalClusters of 1, 2 and 4
   single-threaded worker processes; each figure is relative to the raw read + decompress of the
   same volume on the 1-worker cluster, measured in the same run.
2. Memory: each worker's peak RSS during the pipeline for several chunk sizes, at two volume
   sizes. Peak memory should follow the chunk size and stay flat in the volume size.
3. Estimate: from the measured per-block worker seconds, the per-block overhead (from the chunk
   sizes) and the serial tail (the union of face pairs, the merge of per-block sums and the table
   writes, which grow with the number of objects), the wall time of a 500 GB volume on 64 workers.

    python benchmarks/bench_cluster.py --workdir /tmp/cvpl-cluster --json cluster.json
    python benchmarks/bench_cluster.py --from-json cluster.json   # the estimate again, nothing rerun
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bench_pipeline import PACKAGES, Workload, ensure_volume, pipeline, raw_read, run_once, spec_text, volume_shape
from distributed import Client, LocalCluster
from machine_info import machine

#: Task prefixes that run once per volume, after every block (see cvplgraph.ops.components, measure).
SERIAL = ("lut", "merge", "offsets", "total", "write_table", "write_counts")
WORKERS = (1, 2, 4)
CHUNKS = ((32, 128, 128), (64, 256, 256), (128, 256, 256), (128, 512, 512))


def cluster(workers: int, memory: str) -> tuple[LocalCluster, Client]:
    c = LocalCluster(n_workers=workers, threads_per_worker=1, memory_limit=memory, processes=True,
                     host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)  # fmt: skip
    return c, Client(c)


def measure(client: Client, workdir: Path, size_gib: float, chunks: tuple[int, int, int], runs: int) -> dict[str, Any]:
    """Raw read and pipeline (i) on one volume, best of ``runs`` each."""
    shape = volume_shape(size_gib)
    url, _ = ensure_volume(workdir, shape, chunks, client)
    raw = Workload("raw read", raw_read(client, url))
    raw.work()  # untimed: page cache, imports
    spec = workdir / f"cluster-{'x'.join(map(str, shape))}-c{'x'.join(map(str, chunks))}.toml"
    spec.write_text(spec_text(url, spec.with_suffix(".cache"), chunks, cache_arrays=False))
    work, clear = pipeline(client, spec)
    counting = Workload("pipeline", work, clear)
    for _ in range(runs):
        run_once(client, raw)
        run_once(client, counting)
    best = counting.best
    blocks = int(np.prod([-(-s // c) for s, c in zip(shape, chunks)]))
    tasks = best.task_seconds
    return {
        "shape": list(shape),
        "chunks": list(chunks),
        "bytes": int(np.prod(shape)) * 4,
        "blocks": blocks,
        "raw_seconds": raw.best.seconds,
        "pipeline_seconds": best.seconds,
        "cells": best.cells,
        "peak_rss_per_worker": max(best.peak_rss_bytes.values()),
        "task_seconds": sum(v for k, v in tasks.items() if not k.startswith("[")),
        "serial_seconds": serial_seconds(tasks),
        "breakdown": tasks,
    }


def per_block_overhead(memory: list[dict[str, Any]]) -> float:
    """Seconds per extra block, beyond the work itself, from the smallest and the default chunks at
    the largest volume: (wall difference) / (block-count difference). Scheduling, task
    bookkeeping and graph building grow with the number of blocks, not with the bytes."""
    big = max(r["bytes"] for r in memory)
    rows = sorted((r for r in memory if r["bytes"] == big), key=lambda r: -r["blocks"])
    many, default = rows[0], next(r for r in rows if r["chunks"] == [64, 256, 256])
    return (many["pipeline_seconds"] - default["pipeline_seconds"]) / (many["blocks"] - default["blocks"])


def estimate(row: dict[str, Any], slots: int, overhead_per_block: float, target_bytes: float = 500e9,
             workers: int = 64) -> dict[str, float]:  # fmt: skip
    """Wall seconds for ``target_bytes`` of float32 on ``workers`` single-threaded workers, from one run:
    the block work spread over the workers, plus the serial tail and the per-block overhead, both
    counted as if they did not parallelise at all (high) and with the overhead spread like the work (low)."""
    per_block = (row["task_seconds"] - row["serial_seconds"]) / row["blocks"]
    scale = target_bytes / row["bytes"]
    blocks = row["blocks"] * scale
    parallel = blocks * per_block / workers
    serial = row["serial_seconds"] * scale  # the union and the merge grow with the objects, i.e. the volume
    overhead = blocks * overhead_per_block  # as measured on `slots` workers, if none of it parallelised
    spread = overhead * slots / workers  # if all of it parallelised like the block work
    return {"blocks": blocks, "per_block_seconds": per_block, "parallel_seconds": parallel,
            "serial_seconds": serial, "overhead_serial_seconds": overhead, "overhead_spread_seconds": spread,
            "low_seconds": parallel + serial + spread, "high_seconds": parallel + serial + overhead}  # fmt: skip


def serial_seconds(breakdown: dict[str, float]) -> float:
    """Task seconds of the prefixes that run once per volume (:data:`SERIAL`)."""
    return sum(v for k, v in breakdown.items() if k in SERIAL)


def say_estimate(paper: dict[str, float]) -> None:
    print(f"\n500 GB on 64 workers: {paper['low_seconds'] / 60:.1f} to {paper['high_seconds'] / 60:.1f} min ({paper})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="volumes and caches (default: a temp dir)")
    parser.add_argument("--size-gib", type=float, default=1.0, help="volume for the throughput figures")
    parser.add_argument("--memory-sizes", type=float, nargs=2, default=[0.25, 1.0], help="volumes for memory")
    parser.add_argument("--runs", type=int, default=2, help="best of this many runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only redo the 500 GB estimate from a saved --json report")  # fmt: skip
    args = parser.parse_args(argv)
    if args.from_json:
        paper = recompute(args.from_json)
        say_estimate(paper)
        return paper
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="cvplgraph-cluster-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    throughput = []
    for n in WORKERS:
        c, client = cluster(n, "4GiB")
        with c, client:
            row = measure(client, workdir, args.size_gib, (64, 256, 256), args.runs)
        row["workers"] = n
        throughput.append(row)
    reference = throughput[0]["raw_seconds"]
    print("\nworkers | raw read GB/s | pipeline GB/s | pipeline / raw read of 1 worker | peak RSS per worker MiB")
    for row in throughput:
        gb = row["bytes"] / 1e9
        print(f"{row['workers']} | {gb / row['raw_seconds']:.2f} | {gb / row['pipeline_seconds']:.2f} | "
              f"{reference / row['pipeline_seconds']:.2f} | {row['peak_rss_per_worker'] / 2**20:.0f}")  # fmt: skip
    memory = []
    c, client = cluster(2, "4GiB")
    with c, client:
        for chunks in CHUNKS:
            for size in args.memory_sizes:
                row = measure(client, workdir, size, chunks, 1)
                memory.append(row)
                print(f"chunks {chunks}, {size} GiB: peak RSS per worker {row['peak_rss_per_worker'] / 2**20:.0f} MiB")
    paper = estimate(next(r for r in throughput if r["workers"] == 2), 2, per_block_overhead(memory))
    say_estimate(paper)
    report = {"machine": machine(PACKAGES), "throughput": throughput, "memory": memory, "estimate": paper}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return report


def recompute(path: Path) -> dict[str, float]:
    """The estimate again from a saved ``--json`` report (after changing the model, not the data)."""
    report = json.loads(path.read_text())
    for row in report["throughput"] + report["memory"]:
        row["serial_seconds"] = serial_seconds(row["breakdown"])
    row = next(r for r in report["throughput"] if r["workers"] == 2)
    return estimate(row, 2, per_block_overhead(report["memory"]))


if __name__ == "__main__":
    main()
