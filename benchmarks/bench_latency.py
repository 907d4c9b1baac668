"""How long a new user waits for a small run: `cvplgraph run` on a 128 MiB crop, as a whole process.

Two fresh processes, alternated run by run, each timed from start to exit:

- **read**: ``python -c`` that imports dask and zarr and reads + decompresses every chunk of the
  crop with ``dask.array.from_zarr(...).sum().compute()`` (the reference: a process that only
  reads the volume with dask);
- **run**: ``cvplgraph run SPEC --quiet`` of threshold → connected components → centroids → count
  on the same crop, with an empty cache each time (nothing cached; its default scheduler);
- **run (cluster)**: the same with ``--scheduler cluster`` (a LocalCluster, the former default),
  with ``--cluster``.

The figure is run / read (median of ``--runs`` pairs); the target is ≤ 2. Timings never decide a
test.

    python benchmarks/bench_latency.py --runs 5 [--cluster] [--json latency.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine_info import machine

#: 128 MiB of float32 in the suite's 16 MiB chunks (64 × 256 × 256).
SHAPE, CHUNKS = (128, 512, 512), (64, 256, 256)

SPEC = """\
[input]
url = "{url}"

[cache]
url = "{cache}"

[nodes.mask]
op = "threshold"
image = "input"
level = 0.3

[nodes.cells]
op = "connected_components"
mask = "mask"

[nodes.centroids]
op = "centroids"
labels = "cells"
image = "input"

[nodes.counts]
op = "count"
objects = "centroids"
block = [64, 256, 256]

[outputs]
centroids = "{out}/centroids.csv"
"""

READ = (
    "import dask.array as da, zarr\n"
    "a = da.from_zarr(zarr.open_group({url!r}, mode='r')['0'])\n"
    "print(float(a.sum().compute()))\n"
)


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cluster", action="store_true", help="also time --scheduler cluster")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)

    from cvplgraph.synth.volume import SynthParams, write_synthetic

    folder = Path(tempfile.mkdtemp(prefix="cvplgraph-latency-"))
    url = folder / "crop.ome.zarr"
    write_synthetic(str(url), SynthParams(shape=SHAPE, chunks=CHUNKS, seed=1))
    script = Path(sys.executable).parent / "cvplgraph"
    cvplgraph = [str(script)] if script.exists() else [sys.executable, "-m", "cvplgraph"]

    def run_command(scheduler: str | None) -> list[str]:
        work = folder / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        spec = work / "spec.toml"
        spec.write_text(SPEC.format(url=url, cache=work / "cache", out=work / "results"))
        return [*cvplgraph, "run", str(spec), "--quiet", *(["--scheduler", scheduler] if scheduler else [])]

    commands = {"read": lambda: [sys.executable, "-c", READ.format(url=str(url))], "run": lambda: run_command(None)}
    if args.cluster:
        commands["run (cluster)"] = lambda: run_command("cluster")
    for make in commands.values():  # warm the page cache and the bytecode caches
        wall(make())
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, make in commands.items():
            times[name].append(wall(make()))
    shutil.rmtree(folder, ignore_errors=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: [t / r for t, r in zip(times[name], times["read"])] for name in commands if name != "read"}
    result = {
        "machine": machine(("cvplgraph", "dask", "distributed", "zarr")),
        "shape": SHAPE,
        "chunks": CHUNKS,
        "runs": args.runs,
        "seconds": times,
        "median_seconds": medians,
        "paired_ratio_median": {name: statistics.median(r) for name, r in ratios.items()},
    }
    print("| process | median s | min s | / read (paired median) |")
    print("| --- | --- | --- | --- |")
    for name in commands:
        ratio = "1.00" if name == "read" else f"{result['paired_ratio_median'][name]:.2f}"
        print(f"| {name} | {medians[name]:.2f} | {min(times[name]):.2f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
