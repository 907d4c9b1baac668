"""Throughput of every cvplgraph op on one synthetic volume, against the raw zarr read.

One run of this script, with dask's threaded scheduler (``--threads`` threads):

1. writes a synthetic float32 OME-Zarr volume (``--shape``, ``--chunks``) and its
   true cells with :func:`cvplgraph.synth.volume.write_synthetic` (kept in ``--workdir``
   and reused);
2. measures the raw read + decompress of that store: every block is read and
   reduced to one voxel (best of 3, after one untimed pass that puts the store in
   the page cache);
3. reads the image into memory once and derives every op's natural input from
   it, also held in memory as a dask array over a numpy array with the store's
   chunks: the mask (``threshold(level=0.3)``), its labels
   (``connected_components``), their centroids (a points table). Every op is then
   timed on its own input, so the figures exclude the read of the input;
4. trains a small pixel classifier from sparse annotations made from the truth
   (voxels near some true centres = cell, a sparse scatter of voxels far from
   every cell = background);
5. times every op (best of up to 3 runs within a time budget) and reports
   seconds per gigavoxel, the ratio to the raw read, the CPU time and, where
   the op finds cells, how many it found against the truth. Array outputs are
   reduced to one value per block (masks are stored into a numpy array, to
   count their connected components afterwards, untimed). Before every run the
   script waits for other processes to leave the CPUs alone (``--quiet``,
   ``--max-wait``); a run they disturbed does not count as one of the repeats;
6. runs naive scikit-image calls on the same blocks and halos as the watershed
   and blob ops (``blob_log``, ``blob_dog``; ``peak_local_max`` +
   ``watershed``), cvplgraph's per-block functions on those blocks, and
   prototypes of faster kernels: a watershed kernel that works only inside the
   bounding box of each mask component, and Laplacian-of-Gaussian detectors that
   test for 4-D maxima only where the response passes the threshold. The
   watershed kernels also run on one thread: their cost per core when no other
   thread competes for the GIL (as on a cluster of one-thread worker processes);
7. profiles the slowest ops with cProfile on one block (synchronous
   scheduler), and records per task prefix where the threads spent their time.

Example::

    python benchmarks/bench_ops.py --workdir /tmp/cvpl-bench-ops --json bench-ops.json
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import os
import pstats
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import cc3d
import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.diagnostics import Profiler
from dask.utils import key_split
from machine_info import machine
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.feature import blob_dog, blob_log, peak_local_max
from skimage.segmentation import watershed as skimage_watershed

from cvplgraph import ops
from cvplgraph.io.stores import read_input
from cvplgraph.ops._classifier import fit, save
from cvplgraph.ops.blobs import detect
from cvplgraph.ops.classify import training_rows
from cvplgraph.ops.filters import TRUNCATE
from cvplgraph.ops.watershed import ball, seeds_and_flood
from cvplgraph.spec.model import InputSpec
from cvplgraph.synth.volume import SynthParams, write_synthetic
from cvplgraph.values import Geometry, Table, wrap

PACKAGES = (
    "cvplgraph", "dask", "zarr", "numcodecs", "numpy", "scipy", "scikit-image", "scikit-learn",
    "connected-components-3d", "xarray",
)  # fmt: skip

#: Threshold of the mask every mask op starts from, as in ``specs/demo.toml``.
LEVEL = 0.3
#: Objects smaller than this many voxels are not counted when a mask is checked against the truth.
MIN_VOXELS = 4
#: Watershed parameters (µm), as in ``specs/watershed.toml``.
MIN_DISTANCE, MAX_RADIUS = 6.0, 10.0
#: Blob parameters per method (µm), as in ``specs/blob_log.toml`` and ``specs/blob_dog.toml``.
BLOBS: dict[str, dict[str, Any]] = {
    "log": {"min_sigma": 2.0, "max_sigma": 3.5, "num_sigma": 4, "threshold": 0.25},
    "dog": {"min_sigma": 2.0, "max_sigma": 3.5, "threshold": 0.1},
    "peaks": {"min_sigma": 1.5, "threshold": 0.2},
}
#: Feature scales (µm) and forest size of the pixel classifier trained here.
CLASSIFIER = {"sigmas_um": (1.0, 2.0), "trees": 16, "depth": 8}
#: A found point matches a true cell closer than this (µm).
MATCH_UM = 5.0
#: The 80 neighbours of a voxel in (scale, z, y, x).
NEIGHBOURS_4D = np.array([o for o in itertools.product((-1, 0, 1), repeat=4) if any(o)])


@dataclass
class Row:
    """Best-of-N wall time of one workload and what it found."""

    name: str
    kind: str  # reference | op | naive | kernel | prototype
    seconds: float
    all_seconds: list[float]
    voxels: int
    found: int | None = None
    recall: float | None = None  # points only: fraction of true cells with a found point within MATCH_UM
    precision: float | None = None  # points only: fraction of found points with a true cell within MATCH_UM
    note: str = ""
    tasks: dict[str, float] = field(default_factory=dict)  # thread seconds per task prefix, best run
    others: float = 0.0  # share of the machine's CPU time used by other processes during the best run
    cpu_seconds: float = 0.0  # CPU time of this process (all threads) during the best run

    @property
    def s_per_gvox(self) -> float:
        return self.seconds / (self.voxels / 1e9)


class Block(NamedTuple):
    """One block of the volume with its halo (clipped at the volume border), as an array view."""

    data: np.ndarray
    pad_start: np.ndarray
    core_start: np.ndarray
    core_stop: np.ndarray


@dataclass
class Inputs:
    """Every op's natural input, in memory, and the truth."""

    image: xr.DataArray
    mask: xr.DataArray
    labels: xr.DataArray
    points: Table
    truth: pd.DataFrame
    chunks: tuple[int, int, int]

    @property
    def voxels(self) -> int:
        return int(np.prod(self.image.shape))

    @property
    def scale(self) -> tuple[float, float, float]:
        return Geometry.of(self.image).scale


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timer:
    """How work is timed: ``threads`` threads, on a machine other processes leave (mostly) alone.

    Before every run the timer waits (at most ``max_wait`` seconds per run) until
    other processes use less than ``quiet`` of the machine's CPU time; a run during
    which they used more does not count as one of the repeats (at most twice as
    many runs are made), and is kept only when no quiet run was possible.
    """

    threads: int = 2
    quiet: float = 0.1
    max_wait: float = 300.0

    def wait_for_quiet(self) -> float:
        """Wait until other processes use at most ``quiet`` of the CPUs; the share they used last."""
        deadline = time.monotonic() + self.max_wait
        share = others_share(0.5)
        if share > self.quiet and self.max_wait > 0:
            print(f"    waiting: other processes use {100 * share:.0f} % of the CPUs", flush=True)
        while share > self.quiet and time.monotonic() < deadline:
            share = others_share(1.0)
        return share

    def measure(
        self,
        name: str,
        kind: str,
        work: Callable[[], Any],
        voxels: int,
        *,
        check: Callable[[Any], int | None] | None = None,
        repeats: int = 3,
        budget: float = 25.0,
        note: str = "",
    ) -> tuple[Row, Any]:
        """Run ``work`` until ``repeats`` quiet runs are done (at most ``2 * repeats`` runs, ``budget`` seconds).

        Keeps the fastest quiet run (the fastest run when none was quiet).

        ``check`` turns the last result into the number of cells found, untimed.
        Returns the row and the last result.
        """
        runs: list[tuple[float, dict[str, float], float, float]] = []
        result: Any = None
        while not runs or (
            sum(r[2] <= self.quiet for r in runs) < repeats
            and len(runs) < 2 * repeats
            and sum(r[0] for r in runs) + runs[0][0] <= budget
        ):
            result = None
            gc.collect()
            before = self.wait_for_quiet()
            busy, own = machine_busy_seconds(), time.process_time()
            with Profiler() as profiler:
                start = time.perf_counter()
                result = work()
                seconds = time.perf_counter() - start
            cpu = time.process_time() - own
            others = (machine_busy_seconds() - busy - cpu) / (seconds * (os.cpu_count() or 1))
            # /proc/stat counts in clock ticks (10 ms): too coarse for short runs, judged by the moment before
            others = max(0.0, others) if seconds >= 0.25 else before
            runs.append((seconds, task_breakdown(profiler.results), others, cpu))
        quiet = [r for r in runs if r[2] <= self.quiet] or runs
        seconds, tasks, others, cpu = min(quiet, key=lambda run: run[0])
        found = check(result) if check is not None else None
        row = Row(name, kind, seconds, [r[0] for r in quiet], voxels, found, note=note, tasks=tasks, others=others,
                  cpu_seconds=cpu)  # fmt: skip
        shown = "" if found is None else f"  found {found}"
        busy_note = f"  (other processes used {100 * others:.0f} % of the CPUs)" if others > self.quiet else ""
        print(f"  {name:<44} {seconds:8.2f} s  {row.s_per_gvox:8.1f} s/Gvox{shown}{busy_note}", flush=True)
        return row, result


