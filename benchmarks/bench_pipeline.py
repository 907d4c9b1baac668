"""Throughput of the cvplgraph counting pipeline against raw zarr reads.

One run of this script, on one distributed LocalCluster and one Client:

1. writes a synthetic float32 OME-Zarr volume of about ``--size-gib`` with
   :func:`cvplgraph.synth.volume.write_synthetic` (kept in ``--workdir`` and reused);
2. measures the raw read + decompress throughput of that store: every block is
   read and reduced to one voxel, nothing else (best of 3, after one untimed
   pass that puts the store in the page cache);
3. runs threshold → connected_components → centroids → count through
   :func:`cvplgraph.run`, with the cache cleared before every run, in two
   variants: (i) only the small results cached (``cache = false`` on the mask
   and the labels) and (ii) every node cached (best of 2 each). Raw reads and
   pipeline runs alternate in rounds, so each pipeline run also has a raw read
   a few seconds away to be compared with (the "paired" ratio);
4. labels the same thresholded volume with ``dask_image.ndmeasure.label`` and
   counts its objects, as a reference (one run: it is slow), when dask-image is
   installed and ``--no-dask-image`` is not given;
5. prints GB/s (uncompressed input bytes / wall seconds), the ratios to the raw
   read (best against best, and paired by round), cells found against the
   truth, each worker's peak RSS during the measurement, and where the worker
   time went (per task prefix); ``--json`` writes all of it.

Example::

    python benchmarks/bench_pipeline.py --size-gib 1 --workdir /tmp/cvpl-bench --json bench-1gib.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster, get_task_stream
from distributed.utils import key_split
from machine_info import machine

import cvplgraph
from cvplgraph.synth.volume import SynthParams, write_synthetic

#: Threshold of the mask, as in ``specs/demo.toml``.
LEVEL = 0.3
#: Shape of a 1 GiB float32 volume; other sizes halve or double one axis at a time.
BASE_SHAPE = (256, 1024, 1024)
#: Distributions whose versions the report records.
PACKAGES = (
    "cvplgraph",
    "dask",
    "distributed",
    "zarr",
    "numcodecs",
    "numpy",
    "scipy",
    "xarray",
    "connected-components-3d",
    "dask-image",
)
#: Rounds of measurements; the raw read runs in every round, each other workload in the first few.
ROUNDS = 3
PIPELINE_ROUNDS = 3  # the targets are paired medians of 3 rounds


@dataclass
class Run:
    """One timed run of a workload."""

    round: int | None  # the round it ran in, None outside the rounds
    seconds: float
    cells: int | None  # objects found, for workloads that count
    compute_seconds: float | None  # the run's own compute time (cvplgraph runs only)
    peak_rss_bytes: dict[str, int]  # per worker, during this run
    task_seconds: dict[str, float]  # per task prefix, see task_breakdown


@dataclass
class Workload:
    """Something to time: ``work`` returns (cells found, compute seconds), either may be None;
    ``before`` runs untimed ahead of each run."""

    name: str
    work: Callable[[], tuple[int | None, float | None]]
    before: Callable[[], None] | None = None
    runs: list[Run] = field(default_factory=list)

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda run: run.seconds)


# --------------------------------------------------------------------------- volume


def volume_shape(size_gib: float) -> tuple[int, int, int]:
    """A float32 shape of about ``size_gib`` GiB: :data:`BASE_SHAPE` with its longest axis halved
    (or its shortest doubled) until the size is within a factor √2, so that a power of two times
    1 GiB is met exactly and its blocks stay whole for power-of-two chunks."""
    shape = list(BASE_SHAPE)
    target = size_gib * 2**28  # voxels
    while math.prod(shape) > target * math.sqrt(2) and max(shape) > 1:
        shape[shape.index(max(shape))] //= 2
    while math.prod(shape) < target / math.sqrt(2):
        shape[shape.index(min(shape))] *= 2
    return shape[0], shape[1], shape[2]


def ensure_volume(
    workdir: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int], client: Client | None
) -> tuple[Path, Path]:
    """The synthetic volume for ``shape``/``chunks`` in ``workdir`` and its cell table, written on first use."""
    name = f"synthetic-{'x'.join(map(str, shape))}-c{'x'.join(map(str, chunks))}"
    url, truth = workdir / f"{name}.ome.zarr", workdir / f"{name}.cells.csv"
    if not (url.exists() and truth.exists()):
        print(f"writing {url} ...", flush=True)
        start = time.perf_counter()
        write_synthetic(str(url), SynthParams(shape=shape, chunks=chunks), str(truth), client=client)
        os.sync()  # so that writeback does not run during the measurements
        print(f"  written in {time.perf_counter() - start:.1f} s", flush=True)
    return url, truth


def store_bytes(path: Path) -> int:
    """Bytes on disk under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- worker memory


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM, also what getrusage reports) on Linux."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    """This process's peak RSS in bytes since the last reset (or since it started)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# --------------------------------------------------------------------------- measuring


