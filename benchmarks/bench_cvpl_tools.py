"""cvplgraph against its peer cvpl_tools 1.0.0: the counting pipeline's process wall time.

The same work on both sides, on the same float32 OME-Zarr volume (chunks 64×256×256):
threshold ``volume > 0.3`` → 6-connected components over the whole volume → one centroid per
object → the number of objects. Each run is a fresh process timed from start to exit
(``time.perf_counter()`` around ``subprocess.run``), so Python start-up, imports and scheduler
start-up count on both sides. The two tools alternate (cvplgraph, then cvpl_tools) in every round.

* cvplgraph: ``python -m cvplgraph.cli run SPEC --quiet`` in this venv, on a spec
  (threshold → connected_components (not cached) → centroids → count per 64×256×256 block) with a
  fresh cache folder, deleted before each run; default scheduler (threads in the process, < 2 GiB).
  The object count is read from the run's record (``<cache>/runs/*.json``, ``counts.centroids``).
* cvpl_tools: a helper script (written to the workdir) run by the cvpl_tools venv's Python. It
  starts a ``LocalCluster`` of 2 single-threaded worker processes (this machine has 2 cores; the
  package's own local set-up, ``cvpl_tools.nnunet.api.coiled_run(local_testing=True)``, is a
  ``distributed`` ``Client`` on a LocalCluster), with an asynchronous client, and runs the steps of
  ``cvpl_tools.nnunet.api.mousebrain_forward`` (its whole-brain counting pipeline) with cvpl_tools'
  own functions, each step cached in a fresh folder as that pipeline does:
  ``cvpl_tools.ome_zarr.io.load_zarr_group_from_path`` + ``dask.array.from_zarr`` (open, level 0, the
  stored chunks; no rechunk), ``cvpl_tools.im.process.base.in_to_bs_simple_threshold`` (``im > 0.3``),
  ``cvpl_tools.im.algs.dask_label.label`` (chunked scipy labelling, 6-connectivity, merged across
  chunk faces; returns the number of objects), ``cvpl_tools.im.process.os_to_lc.os_to_lc_direct``
  (``is_global=True``, ``min_size=0``: one centroid per global object, ``reduce=True``). It prints both
  counts (labels and centroid rows); they must agree with each other and with cvplgraph.
  ``mousebrain_forward``'s GCS/napari/multiscale storage options are left out (no viewer, no
  pyramids, no rechunk to 4096² for storage), and ``lc_to_cc_count_lc_by_size`` is not used: it is a
  size-weighted cell *estimate*, not an object count.

cvpl_tools 1.0.0 uses the zarr 2 API (``zarr.hierarchy``, ``zarr.storage``), which cannot read the
zarr v3 test volumes; the script writes, outside the timed region, a zarr v2 copy (same array,
same chunks, same values, blosc zstd clevel 3 shuffle, like the original) that only cvpl_tools reads.

Reference counts: the 1 GiB volume (``/tmp/cvpl-bench/v1.ome.zarr``, 256×1024×1024) has 66,312
objects; the 128 MiB crop (128×512×512, made with ``cvplgraph.synth.volume.write_synthetic`` if
missing) is checked against ``scipy.ndimage.label(volume > 0.3)`` computed once in this venv.

The cvpl_tools venv (made once, before the benchmark; nothing is downloaded while it runs)::

    python3.11 -m venv /tmp/cvpl-tools-venv
    /tmp/cvpl-tools-venv/bin/pip install --no-deps /tmp/cvpl_dl/cvpl_tools-1.0.0-py3-none-any.whl
    /tmp/cvpl-tools-venv/bin/pip install zarr==2.18.7 numcodecs==0.15.2 dask==2024.12.1 \\
        distributed==2024.12.1 numpy==2.0.2 scipy==1.17.1 scikit-image==0.26.0 ome-zarr==0.10.3 \\
        dask-image==2026.5.0 fsspec==2026.9.0 matplotlib==3.11.2 nibabel==5.4.2 pillow==13.0.0 \\
        napari==0.5.6   # imported by cvpl_tools.im.process.base; never used (no viewer)

(Python 3.11.7; every package version of that venv is saved in the JSON.) Run, from /work/main::

    .venv/bin/python benchmarks/bench_cvpl_tools.py --workdir /tmp/cvpl-vs --json /tmp/cvpl-vs/result.json
    .venv/bin/python benchmarks/bench_cvpl_tools.py --sizes 128MiB --runs 1   # a quick check

Each round also times a process that only reads the volume (``READ``): cvpl_tools' time over it is the
largest speed-up any tool could show, reported beside the targets.

Targets: cvplgraph ≥ 5× faster than cvpl_tools at 128 MiB and ≥ 30× at 1 GiB (reported, not enforced).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import machine

LEVEL = 0.3
CHUNKS = (64, 256, 256)
CVPL_VENV = Path("/tmp/cvpl-tools-venv")
CVPL_VERSION = "1.0.0"
#: The pins of the cvpl_tools venv (see the module docstring); checked before any run.
CVPL_PINS = {
    "cvpl-tools": "1.0.0", "zarr": "2.18.7", "numcodecs": "0.15.2", "dask": "2024.12.1", "distributed": "2024.12.1",
    "numpy": "2.0.2", "scipy": "1.17.1", "scikit-image": "0.26.0", "ome-zarr": "0.10.3", "napari": "0.5.6",
}  # fmt: skip
TARGETS = {"128MiB": 5.0, "1GiB": 30.0}


@dataclass
class Size:
    name: str
    volume: Path  # the zarr v3 OME-Zarr both tools are given (cvpl_tools through its v2 copy)
    shape: tuple[int, int, int]
    expected: int | None  # the reference object count; None: computed with scipy
    runs: int


@dataclass
class Run:
    tool: str
    size: str
    round: int
    seconds: float
    objects: int
    extra: dict[str, Any] = field(default_factory=dict)


# The cvpl_tools side, run by the cvpl_tools venv's Python: argv = volume (zarr v2), cache folder, level, workers.
CVPL_SCRIPT = '''\
"""cvpl_tools 1.0.0: threshold -> chunked connected components -> global centroids -> object count."""
import asyncio
import sys
import time

import dask.array as da
import numcodecs
import numpy as np
from distributed import Client, LocalCluster


async def main(path, cache, level, workers):
    import cvpl_tools.im.algs.dask_label as dask_label
    import cvpl_tools.im.process.base as seg_process
    import cvpl_tools.im.process.os_to_lc as sp_os_to_lc
    import cvpl_tools.ome_zarr.io as cvpl_ome_zarr_io
    from cvpl_tools.fsspec import RDirFileSystem

    async with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, asynchronous=True,
                            dashboard_address=None) as cluster, Client(cluster, asynchronous=True) as client:
        start = time.perf_counter()
        fs = RDirFileSystem(cache)
        fs.ensure_dir_exists(remove_if_already_exists=True)
        im = da.from_zarr(cvpl_ome_zarr_io.load_zarr_group_from_path(path=path, mode="r", level=0))
        compressor = numcodecs.Blosc(cname="lz4", clevel=9, shuffle=numcodecs.Blosc.BITSHUFFLE)
        context_args = dict(viewer_args=dict(viewer=None),
                            storage_options=dict(dimension_separator="/", compressor=compressor))
        bs = await seg_process.in_to_bs_simple_threshold(threshold=level, im=im,
                                                         context_args=context_args | dict(cache_url=fs["bs"]))
        os_, nlbl = await dask_label.label(bs, output_dtype=np.int32,
                                           context_args=context_args | dict(cache_url=fs["os"]))
        lc = await sp_os_to_lc.os_to_lc_direct(os_, min_size=0, reduce=True, is_global=True,
                                               ex_statistics=["nvoxel"],
                                               context_args=dict(cache_url=fs["lc"], viewer_args={}))
        if isinstance(lc, da.Array):
            lc = await client.compute(lc)
        lc = np.asarray(lc)
        print(f"CVPL_RESULT labels={int(nlbl)} centroids={lc.shape[0]} voxels={int(lc[:, 3].sum())} "
              f"pipeline_s={time.perf_counter() - start:.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
'''

SPEC = """\
[input]
url = "{volume}"