def others_share(seconds: float) -> float:
    """Share of the machine's CPU time that other processes use, sampled over ``seconds``."""
    busy, own = machine_busy_seconds(), time.process_time()
    time.sleep(seconds)
    return max(0.0, (machine_busy_seconds() - busy - (time.process_time() - own)) / (seconds * (os.cpu_count() or 1)))


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def task_breakdown(tasks: Sequence[Any]) -> dict[str, float]:
    """Thread seconds per task prefix, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for task in tasks:
        totals[key_split(task.key)] += task.end_time - task.start_time
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _first_voxel(block: np.ndarray) -> np.ndarray:
    return block[:1, :1, :1].copy()


def _block_max(block: np.ndarray) -> np.ndarray:
    return np.array(block.max(initial=0), ndmin=3)


def _ids(block: np.ndarray) -> np.ndarray:
    return np.unique(block[block > 0])


def distinct_ids(data: da.Array) -> int:
    """Number of distinct non-zero ids in ``data``: ``np.unique`` per block, then across blocks."""
    parts = dask.compute(*(dask.delayed(_ids)(b) for b in data.to_delayed().ravel()))
    return int(np.unique(np.concatenate([np.empty(0, data.dtype), *parts])).size)


def per_block(data: da.Array, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Compute ``data`` block by block, keeping one value per block."""
    chunks = tuple((1,) * n for n in data.numblocks)
    return data.map_blocks(reduce, chunks=chunks, dtype=data.dtype).compute()


def store(data: da.Array) -> np.ndarray:
    """Compute ``data`` into one numpy array, each block written in place."""
    out = np.empty(data.shape, dtype=data.dtype)
    da.store(data, out, lock=False)
    return out