def run_once(client: Client, workload: Workload, round_: int | None = None) -> None:
    """Time one run of ``workload`` (after its untimed ``before``) with worker peak RSS and task times."""
    if workload.before is not None:
        workload.before()
    client.run(_reset_peak_rss)
    with get_task_stream(client) as stream:
        start = time.perf_counter()
        cells, compute_seconds = workload.work()
        seconds = time.perf_counter() - start
    peaks = client.run(_peak_rss)
    workload.runs.append(Run(round_, seconds, cells, compute_seconds, peaks, task_breakdown(stream.data)))
    print(f"  {workload.name}: {seconds:.2f} s", flush=True)


def task_breakdown(tasks: list[dict[str, Any]]) -> dict[str, float]:
    """Worker seconds per task prefix (compute), plus transfers and disk spills, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for task in tasks:
        for ss in task["startstops"]:
            label = key_split(task["key"]) if ss["action"] == "compute" else f"[{ss['action']}]"
            totals[label] += ss["stop"] - ss["start"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _first_voxel(block: np.ndarray) -> np.ndarray:
    return block[:1, :1, :1].copy()


def raw_read(client: Client, url: Path) -> Callable[[], tuple[None, None]]:
    """Read and decompress every block of level 0, keep one voxel per block."""

    def work() -> tuple[None, None]:
        data = da.from_zarr(str(url), component="0")
        client.compute(data.map_blocks(_first_voxel, chunks=(1, 1, 1))).result()
        return None, None

    return work


def spec_text(input_url: Path, cache_url: Path, chunks: tuple[int, int, int], cache_arrays: bool) -> str:
    """threshold → connected_components → centroids → count; mask and labels cached or not."""
    cache_line = "" if cache_arrays else "cache = false\n"
    return f"""\
[input]
url = "{input_url}"

[cache]
url = "{cache_url}"

[nodes.mask]
op = "threshold"
image = "input"
level = {LEVEL}
{cache_line}
[nodes.cells]
op = "connected_components"
mask = "mask"
connectivity = 6
{cache_line}
[nodes.centroids]
op = "centroids"
labels = "cells"
image = "input"