[cache]
url = "{cache}"

[nodes.mask]
op = "threshold"
image = "input"
level = {level}

[nodes.cells]
op = "connected_components"
mask = "mask"
connectivity = 6
cache = false

[nodes.centroids]
op = "centroids"
labels = "cells"

[nodes.counts]
op = "count"
objects = "centroids"
block = [{block}]
"""


class BenchError(RuntimeError):
    """A set-up problem or a failed / inconsistent run."""


# --------------------------------------------------------------------------- set-up (not timed)


def check_cvpl_venv() -> dict[str, str | None]:
    """The versions of every package in the cvpl_tools venv; an error if it is missing or its pins differ."""
    python = CVPL_VENV / "bin" / "python"
    if not python.exists():
        raise BenchError(f"no cvpl_tools venv at {CVPL_VENV}: make it as the module docstring says")
    query = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()} "
        "| {'python': sys.version.split()[0]}))"
    )
    done = subprocess.run([str(python), "-c", query], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"could not list the packages of {CVPL_VENV}: {done.stderr.strip()}")
    versions: dict[str, str | None] = json.loads(done.stdout)
    wrong = {name: versions.get(name) for name, pin in CVPL_PINS.items() if versions.get(name) != pin}
    if wrong:
        raise BenchError(f"the cvpl_tools venv's versions differ from the pins {CVPL_PINS}: found {wrong}")
    return dict(sorted(versions.items()))


def ensure_crop(volume: Path) -> None:
    """The 128 MiB crop (128×512×512), made once with cvplgraph's synthetic generator."""
    if (volume / "zarr.json").exists():
        return
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    print(f"writing {volume} (once)", flush=True)
    cells = str(volume.parent / "crop.cells.csv")
    write_synthetic(str(volume), SynthParams(shape=(128, 512, 512), chunks=CHUNKS), cells)