def run_blocks(func: Callable[[Block], Any], blocks: list[Block], threads: int) -> list[Any]:
    """``func`` on every block, on ``threads`` threads."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(func, blocks))


# --------------------------------------------------------------------------- inputs


def ensure_volume(workdir: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> tuple[Path, Path]:
    """The synthetic volume for ``shape``/``chunks`` in ``workdir`` and its cell table, written on first use."""
    name = f"synthetic-{'x'.join(map(str, shape))}-c{'x'.join(map(str, chunks))}"
    url, truth = workdir / f"{name}.ome.zarr", workdir / f"{name}.cells.csv"
    if not (url.exists() and truth.exists()):
        print(f"writing {url} ...", flush=True)
        write_synthetic(str(url), SynthParams(shape=shape, chunks=chunks), str(truth))
        os.sync()  # so that writeback does not run during the measurements
    return url, truth


def in_memory(values: np.ndarray, geometry: Geometry, chunks: tuple[int, int, int], name: str) -> xr.DataArray:
    """A numpy array as a chunked dask-backed DataArray (no hashing of the data)."""
    return wrap(da.from_array(values, chunks=chunks, name=name), geometry)


def load_inputs(url: Path, truth_csv: Path, chunks: tuple[int, int, int]) -> Inputs:
    """Read the image once and compute the mask, labels and points every other op starts from (untimed)."""
    source = read_input(InputSpec(str(url)))
    geometry = Geometry.of(source)
    image = in_memory(source.data.compute(), geometry, chunks, "input-image")
    mask = in_memory(store(ops.threshold(image, level=LEVEL).data), geometry, chunks, "input-mask")
    labels = in_memory(store(ops.connected_components(mask).data), geometry, chunks, "input-labels")
    frame = ops.centroids(labels, image).compute()
    points = Table(dask.delayed(frame, name="input-points"), geometry)
    return Inputs(image, mask, labels, points, pd.read_csv(truth_csv), chunks)


def paint_annotations(inputs: Inputs, rng: np.random.Generator) -> np.ndarray:
    """Sparse annotations in the first block, as a person paints them in Napari.

    A third of the true cells centred in that block get the voxels within half
    their radius of the centre painted 2 (cell); 1 % of the block's voxels that
    lie more than 15 µm from every true centre are painted 1 (background).
    """
    shape, scale = inputs.image.shape, np.asarray(inputs.scale)
    region = np.minimum(inputs.chunks, shape)  # the first block, clipped to a volume smaller than a chunk
    out = np.zeros(shape, np.uint8)
    centres = inputs.truth[["z", "y", "x"]].to_numpy()
    radii = inputs.truth["radius_um"].to_numpy()
    inside = np.flatnonzero(np.all(centres < region - 0.5, axis=1))
    for i in rng.choice(inside, size=len(inside) // 3, replace=False):
        reach = np.ceil(0.5 * radii[i] / scale).astype(int)
        lo = np.maximum(np.rint(centres[i]).astype(int) - reach, 0)
        hi = np.minimum(np.rint(centres[i]).astype(int) + reach + 1, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        squared = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centres[i], scale))
        out[tuple(slice(a, b) for a, b in zip(lo, hi))][squared <= (0.5 * radii[i]) ** 2] = 2
    samples = (rng.random((int(0.01 * region.prod()), 3)) * region).astype(int)
    distance, _ = cKDTree(centres * scale).query(samples * scale)
    far = samples[distance > 15.0]
    out[tuple(far[out[tuple(far.T)] == 0].T)] = 1
    return out


def train_classifier(inputs: Inputs, folder: Path) -> tuple[Path, dict[str, Any]]:
    """Fit and save the pixel classifier on painted annotations; its path and how it was trained."""
    annotations = paint_annotations(inputs, np.random.default_rng(0))
    start = time.perf_counter()
    x, y = training_rows(inputs.image, da.from_array(annotations, chunks=inputs.chunks), CLASSIFIER["sigmas_um"])
    model = fit(x, y, CLASSIFIER["sigmas_um"], trees=CLASSIFIER["trees"], depth=CLASSIFIER["depth"])
    path = save(model, folder)
    info = {
        **CLASSIFIER,
        "cell_voxels": int((y == 2).sum()),
        "background_voxels": int((y == 1).sum()),
        "seconds": time.perf_counter() - start,
    }
    print(f"  trained {path.name} on {info['cell_voxels']} cell and {info['background_voxels']} background voxels"
          f" in {info['seconds']:.1f} s", flush=True)  # fmt: skip
    return path, info


# --------------------------------------------------------------------------- checks against the truth


def mask_objects(mask: np.ndarray) -> int:
    """Connected components (26-connectivity) of at least :data:`MIN_VOXELS` voxels."""
    labels = cc3d.connected_components(mask, connectivity=26, binary_image=True)
    return int((np.bincount(labels.ravel())[1:] >= MIN_VOXELS).sum())


def match(found: np.ndarray, truth: np.ndarray, scale: tuple[float, ...]) -> tuple[float, float]:
    """Recall and precision of found points (voxels) against true centres (voxels), within :data:`MATCH_UM`."""
    if len(found) == 0:
        return 0.0, 0.0
    s = np.asarray(scale)
    to_found, _ = cKDTree(found * s).query(truth * s)
    to_truth, _ = cKDTree(truth * s).query(found * s)
    return float((to_found <= MATCH_UM).mean()), float((to_truth <= MATCH_UM).mean())


def with_match(row: Row, found: np.ndarray, inputs: Inputs) -> Row:
    """``row`` with the recall and precision of ``found`` (voxel coordinates) against the truth."""
    row.recall, row.precision = match(found, inputs.truth[["z", "y", "x"]].to_numpy(), inputs.scale)
    return row


# --------------------------------------------------------------------------- cvplgraph ops


def raw_read(url: Path) -> Callable[[], np.ndarray]:
    """Read and decompress every block of level 0, keep one voxel per block."""
    return lambda: per_block(da.from_zarr(str(url), component="0"), _first_voxel)


def time_ops(timer: Timer, inputs: Inputs, model: Path | None, only: tuple[str, ...] = ()) -> list[Row]:
    """Every op on its natural input (those whose names start with one of ``only``, when given)."""
    image, mask, points, n = inputs.image, inputs.mask, inputs.points, inputs.voxels
    rows: list[Row] = []

    def chosen(name: str) -> bool:
        return not only or name.startswith(only)

    def image_op(name: str, call: Callable[[], xr.DataArray]) -> None:
        if not chosen(name):
            return
        rows.append(timer.measure(name, "op", lambda: per_block(call().data, _first_voxel), n)[0])

    def mask_op(name: str, call: Callable[[], xr.DataArray], repeats: int = 3) -> None:
        if not chosen(name):
            return
        rows.append(timer.measure(name, "op", lambda: store(call().data), n, check=mask_objects, repeats=repeats,
                                  note=f"objects ≥ {MIN_VOXELS} voxels in the mask (26-connected)")[0])  # fmt: skip

    def labels_op(name: str, call: Callable[[], xr.DataArray], repeats: int = 3, position_ids: bool = False) -> None:
        if not chosen(name):
            return
        # ids 1..N: the largest block maximum is the count; position ids: count the distinct ids (untimed rerun)
        check = (lambda _: distinct_ids(call().data)) if position_ids else (lambda m: int(m.max()))
        note = "distinct non-zero ids (position ids), counted in an untimed extra run" if position_ids else ""
        rows.append(timer.measure(name, "op", lambda: per_block(call().data, _block_max), n,
                                  check=check, repeats=repeats, note=note)[0])  # fmt: skip

    def points_op(name: str, call: Callable[[], Any], check: Callable[[Any], int | None] | None = len) -> None:
        if not chosen(name):
            return
        row, result = timer.measure(name, "op", lambda: call().compute(), n, check=check)
        if isinstance(result, pd.DataFrame) and {"z", "y", "x"} <= set(result.columns):
            row = with_match(row, result[["z", "y", "x"]].to_numpy(), inputs)
        rows.append(row)

    image_op("gaussian (sigma 2 µm)", lambda: ops.gaussian(image, sigma=2.0))
    image_op("background_subtract (radius 15 µm)", lambda: ops.background_subtract(image, radius=15.0))
    image_op("normalize", lambda: ops.normalize(image))
    image_op("downsample (1, 2, 2)", lambda: ops.downsample(image, factor=(1, 2, 2)))
    mask_op(f"threshold (level {LEVEL})", lambda: ops.threshold(image, level=LEVEL))
    mask_op("otsu", lambda: ops.otsu(image))
    mask_op("local_threshold (sigma 20 µm)", lambda: ops.local_threshold(image, sigma=20.0, offset=0.1))
    if model is not None:
        mask_op("pixel_classifier", lambda: ops.pixel_classifier(image, model=str(model)), repeats=2)
    labels_op("connected_components (6)", lambda: ops.connected_components(mask, connectivity=6))
    labels_op("connected_components (26)", lambda: ops.connected_components(mask, connectivity=26))
    labels_op("watershed", lambda: ops.watershed(mask, min_distance=MIN_DISTANCE, max_radius=MAX_RADIUS), 2)
    labels_op(
        "watershed (renumber false)",
        lambda: ops.watershed(mask, min_distance=MIN_DISTANCE, max_radius=MAX_RADIUS, renumber=False),
        2,
        position_ids=True,
    )
    for method, params in BLOBS.items():
        points_op(f"blobs ({method})", partial(ops.blobs, image, method=method, **params))
    points_op(
        "detect_cells (diameter 12 µm, threshold 6)", partial(ops.detect_cells, image, diameter=12.0, threshold=6.0)
    )
    points_op("centroids (with image)", lambda: ops.centroids(inputs.labels, image))
    points_op("count", lambda: ops.count(points, block=inputs.chunks), check=lambda c: int(c.sum()))
    points_op("density (100 µm)", lambda: ops.density(points, spacing=100.0), check=None)
    points_op(f"filter_size (≥ {MIN_VOXELS} voxels)", lambda: ops.filter_size(points, min_voxels=MIN_VOXELS))
    return rows


# --------------------------------------------------------------------------- per-block kernels


def padded_blocks(volume: np.ndarray, chunks: tuple[int, int, int], halo: Sequence[int]) -> list[Block]:
    """Every block of ``volume`` with ``halo`` voxels of context per side (none beyond the border)."""
    shape = np.array(volume.shape)
    blocks = []
    for index in itertools.product(*(range(-(-s // c)) for s, c in zip(volume.shape, chunks))):
        core_start = np.array(index) * np.array(chunks)
        core_stop = np.minimum(core_start + np.array(chunks), shape)
        pad_start = np.maximum(core_start - np.asarray(halo), 0)
        pad_stop = np.minimum(core_stop + np.asarray(halo), shape)
        view = volume[tuple(slice(a, b) for a, b in zip(pad_start, pad_stop))]
        blocks.append(Block(view, pad_start, core_start, core_stop))
    return blocks


def in_core(coords: np.ndarray, block: Block) -> np.ndarray:
    """Global coordinates of the points of ``coords`` (local to the padded block) whose voxel is in the core."""
    coords = coords + block.pad_start
    centre = np.floor(coords + 0.5)
    return coords[np.all((centre >= block.core_start) & (centre < block.core_stop), axis=1)]


def blob_sigmas(scale: tuple[float, ...], min_sigma: float, max_sigma: float = 4.0, num_sigma: int = 5) -> np.ndarray:
    """(num_sigma, 3) sigmas in voxels per axis, as the blobs op derives them."""
    sig_um = np.linspace(min_sigma, max_sigma, num_sigma) if num_sigma > 1 else np.array([min_sigma])
    return sig_um[:, None] / np.asarray(scale)[None, :]


def naive_blobs(block: Block, method: str, sigmas: np.ndarray, threshold: float) -> np.ndarray:
    """scikit-image's detector called straight on the block and its halo; blobs centred in the core."""
    if method == "log":
        found = blob_log(block.data, min_sigma=sigmas[0], max_sigma=sigmas[-1], num_sigma=len(sigmas),
                         threshold=threshold, exclude_border=False)  # fmt: skip
    else:
        found = blob_dog(block.data, min_sigma=sigmas[0], max_sigma=sigmas[-1], threshold=threshold,
                         exclude_border=False)  # fmt: skip
    return in_core(found[:, :3], block)