[nodes.counts]
op = "count"
objects = "centroids"
block = [{", ".join(map(str, chunks))}]
"""


def pipeline(
    client: Client, spec_path: Path, fuse: bool = True
) -> tuple[Callable[[], tuple[int, float]], Callable[[], None]]:
    """The timed cvplgraph run of ``spec_path`` (fused or op by op) and the cache clearing that precedes it."""
    spec = cvplgraph.load_spec(spec_path)

    def clear() -> None:
        shutil.rmtree(spec.cache_url, ignore_errors=True)

    def work() -> tuple[int, float]:
        results = cvplgraph.run(spec, client=client, fuse=fuse)
        if results.report.computed != ["mask", "cells", "centroids", "counts"]:
            raise RuntimeError(f"expected every node to be computed, got {results.report.computed}")
        return int(results["counts"].attrs["total"]), results.report.seconds

    return work, clear


def dask_image_label(client: Client, url: Path) -> Callable[[], tuple[int, None]]:
    """``dask_image.ndmeasure.label`` of the thresholded volume; the count is the largest label."""
    from dask_image import ndmeasure

    def work() -> tuple[int, None]:
        mask = da.from_zarr(str(url), component="0") > np.float32(LEVEL)
        _, count = ndmeasure.label(mask)
        with warnings.catch_warnings():  # its graph is large: distributed says so on every run
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            return int(client.compute(count).result()), None

    return work


# --------------------------------------------------------------------------- reporting


def summarise(workload: Workload, raw: Workload, input_bytes: int) -> dict[str, Any]:
    """The best run of ``workload``, its ratio to the best raw read, and the ratios paired by round.

    A paired ratio divides the raw read's time by the workload's in the same round, a few
    seconds apart, so that it is not skewed when the machine's speed drifts between rounds.
    """
    best = workload.best
    raw_by_round = {run.round: run.seconds for run in raw.runs if run.round is not None}
    paired = [
        raw_by_round[run.round] / run.seconds
        for run in workload.runs
        if workload is not raw and run.round in raw_by_round
    ]
    peaks: dict[str, int] = {}
    for run in workload.runs:
        for worker, peak in run.peak_rss_bytes.items():
            peaks[worker] = max(peaks.get(worker, 0), peak)
    return {
        "name": workload.name,
        "seconds": best.seconds,
        "all_seconds": [run.seconds for run in workload.runs],
        "gb_per_s": input_bytes / best.seconds / 1e9,
        "ratio_to_raw": raw.best.seconds / best.seconds,
        "paired_ratios": paired,
        "paired_ratio_median": statistics.median(paired) if paired else None,
        "cells": best.cells,
        "compute_seconds": best.compute_seconds,
        "peak_rss_bytes": peaks,
        "task_seconds": best.task_seconds,
    }


def print_table(rows: list[dict[str, Any]], truth: int) -> None:
    """One line per workload: best time, GB/s, both ratios, cells against the truth, peak RSS."""
    print()
    header = (
        f"{'measurement':<36} {'best s':>7} {'GB/s':>6} {'/ raw':>6} {'paired':>7} {'cells':>7} {'truth':>7}"
        f" {'peak RSS/worker GiB':>20}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = "" if row["cells"] is None else str(row["cells"])
        paired = "" if row["paired_ratio_median"] is None else f"{row['paired_ratio_median']:.2f}"
        peak = max(row["peak_rss_bytes"].values(), default=0) / 2**30
        print(
            f"{row['name']:<36} {row['seconds']:>7.2f} {row['gb_per_s']:>6.3f} {row['ratio_to_raw']:>6.2f}"
            f" {paired:>7} {cells:>7} {truth:>7} {peak:>20.2f}"
        )
    print("/ raw: best raw-read time / best time; paired: median over rounds of the same ratio within a round")


def print_breakdown(row: dict[str, Any], slots: int, top: int = 12) -> None:
    """Worker time per task prefix in the best run, and the slot time no task was running."""
    wall = row["seconds"]
    tasks: dict[str, float] = row["task_seconds"]
    busy = sum(v for k, v in tasks.items() if not k.startswith("["))
    print(f"\n{row['name']}: worker time per task prefix ({slots} slots × {wall:.2f} s = {slots * wall:.1f} s)")
    for label, seconds in list(tasks.items())[:top]:
        print(f"  {label[:48]:<48} {seconds:>8.2f} s  {100 * seconds / (slots * wall):5.1f} %")
    print(f"  {'(no task running)':<48} {slots * wall - busy:>8.2f} s")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="volume size in GiB (float32)")
    parser.add_argument("--chunks", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--workdir", type=Path, default=None, help="volume, specs and caches (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the worker processes, set before they start (e.g. MALLOC_MMAP_THRESHOLD_=33554432)",
    )
    parser.add_argument("--no-dask-image", action="store_true", help="skip the dask-image reference")
    parser.add_argument("--no-fuse", action="store_true", help="lower op by op (cvplgraph.run(..., fuse=False))")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cvplgraph-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    shape, chunks = volume_shape(args.size_gib), (args.chunks[0], args.chunks[1], args.chunks[2])
    input_bytes = int(np.prod(shape)) * 4
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **worker_env}
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}),
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        url, truth_csv = ensure_volume(workdir, shape, chunks, client)
        truth = len(pd.read_csv(truth_csv))
        print(f"volume {shape} float32, chunks {chunks}: {input_bytes / 2**30:.3f} GiB, {truth} true cells")
        print(f"store on disk: {store_bytes(url) / 2**30:.3f} GiB; workers {args.workers} × {args.threads} thread(s)")
        print(f"worker environment: {pre_spawn}")

        raw = Workload("raw read + decompress", raw_read(client, url))
        raw.work()  # untimed: brings the store into the page cache and zarr into the workers
        pipelines = []
        for variant, cache_arrays in (("(i) small results cached", False), ("(ii) every node cached", True)):
            spec_path = workdir / f"bench-{'all' if cache_arrays else 'small'}.toml"
            spec_path.write_text(spec_text(url, spec_path.with_suffix(".cache"), chunks, cache_arrays))
            work, clear = pipeline(client, spec_path, fuse=not args.no_fuse)
            pipelines.append(Workload(f"cvplgraph {variant}", work, clear))
        for round_ in range(ROUNDS):
            run_once(client, raw, round_)
            if round_ < PIPELINE_ROUNDS:
                for workload in pipelines:
                    run_once(client, workload, round_)
        workloads = [raw, *pipelines]
        if not args.no_dask_image:
            try:
                reference = Workload("dask-image label", dask_image_label(client, url))
            except ImportError:
                print("dask-image is not installed: skipped (pip install -e '.[bench]')")
            else:
                run_once(client, reference)  # once: it takes minutes
                workloads.append(reference)

    rows = [summarise(w, raw, input_bytes) for w in workloads]
    print_table(rows, truth)
    for row in rows:
        print_breakdown(row, args.workers * args.threads)
    for row, target in ((rows[1], 0.6), (rows[2], 0.3)):  # the targets: the paired median of the rounds
        best, paired = row["ratio_to_raw"], row["paired_ratio_median"]
        verdict = "met" if paired >= target else "not met"
        print(f"{row['name']} / raw read = {best:.2f}, paired {paired:.2f} (target ≥ {target:.2f}: {verdict})")
    report = {
        "shape": list(shape),
        "chunks": list(chunks),
        "input_bytes": input_bytes,
        "store_bytes": store_bytes(url),
        "true_cells": truth,
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "worker_env": pre_spawn,
        "machine": machine(PACKAGES),
        "measurements": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
