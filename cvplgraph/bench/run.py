"""`cvplgraph bench`: methods compared against ground truth, every variant of a dataset in one graph.

The suite file (:mod:`cvplgraph.bench.suite`) names datasets and variants. For each dataset the
variants are merged into one spec (:mod:`cvplgraph.bench.graph`): nodes that are the same op with
the same parameters on the same inputs are one node, so a common prefix is computed once, and
everything runs as one dask graph through the cache like any run. Each variant is scored by
one-to-one matching of its points to the truth (:mod:`cvplgraph.bench.metrics`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cvplgraph.bench.graph import merge, variant_spec
from cvplgraph.bench.suite import Dataset, Suite
from cvplgraph.bench.truth import UM_COLUMNS
from cvplgraph.errors import CvplError
from cvplgraph.spec.model import INPUT, Spec
from cvplgraph.types import PortType
from cvplgraph.values import Geometry

#: Matching tolerance when neither the suite nor the dataset gives one and the truth is not synthetic:
#: half of a typical 10 µm cell body.
DEFAULT_TOLERANCE_UM = 5.0


@dataclass
class Score:
    """One variant on one dataset."""

    dataset: str
    variant: str
    found: int
    true: int | None = None
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    count_error: int | None = None
    count_error_pct: float | None = None
    tolerance_um: float | tuple[float, float, float] | None = None
    seconds_own: float = 0.0  # task seconds of the nodes only this variant has (first to need them)
    seconds_total: float = 0.0  # task seconds of every node it needs, shared ones included
    regions: pd.DataFrame | None = field(default=None, repr=False)
    points: pd.DataFrame | None = field(default=None, repr=False)  # what was found (run_suite(keep_points=True))


@dataclass
class DatasetRun:
    """What running one dataset's merged graph took."""

    dataset: str
    wall_seconds: float
    peak_rss_bytes: int
    computed: list[str]
    cached: list[str]


# --------------------------------------------------------------------------- running and scoring


def dataset_input(dataset: Dataset, suite: Suite) -> tuple[dict[str, Any], str | None]:
    """The dataset's [input] table and truth file; a synthetic dataset is written once, under
    the output folder, in a folder named by its parameters' hash."""
    if "tiff" in dataset.input:
        from cvplgraph.cache.keys import digest

        # named by what the stored image depends on (not by read options such as intensity_range);
        # `converted` is written last, so a conversion that was stopped half-way is done again
        name = digest([dataset.input["tiff"], dataset.voxel_size])[:12]
        folder = suite.output / "datasets" / f"{dataset.name}-{name}"
        if not (folder / "converted").exists():
            _tiff_to_ome_zarr(dataset.input["tiff"], str(folder / "image.ome.zarr"), dataset.voxel_size)
            (folder / "converted").touch()
        options = {k: v for k, v in dataset.input.items() if k != "tiff"}
        return {**options, "url": str(folder / "image.ome.zarr")}, dataset.truth
    if dataset.synth is None:
        return dataset.input, dataset.truth
    from cvplgraph.cache.keys import digest
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    params = SynthParams(**dataset.synth)
    folder = suite.output / "datasets" / f"{dataset.name}-{digest(dataset.synth)[:12]}"
    url, truth = folder / "image.ome.zarr", folder / "cells.csv"
    if not truth.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_synthetic(str(url), params, str(truth))
    return {"url": str(url)}, str(truth)


def _tiff_to_ome_zarr(tiff: str, url: str, voxel_size: Any) -> None:
    """A (z, y, x) TIFF as an OME-Zarr input, read lazily through tifffile's zarr view of its
    pages (memory bounded by the blocks, not the file)."""
    import dask
    import dask.array as da
    import tifffile
    import zarr

    from cvplgraph.io.stores import write_array
    from cvplgraph.spec.model import StoreSpec
    from cvplgraph.values import Geometry, wrap

    try:
        pages = tifffile.imread(tiff, aszarr=True)
    except (OSError, ValueError) as exc:
        raise CvplError(f"{tiff}: cannot read the TIFF ({exc})") from None
    with pages:
        source = zarr.open_array(pages, mode="r")
        if source.ndim != 3:
            raise CvplError(f"{tiff}: expected a (z, y, x) TIFF, got {source.ndim} axes of shape {source.shape}")
        chunks = (min(32, source.shape[0]), 256, 256)
        size = (float(voxel_size[0]), float(voxel_size[1]), float(voxel_size[2]))
        data = da.from_zarr(source).rechunk(chunks)
        value = wrap(data, Geometry(tuple(int(n) for n in source.shape), size))  # type: ignore[arg-type]
        dask.compute(*write_array(url, value, PortType.Image, StoreSpec(chunks=chunks), Path(tiff).stem))