def detect_in_core(
    block: Block, method: str, sigmas: np.ndarray, threshold: float, scale: tuple[float, ...]
) -> np.ndarray:
    """cvplgraph's per-block detector on the block + halo; blobs centred in the core."""
    return in_core(detect(block.data, method, sigmas, threshold, scale)[:, :3], block)


def scale_space_log(block: np.ndarray, sigmas: np.ndarray, discrete: bool) -> np.ndarray:
    """(num_sigma, Z, Y, X) scale-normalised negative Laplacian of Gaussian, float32.

    ``discrete``: one gaussian per scale then the 3-point second difference per
    axis, instead of scipy's ``gaussian_laplace`` (three second-derivative
    gaussians, nine 1-D passes).
    """
    stack = np.empty((len(sigmas), *block.shape), np.float32)
    for i, sigma in enumerate(sigmas):
        if discrete:
            smooth = ndimage.gaussian_filter(block, sigma, mode="reflect", truncate=TRUNCATE)
            response = sum(ndimage.correlate1d(smooth, [1.0, -2.0, 1.0], axis=a, mode="reflect") for a in range(3))
        else:
            response = ndimage.gaussian_laplace(block, sigma, mode="reflect", truncate=TRUNCATE)
        stack[i] = -np.float32(np.mean(sigma) ** 2) * response
    return stack