def v2_copy(volume: Path, workdir: Path) -> Path:
    """A zarr v2 OME-Zarr copy of ``volume``'s level 0 for cvpl_tools (zarr 2 API); made once, verified by shape."""
    import numcodecs
    import zarr

    src = zarr.open_array(str(volume / "0"), mode="r")
    dst = workdir / f"{volume.name.removesuffix('.ome.zarr')}.v2.ome.zarr"
    done = dst / ".complete"
    if done.exists() and done.read_text() == repr((src.shape, src.chunks, str(src.dtype))):
        return dst
    print(f"writing the zarr v2 copy {dst} for cvpl_tools (once, not timed)", flush=True)
    shutil.rmtree(dst, ignore_errors=True)
    group = zarr.open_group(str(dst), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{
        "version": "0.4", "name": volume.name,
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
    }]  # fmt: skip
    compressor = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    out = group.create_array("0", shape=src.shape, chunks=src.chunks, dtype=src.dtype, compressors=compressor,
                             fill_value=0.0)  # fmt: skip
    step = src.chunks[0]
    for z in range(0, src.shape[0], step):  # one slab of chunks at a time: bounded memory, exact copy
        slab = src[z : z + step]
        out[z : z + step] = slab
        if not np.array_equal(out[z : z + step], slab):
            raise BenchError(f"the zarr v2 copy differs from {volume} at z={z}")
    done.write_text(repr((src.shape, src.chunks, str(src.dtype))))
    return dst


def scipy_count(volume: Path) -> int:
    """``scipy.ndimage.label(volume > 0.3)`` (6-connectivity, the default structure): the number of objects."""
    import scipy.ndimage as ndi
    import zarr

    image = zarr.open_array(str(volume / "0"), mode="r")[...]
    return int(ndi.label(image > np.float32(LEVEL))[1])


# --------------------------------------------------------------------------- timed runs


