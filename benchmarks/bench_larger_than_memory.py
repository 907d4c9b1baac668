"""A volume several times larger than the workers' memory: 6 GiB through two workers limited to
1 GiB each (the test suite runs the same check at 1.5 GiB through 2 × 512 MiB).

Reports each worker's peak RSS against its limit, bytes spilled to disk, whether a worker was
restarted, the count against the synthetic truth, and the throughput.

    python benchmarks/bench_larger_than_memory.py --workdir /tmp/cvpl-large
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from bench_pipeline import ensure_volume, spec_text, volume_shape
from distributed import Client, LocalCluster

import cvplgraph


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="volume and cache (default: a temp dir)")
    parser.add_argument("--size-gib", type=float, default=6.0)
    parser.add_argument("--memory-limit", default="1GiB", help="per worker")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="cvplgraph-large-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    shape, chunks = volume_shape(args.size_gib), (64, 256, 256)
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
                     host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        url, truth = ensure_volume(workdir, shape, chunks, client)
        client.restart()  # fresh worker processes: peaks below are this run's alone
        spec = workdir / "large.toml"
        spec.write_text(spec_text(url, workdir / "large.cache", chunks, cache_arrays=True))
        limit = next(iter(client.scheduler_info()["workers"].values()))["memory_limit"]
        before = client.run(os.getpid)
        start = time.perf_counter()
        result = cvplgraph.run(cvplgraph.load_spec(spec), client=client)
        seconds = time.perf_counter() - start
        peaks = client.run(_peak_rss)
        spilled = client.run(lambda dask_worker: tuple(dask_worker.data.spilled_total))
        restarted = client.run(os.getpid) != before
    total = shape[0] * shape[1] * shape[2] * 4
    print(f"volume {shape} float32 = {total / 2**30:.1f} GiB; {args.workers} workers × {limit / 2**30:.2f} GiB")
    print(f"cells {int(result['counts'].attrs['total'])} (truth {len(pd.read_csv(truth))}); {seconds:.1f} s, "
          f"{total / 1e9 / seconds:.2f} GB/s, every node cached (mask and labels stored)")  # fmt: skip
    for worker, peak in sorted(peaks.items()):
        share = f"{peak / limit:.0%} of the limit"
        print(f"  {worker}: peak RSS {peak / 2**20:.0f} MiB = {share}; spilled {spilled[worker]}")
    print(f"  a worker was restarted: {restarted}")


if __name__ == "__main__":
    main()