def sparse_maxima(stack: np.ndarray, threshold: float) -> np.ndarray:
    """(n, 4) voxels of ``stack`` above ``threshold`` that are ≥ their 80 neighbours (edges repeated).

    The points of ``peak_local_max(stack, threshold_abs=threshold, footprint=ones((3,) * 4))``,
    but tested on the voxels above the threshold only instead of with a dense 4-D maximum filter.
    Of maxima that tie within one voxel in (z, y, x), only the first in raster order is kept (what
    ``blob_log``'s overlap pruning does for such twins).
    """
    coords = np.array(np.nonzero(stack > threshold))
    values = stack[tuple(coords)]
    last = np.array(stack.shape)[:, None] - 1
    for offset in NEIGHBOURS_4D:  # the candidates shrink with every offset
        keep = values >= stack[tuple(np.clip(coords + offset[:, None], 0, last))]
        coords, values = coords[:, keep], values[keep]
    maxima = coords.T
    twins = cKDTree(maxima[:, 1:]).query_pairs(r=1.0, p=np.inf, output_type="ndarray")
    dropped = np.zeros(len(maxima), dtype=bool)
    for i, j in sorted(map(tuple, twins)):
        dropped[j] |= not dropped[i]
    return maxima[~dropped]


def sparse_log(block: Block, sigmas: np.ndarray, threshold: float, discrete: bool) -> np.ndarray:
    """Prototype LoG detector: scale space, then maxima tested only above the threshold; blobs in the core."""
    stack = scale_space_log(block.data.astype(np.float32, copy=False), sigmas, discrete)
    return in_core(sparse_maxima(stack, threshold)[:, 1:].astype(float), block)