def run_cvplgraph(spec: Path, cache: Path, timeout: float) -> tuple[float, int, dict[str, Any]]:
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "cvplgraph.cli", "run", str(spec), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"cvplgraph run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    records = sorted((cache / "runs").glob("*.json"))
    if len(records) != 1:
        raise BenchError(f"expected one run record under {cache / 'runs'}, found {len(records)}")
    record = json.loads(records[0].read_text())
    counts = record.get("counts", {})
    if "centroids" not in counts:
        raise BenchError(f"no centroid count in the run record {records[0]}: counts={counts}")
    return seconds, int(counts["centroids"]), {"record_seconds": record.get("seconds"), "counts": counts}


#: A process that only reads and decompresses the volume with dask (as benchmarks/bench_latency.py): no tool
#: can count the cells in less, so cvpl_tools' time over it bounds the speed-up any tool can show.
READ = (
    "import dask.array as da, zarr\n"
    "a = da.from_zarr(zarr.open_group({url!r}, mode='r')['0'])\n"
    "print(float(a.sum().compute()))\n"
)


def run_read(volume: Path, timeout: float) -> tuple[float, int, dict[str, Any]]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", READ.format(url=str(volume))], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"the read-only process failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, -1, {}


def run_cvpl_tools(script: Path, volume_v2: Path, cache: Path, timeout: float) -> tuple[float, int, dict[str, Any]]:
    shutil.rmtree(cache, ignore_errors=True)
    command = [str(CVPL_VENV / "bin" / "python"), str(script), str(volume_v2), str(cache), str(LEVEL), "2"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=script.parent)
    seconds = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        raise BenchError(f"cvpl_tools run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    found = re.search(r"CVPL_RESULT labels=(\d+) centroids=(\d+) voxels=(\d+) pipeline_s=([\d.]+)", done.stdout)
    if found is None:
        raise BenchError(f"no CVPL_RESULT line in the cvpl_tools output: {done.stdout.strip()[-2000:]}")
    labels, centroids, voxels = (int(found.group(i)) for i in (1, 2, 3))
    if labels != centroids:
        raise BenchError(f"cvpl_tools disagrees with itself: label() found {labels}, os_to_lc_direct {centroids}")
    return seconds, centroids, {"voxels": voxels, "pipeline_seconds": float(found.group(4))}


# --------------------------------------------------------------------------- driver


def parse_sizes(text: str) -> list[str]:
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in TARGETS]
    if unknown or not sizes:
        raise argparse.ArgumentTypeError(f"sizes must be among {', '.join(TARGETS)}; got {text!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds at 128 MiB (default 3)")
    parser.add_argument("--big-runs", type=int, default=2, help="rounds at 1 GiB (default 2; 1 if cvpl_tools is slow)")
    parser.add_argument("--sizes", type=parse_sizes, default=["128MiB", "1GiB"], help="comma-separated: 128MiB,1GiB")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cvpl-vs"), help="specs, caches, the v2 copies")
    parser.add_argument("--json", type=Path, help="write every run, the medians and the versions here")
    parser.add_argument("--slow", type=float, default=300.0,
                        help="if a cvpl_tools run at 1 GiB takes longer than this many seconds, stop after one round")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-run timeout, seconds")
    args = parser.parse_args()
    if args.runs < 1 or args.big_runs < 1:
        parser.error("--runs and --big-runs must be at least 1")

    args.workdir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    frozen = check_cvpl_venv()
    script = args.workdir / "cvpl_tools_count.py"
    script.write_text(CVPL_SCRIPT)

    sizes = {
        "128MiB": Size("128MiB", Path("/tmp/cvpl-bench/crop.ome.zarr"), (128, 512, 512), None, args.runs),
        "1GiB": Size("1GiB", Path("/tmp/cvpl-bench/v1.ome.zarr"), (256, 1024, 1024), 66_312, args.big_runs),
    }
    runs: list[Run] = []
    summary: dict[str, Any] = {}
    for name in args.sizes:
        size = sizes[name]
        if name == "128MiB":
            ensure_crop(size.volume)
        if not (size.volume / "zarr.json").exists():
            raise BenchError(f"missing test volume {size.volume}")
        expected = size.expected if size.expected is not None else scipy_count(size.volume)
        volume_v2 = v2_copy(size.volume, args.workdir)
        spec = args.workdir / f"cvplgraph-{name}.toml"
        cache = args.workdir / f"cvplgraph-{name}.cache"
        spec.write_text(SPEC.format(volume=size.volume, cache=cache, level=LEVEL, block=", ".join(map(str, CHUNKS))))
        rounds = size.runs
        r = 0
        while r < rounds:
            r += 1
            for tool in ("read", "cvplgraph", "cvpl_tools"):
                if tool == "read":
                    seconds, objects, extra = run_read(size.volume, args.timeout)
                elif tool == "cvplgraph":
                    seconds, objects, extra = run_cvplgraph(spec, cache, args.timeout)
                else:
                    seconds, objects, extra = run_cvpl_tools(script, volume_v2, args.workdir / "cvpl-cache",
                                                             args.timeout)  # fmt: skip
                if tool != "read" and objects != expected:
                    raise BenchError(f"{tool} found {objects} objects at {name}, the reference is {expected}")
                runs.append(Run(tool, name, r, seconds, objects, extra))
                print(f"  {name} round {r} {tool:>10}: {seconds:8.2f} s  {objects} objects", flush=True)
                if tool == "cvpl_tools" and name == "1GiB" and seconds > args.slow and rounds > 1:
                    print(f"  cvpl_tools took over {args.slow:.0f} s at 1 GiB: one round only", flush=True)
                    rounds = r
        ours = statistics.median(x.seconds for x in runs if x.size == name and x.tool == "cvplgraph")
        theirs = statistics.median(x.seconds for x in runs if x.size == name and x.tool == "cvpl_tools")
        read = statistics.median(x.seconds for x in runs if x.size == name and x.tool == "read")
        summary[name] = {"cvplgraph_median_s": ours, "cvpl_tools_median_s": theirs, "ratio": theirs / ours,
                         "read_median_s": read, "largest_possible_ratio": theirs / read,
                         "target": TARGETS[name], "meets_target": theirs / ours >= TARGETS[name],
                         "objects": expected, "rounds": r}  # fmt: skip

    print(f"\ncvplgraph vs cvpl_tools {CVPL_VERSION}: process wall time (s), started {started}")
    print(f"{'size':<8}{'round':>6}{'read only':>12}{'cvplgraph':>12}{'cvpl_tools':>12}{'objects':>10}")
    for name in summary:
        for r in range(1, summary[name]["rounds"] + 1):
            pair = {x.tool: x for x in runs if x.size == name and x.round == r}
            print(f"{name:<8}{r:>6}{pair['read'].seconds:>12.2f}{pair['cvplgraph'].seconds:>12.2f}"
                  f"{pair['cvpl_tools'].seconds:>12.2f}"
                  f"{pair['cvplgraph'].objects:>10}")  # fmt: skip
        s = summary[name]
        verdict = "meets" if s["meets_target"] else "misses"
        print(f"{name:<8}{'median':>6}{s['read_median_s']:>12.2f}{s['cvplgraph_median_s']:>12.2f}"
              f"{s['cvpl_tools_median_s']:>12.2f}   cvpl_tools/cvplgraph = {s['ratio']:.1f}× ({verdict} the "
              f"≥ {s['target']:.0f}× target); cvpl_tools/read only = {s['largest_possible_ratio']:.1f}×, the most "
              "any tool can reach")  # fmt: skip

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "started_utc": started, "level": LEVEL, "chunks": CHUNKS, "runs": [asdict(x) for x in runs],
            "summary": summary, "cvpl_tools_venv": {"python": str(CVPL_VENV / "bin" / "python"), "versions": frozen},
            "machine": machine(["dask", "distributed", "zarr", "numpy", "scipy", "connected-components-3d"]),
        }, indent=2))  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        sys.exit(f"error: {error}")