def read_truth(dataset: Dataset, truth: str | None) -> tuple[pd.DataFrame | None, pd.Series | None]:
    """The true centres (µm) and true counts per region, or a one-line error naming the file."""
    from cvplgraph.bench.truth import read_points, read_region_truth

    points = read_points(truth, voxel_size=dataset.voxel_size, cell_type=dataset.cell_type) if truth else None
    regions = read_region_truth(dataset.region_truth) if dataset.region_truth else None
    return points, regions


def tolerance_for(suite: Suite, dataset: Dataset) -> float | tuple[float, float, float]:
    """The suite's tolerance, else the dataset's, else the synthetic cells' mean radius (half a
    diameter), else :data:`DEFAULT_TOLERANCE_UM`."""
    from cvplgraph.bench.metrics import default_tolerance_um

    for given in (suite.tolerance_um, dataset.tolerance_um):
        if isinstance(given, (tuple, list)):
            return (float(given[0]), float(given[1]), float(given[2]))
        if given is not None:
            return float(given)
    if dataset.synth is not None:
        from cvplgraph.synth.volume import SynthParams

        low, high = SynthParams(**dataset.synth).cell_radius_um
        return default_tolerance_um((low + high) / 2)
    return DEFAULT_TOLERANCE_UM


class PeakRSS:
    """Peak resident memory of this process and its children while the block runs (sampled)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_suite(
    suite: Suite,
    *,
    scheduler: str | None = "threads",
    progress: bool = False,
    log: Any = print,
    keep_points: bool = False,
) -> tuple[list[Score], list[DatasetRun]]:
    """Run every dataset's merged graph and score every variant on it (``keep_points``: each
    score keeps the points found, for `cvplgraph tune`'s per-trial files)."""
    from cvplgraph.engine.execute import execute
    from cvplgraph.engine.plan import make_plan

    # every given truth is read before any volume is written or converted: a bad file fails fast
    given = {d.name: read_truth(d, d.truth) for d in suite.datasets if d.synth is None}
    truths = {}
    for dataset in suite.datasets:
        inp, truth = dataset_input(dataset, suite)
        read = given[dataset.name] if dataset.name in given else read_truth(dataset, truth)
        truths[dataset.name] = (inp, *read)
    scores: list[Score] = []
    runs: list[DatasetRun] = []
    for dataset in suite.datasets:
        inp, truth, region_truth = truths[dataset.name]
        located = replace(dataset, input=inp)
        built = {v.name: variant_spec(v, located, suite.cache_url) for v in suite.variants}
        specs = {name: spec for name, (spec, _) in built.items()}
        merged, names = merge(specs, suite.path)
        plan = make_plan(merged)
        before = sum(len(s.nodes) for s in specs.values())
        log(f"{dataset.name}: {len(suite.variants)} variants, {len(merged.nodes)} nodes ({before} before merging), "
            f"{len(plan.to_compute())} to compute")  # fmt: skip
        start = time.perf_counter()
        with PeakRSS() as memory:
            results = execute(plan, scheduler=scheduler, progress=progress, profile=True)
        runs.append(DatasetRun(dataset.name, time.perf_counter() - start, memory.peak,
                               results.report.computed, results.report.cached))  # fmt: skip
        if truth is not None:
            truth = inside(truth, Geometry.of(results[INPUT]))
        tolerance = tolerance_for(suite, dataset)
        first_owner: dict[str, str] = {}
        for variant in suite.variants:
            for node in specs[variant.name].nodes:
                first_owner.setdefault(names[(variant.name, node.name)], variant.name)
        for variant in suite.variants:
            spec = specs[variant.name]
            found = results[names[(variant.name, built[variant.name][1])]].to_dataframe()
            used = {names[(variant.name, n.name)] for n in spec.nodes}
            seconds = results.report.node_seconds
            score = score_points(found, truth, tolerance)
            score.dataset, score.variant = dataset.name, variant.name
            score.seconds_total = sum(seconds.get(n, 0.0) for n in used)
            score.seconds_own = sum(seconds.get(n, 0.0) for n in used if first_owner[n] == variant.name)
            if variant.regions and region_truth is not None:
                score.regions = region_scores(results[names[(variant.name, variant.regions)]], region_truth)
            if keep_points:
                score.points = found
            scores.append(score)
    return scores, runs