def naive_watershed(block: Block, scale: tuple[float, ...], min_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """The textbook recipe on one block + halo: EDT, ``peak_local_max`` seeds, ``watershed``.

    Returns the flooded block and the global coordinates of the seeds in the core.
    """
    fg = block.data > 0
    distance = ndimage.distance_transform_edt(fg, sampling=scale)
    seeds = peak_local_max(distance, min_distance=min_distance, labels=block.data, exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    return skimage_watershed(-distance, markers, mask=fg), in_core(seeds.astype(float), block)


def components_flood(
    mask: np.ndarray, scale: tuple[float, ...], min_distance: float, origin: tuple[int, ...], shape: tuple[int, ...]
) -> np.ndarray:
    """Prototype of ``seeds_and_flood`` that works inside each mask component's bounding box only.

    Same signature and, per component, the same steps (distance transform,
    smoothing, tie-break, maxima within ``min_distance``, flood), but on a crop
    of the component's bounding box plus one voxel, with the other components
    masked out; a component with one seed is filled without a flood. The
    distance transform of a component's voxels is exact on that crop (the
    nearest background voxel always lies in it); seeds can differ from the
    whole-block kernel only where two components lie closer than
    ``min_distance``, where the whole-block maximum filter lets one suppress the
    other's seed.
    """
    labels = cc3d.connected_components(mask, connectivity=26, binary_image=True)
    out = np.zeros(mask.shape, dtype=np.int64)
    footprint = ball(min_distance, scale)
    sigma = [0.5 / s * min(scale) for s in scale]
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, mask.shape))
        start = tuple(o + c.start for o, c in zip(origin, crop))
        inside = labels[crop] == k
        distance = ndimage.gaussian_filter(
            ndimage.distance_transform_edt(inside, sampling=scale), sigma=sigma, mode="nearest"
        )
        grid = np.ogrid[tuple(slice(o, o + n) for o, n in zip(start, inside.shape))]
        index = np.ravel_multi_index(tuple(grid), shape)
        distance += 1e-6 * ((index * 0.6180339887498949) % 1.0)
        peaks = inside & (distance == ndimage.maximum_filter(distance, footprint=footprint, mode="nearest"))
        regions, n = ndimage.label(peaks, structure=np.ones((3, 3, 3)))
        if n == 0:
            continue
        first = ndimage.minimum(np.arange(regions.size).reshape(regions.shape), regions, np.arange(1, n + 1))
        local = np.array(np.unravel_index(np.asarray(first, dtype=np.int64), regions.shape)).T
        ids = np.concatenate([[0], np.ravel_multi_index(tuple((local + np.asarray(start)).T), shape) + 1])
        target = out[crop]
        target[inside] = ids[1] if n == 1 else ids[skimage_watershed(-distance, regions, mask=inside)][inside]
    return out


def seed_ids_in_core(flooded: np.ndarray, block: Block, shape: tuple[int, ...]) -> np.ndarray:
    """Global coordinates of the seeds (id = 1 + global linear index) that lie in the block's core."""
    ids = np.unique(flooded[flooded > 0]) - 1
    coords = np.array(np.unravel_index(ids, shape)).T.astype(float)
    return in_core(coords - block.pad_start, block)


def time_blob_kernels(timer: Timer, inputs: Inputs) -> list[Row]:
    """Naive ``blob_log``/``blob_dog``, cvplgraph's ``detect`` and the LoG prototypes on the op's blocks and halos."""
    image = np.asarray(inputs.image.data.compute())
    rows: list[Row] = []
    for method in ("log", "dog"):
        p = BLOBS[method]
        sigmas = blob_sigmas(inputs.scale, p["min_sigma"], p["max_sigma"], p.get("num_sigma", 5))
        blocks = padded_blocks(image, inputs.chunks, np.ceil(TRUNCATE * sigmas.max(axis=0)).astype(int) + 1)
        kernels: list[tuple[str, str, Callable[[Block], np.ndarray], str]] = [
            (f"naive skimage blob_{method}", "naive", partial(naive_blobs, method=method, sigmas=sigmas,
             threshold=p["threshold"]), f"skimage.feature.blob_{method} on each block + halo"),
            (f"detect ({method}) per block", "kernel", partial(detect_in_core, method=method, sigmas=sigmas,
             threshold=p["threshold"], scale=inputs.scale), "cvplgraph.ops.blobs.detect on the same blocks"),
        ]  # fmt: skip
        if method == "log":
            kernels += [
                (f"prototype LoG, sparse maxima{', discrete' if discrete else ''}", "prototype",
                 partial(sparse_log, sigmas=sigmas, threshold=p["threshold"], discrete=discrete),
                 ("gaussian + 3-point Laplacian" if discrete else "gaussian_laplace")
                 + " per scale; 4-D maxima tested only above the threshold")
                for discrete in (False, True)
            ]  # fmt: skip
        for name, kind, kernel, note in kernels:
            row, parts = timer.measure(name, kind, partial(run_blocks, kernel, blocks, timer.threads), inputs.voxels,
                                       check=lambda found: sum(len(x) for x in found), note=note)  # fmt: skip
            rows.append(with_match(row, np.concatenate([np.empty((0, 3)), *parts]), inputs))
    return rows


#: The watershed kernels compared on the op's blocks: name, kind, function, what it does.
FLOOD_KERNELS: list[tuple[str, str, Callable[..., np.ndarray], str]] = [
    ("seeds_and_flood per block", "kernel", seeds_and_flood, "one pass of the op's kernel"),
    ("prototype bbox kernel per block", "prototype", components_flood,
     "distance transform, maxima and flood inside each component's bounding box"),
]  # fmt: skip


def time_watershed_kernels(timer: Timer, inputs: Inputs) -> list[Row]:
    """Naive scikit-image watershed, ``seeds_and_flood`` and the prototypes on the op's blocks and halos."""
    scale, shape = inputs.scale, tuple(inputs.image.shape)
    depth = tuple(int(np.ceil((2 * MAX_RADIUS + MIN_DISTANCE) / s)) for s in scale)
    blocks = padded_blocks(np.asarray(inputs.mask.data.compute()), inputs.chunks, depth)
    min_distance = max(1, round(MIN_DISTANCE / min(scale)))
    naive = partial(naive_watershed, scale=scale, min_distance=min_distance)
    kernels = [
        ("naive skimage watershed", "naive", naive,
         f"EDT + peak_local_max(min_distance={min_distance}) + watershed, per block + halo"),
        *((name, kind, partial(flood_block, kernel=kernel, scale=scale, shape=shape), note)
          for name, kind, kernel, note in FLOOD_KERNELS),
    ]  # fmt: skip
    rows = []
    for threads in dict.fromkeys((timer.threads, 1)):  # also on one thread: the cost per core, without the GIL
        reference: list[np.ndarray] = []
        for name, kind, kernel, note in kernels:
            suffix = f", {threads} thread" if threads != timer.threads else ""
            row, result = timer.measure(
                name + suffix,
                kind,
                partial(run_blocks, kernel, blocks, threads),
                inputs.voxels,
                check=partial(seeds_found, blocks=blocks, shape=shape),
                note=note,
                repeats=3 if threads == timer.threads else 2,
            )
            if kind == "kernel":
                reference = result
            elif kind == "prototype" and reference and not suffix:
                differ = sum(int((a != b).sum()) for a, b in zip(reference, result))
                row.note += f"; voxels labelled differently from seeds_and_flood: {differ}"
            rows.append(row)
    return rows


def seeds_found(results: list[Any], blocks: list[Block], shape: tuple[int, ...]) -> int:
    """Seeds in the block cores: from (flooded, seeds) pairs of the naive recipe, or from seed ids in labels."""
    if results and isinstance(results[0], tuple):
        return sum(len(seeds) for _, seeds in results)
    return sum(len(seed_ids_in_core(x, b, shape)) for x, b in zip(results, blocks))


def flood_block(block: Block, kernel: Callable[..., np.ndarray], scale: tuple[float, ...], shape: tuple[int, ...]
                ) -> np.ndarray:  # fmt: skip
    """A ``seeds_and_flood``-like kernel on one block + halo, placed by its first voxel in the volume."""
    return kernel(block.data, scale, MIN_DISTANCE, tuple(int(v) for v in block.pad_start), shape)


# --------------------------------------------------------------------------- profiles


def profile_ops(timer: Timer, inputs: Inputs, model: Path | None, names: list[str], top: int
                ) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """cProfile of the named ops on the first block only, synchronous scheduler; ``top`` functions by own time."""
    sub = tuple(slice(0, c) for c in inputs.chunks)
    image, mask = inputs.image[sub], inputs.mask[sub]
    calls: dict[str, Callable[[], Any]] = {
        "watershed": lambda: per_block(
            ops.watershed(mask, min_distance=MIN_DISTANCE, max_radius=MAX_RADIUS).data, _block_max
        ),  # fmt: skip
        "blobs (log)": lambda: ops.blobs(image, method="log", **BLOBS["log"]).compute(),
        "blobs (dog)": lambda: ops.blobs(image, method="dog", **BLOBS["dog"]).compute(),
        "pixel_classifier": lambda: store(ops.pixel_classifier(image, model=str(model)).data),
        "background_subtract (radius 15 µm)": lambda: per_block(
            ops.background_subtract(image, radius=15.0).data, _first_voxel
        ),  # fmt: skip
        "local_threshold (sigma 20 µm)": lambda: store(ops.local_threshold(image, sigma=20.0, offset=0.1).data),
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        if name not in calls:
            continue
        profiler = cProfile.Profile()
        timer.wait_for_quiet()
        with dask.config.set(scheduler="sync"):
            profiler.runcall(calls[name])
        stats = pstats.Stats(profiler)
        total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
        entries = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]  # type: ignore[attr-defined]
        out[name] = [
            {"function": f"{Path(f).name}:{line}({func})" if line else func, "calls": v[1], "own_seconds": v[2],
             "cumulative_seconds": v[3], "share": v[2] / total}
            for (f, line, func), v in entries
        ]  # fmt: skip
        print(f"\nprofile of {name} on one block (own time, {total:.2f} s in all):")
        for e in out[name]:
            print(f"  {e['function'][:70]:<70} {e['calls']:>7} {e['own_seconds']:7.3f} s {100 * e['share']:5.1f} %")
    return out


# --------------------------------------------------------------------------- reporting