def inside(points: pd.DataFrame, geometry: Geometry) -> pd.DataFrame:
    """The points (µm) inside the voxels of the input's ``geometry`` (after its crop): a crop is
    scored against the truth it contains."""
    _, within = geometry.to_voxel(points[UM_COLUMNS].to_numpy(float))
    return points[within].reset_index(drop=True)


def score_points(
    found: pd.DataFrame, truth: pd.DataFrame | None, tolerance_um: float | tuple[float, float, float]
) -> Score:
    """Matching metrics of found centres (µm columns) against the truth (None: counts only)."""
    from cvplgraph.bench.metrics import match

    score = Score("", "", len(found))
    if truth is None:
        return score
    m = match(found[UM_COLUMNS].to_numpy(float), truth[UM_COLUMNS].to_numpy(float), tolerance_um)
    score.true, score.tp, score.fp, score.fn = len(truth), m.tp, m.fp, m.fn
    score.precision, score.recall, score.f1 = m.precision, m.recall, m.f1
    score.count_error, score.count_error_pct, score.tolerance_um = m.count_error, m.count_error_pct, tolerance_um
    return score


def region_scores(regions: Any, truth: pd.Series) -> pd.DataFrame:
    """Found against true cells per region (both hemispheres), by acronym when the truth uses
    acronyms, else by id."""
    from cvplgraph.bench.metrics import region_errors

    cells = regions["cells"]
    both = "both" in cells["hemisphere"].values  # the region table's total over hemispheres
    cells = cells.sel(hemisphere="both") if both else cells.sum("hemisphere")
    frame = cells.to_dataframe().reset_index()
    by = "acronym" if truth.index.dtype == object else "region"
    found = frame.groupby(by)["cells"].sum()
    return region_errors(found, truth)


# --------------------------------------------------------------------------- one node of a spec


def upstream_nodes(spec: Spec, name: str) -> set[str]:
    """``name`` and every node and input it reads, directly or not."""
    by_name = {n.name: n for n in spec.nodes}
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in by_name:
            todo += [source for _, source in by_name[current].inputs]
    return seen


def run_node(
    spec: Spec, name: str, *, crop: tuple[int, ...] | None = None, scheduler: str | None = "threads",
    progress: bool = False,
) -> tuple[Any, Geometry]:  # fmt: skip
    """One node's value, computed through the spec's cache like any run: only the node and what it
    reads, on the spec's input or on ``crop`` (voxels ``z0, z1, y0, y1, x0, x1``, stop exclusive,
    replacing the spec's own crop); no outputs are written.

    Returns
    -------
    value : DataArray (arrays) or Dataset (tables)
    geometry : Geometry
        The (cropped) input's voxel grid.
    """
    from cvplgraph.engine.execute import execute
    from cvplgraph.engine.plan import make_plan

    keep = upstream_nodes(spec, name)
    part = replace(spec, nodes=tuple(n for n in spec.nodes if n.name in keep), outputs=(), formats=(),
                   atlases=tuple(a for a in spec.atlases if a[0] in keep))  # fmt: skip
    if crop is not None:
        box = tuple((int(crop[2 * a]), int(crop[2 * a + 1])) for a in range(3))
        part = replace(part, input=replace(part.input, crop=box))
    results = execute(make_plan(part), scheduler=scheduler, progress=progress)
    return results[name], Geometry.of(results[INPUT])