def print_table(rows: list[Row], raw: Row, truth: int) -> None:
    """CPU s: this process's CPU time (all threads); R/P: recall/precision of found points; others: CPU share
    taken by other processes during the best run."""
    header = (
        f"{'measurement':<46} {'kind':<9} {'best s':>8} {'s/Gvox':>8} {'× raw':>7} {'CPU s':>7} {'found':>7}"
        f" {'truth':>6} {'R/P':>11} {'others':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        found = "" if r.found is None else str(r.found)
        rp = "" if r.recall is None else f"{r.recall:.3f}/{r.precision:.3f}"
        print(f"{r.name:<46} {r.kind:<9} {r.seconds:>8.2f} {r.s_per_gvox:>8.1f} {r.s_per_gvox / raw.s_per_gvox:>7.1f}"
              f" {r.cpu_seconds:>7.2f} {found:>7} {truth if r.found is not None else '':>6} {rp:>11}"
              f" {100 * r.others:>5.0f}%")  # fmt: skip


def print_breakdowns(rows: list[Row], threads: int, top: int = 6) -> None:
    """Thread time per task prefix of each row's best run (fused tasks carry the name of their last step)."""
    for r in rows:
        slots = threads * r.seconds
        print(f"\n{r.name}: thread time per task prefix ({threads} threads × {r.seconds:.2f} s = {slots:.1f} s)")
        for label, seconds in list(r.tasks.items())[:top]:
            print(f"  {label[:48]:<48} {seconds:>8.2f} s  {100 * seconds / slots:5.1f} %")


#: Pairs of measurements compared as speed-ups: (slower or naive, faster or cvplgraph).
SPEEDUPS = [
    ("naive skimage blob_log", "blobs (log)"),
    ("naive skimage blob_log", "detect (log) per block"),
    ("naive skimage blob_dog", "blobs (dog)"),
    ("naive skimage blob_dog", "detect (dog) per block"),
    ("blobs (log)", "blobs (dog)"),
    ("blobs (log)", "blobs (peaks)"),
    ("naive skimage blob_log", "prototype LoG, sparse maxima"),
    ("naive skimage blob_log", "prototype LoG, sparse maxima, discrete"),
    ("naive skimage watershed", "watershed"),
    ("naive skimage watershed", "seeds_and_flood per block"),
    ("seeds_and_flood per block", "prototype bbox kernel per block"),
    ("naive skimage watershed, 1 thread", "seeds_and_flood per block, 1 thread"),
    ("seeds_and_flood per block, 1 thread", "prototype bbox kernel per block, 1 thread"),
    ("naive skimage watershed", "watershed (renumber false)"),
    ("watershed", "watershed (renumber false)"),
]


def speedups(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Wall and CPU time of the first of each pair of :data:`SPEEDUPS` over those of the second."""
    by_name = {r.name: r for r in rows}
    out = {
        f"{a} / {b}": {
            "wall": by_name[a].seconds / by_name[b].seconds,
            "cpu": by_name[a].cpu_seconds / max(by_name[b].cpu_seconds, 1e-9),
        }
        for a, b in SPEEDUPS
        if a in by_name and b in by_name
    }
    print("\nspeed-ups (time of the first / time of the second):" + " " * 43 + "wall     CPU")
    for label, ratio in out.items():
        print(f"  {label:<92} {ratio['wall']:6.2f} × {ratio['cpu']:6.2f} ×")
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--chunks", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--workdir", type=Path, default=None, help="volume and model (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=2, help="threads of dask's threaded scheduler")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.1,
        help="runs during which other processes use more than this share of the CPUs do not count",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        help="seconds to wait, before each run, for other processes to quieten down (0: never wait)",
    )
    parser.add_argument("--profile-top", type=int, default=4, help="how many of the slowest ops to profile")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help="time only the ops whose names start with these, comma-separated (e.g. detect_cells,blobs)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="cvplgraph-bench-ops-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    shape = (args.shape[0], args.shape[1], args.shape[2])
    chunks = (args.chunks[0], args.chunks[1], args.chunks[2])
    timer = Timer(args.threads, args.quiet, args.max_wait)
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        url, truth_csv = ensure_volume(workdir, shape, chunks)
        read = raw_read(url)
        read()  # untimed: brings the store into the page cache
        raw, _ = timer.measure("raw read + decompress", "reference", read, int(np.prod(shape)))
        inputs = load_inputs(url, truth_csv, chunks)
        truth = len(inputs.truth)
        print(f"volume {shape} float32, chunks {chunks}, {truth} true cells; {args.threads} threads", flush=True)
        only = tuple(args.only.split(",")) if args.only else ()
        model, training = (None, None) if only else train_classifier(inputs, workdir / "models")
        print("ops:", flush=True)
        op_rows = time_ops(timer, inputs, model, only)
        other_rows = []
        if not only:
            print("per-block kernels, naive calls and prototypes:", flush=True)
            other_rows = [*time_blob_kernels(timer, inputs), *time_watershed_kernels(timer, inputs)]
    rows = [raw, *op_rows, *other_rows]
    print_table(rows, raw, truth)
    slowest = sorted(op_rows, key=lambda r: -r.seconds)[: 0 if only else args.profile_top]
    print_breakdowns(slowest, args.threads)
    ratios = speedups(rows)
    profiles = profile_ops(timer, inputs, model, [r.name for r in slowest], top=10) if slowest else {}
    report = {
        "shape": list(shape),
        "chunks": list(chunks),
        "voxels": int(np.prod(shape)),
        "true_cells": truth,
        "threads": args.threads,
        "machine": machine(PACKAGES),
        "quiet": args.quiet,
        "classifier": training,
        "measurements": [
            {**asdict(r), "s_per_gvox": r.s_per_gvox, "ratio_to_raw": r.s_per_gvox / raw.s_per_gvox} for r in rows
        ],
        "speedups": ratios,
        "profiles": profiles,
        "total_seconds": time.perf_counter() - started,
    }
    print(f"\ntotal {report['total_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
