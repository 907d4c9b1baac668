"""`cvplgraph bench`: methods compared against ground truth, every variant of a dataset in one graph.

A suite (TOML) names datasets and variants::

    [bench]
    output = "bench-results"        # tables and plots (default: <suite>-results beside the suite)
    cache = "bench-cache"           # one cache for every variant (default: inside the output folder)
    tolerance_um = 5.0              # matching distance (default: per dataset, see below)

    [datasets.dense]                # a synthetic volume, described by its generator parameters
    synth = { shape = [48, 192, 192], spacing_um = 16, cell_radius_um = [5, 6], seed = 1 }

    [datasets.crop]                 # any spec input, with or without truth
    input = { url = "crop.ome.zarr" }
    truth = "cells.xml"             # CSV (µm or voxels), napari points CSV, CellCounter XML
    voxel_size = [5, 2.31, 2.31]    # µm per voxel of truth given in voxels
    region_truth = "regions.csv"    # optional: true cells per region

    [variants.threshold]
    spec = "specs/demo.toml"        # the method: a spec (its input, cache and outputs are replaced)
    points = "centroids"            # the node whose points are scored (default: its only Points node)
    set = { "mask.level" = 0.3 }    # overrides, "node.parameter" = value
    grid = { "mask.level" = [0.2, 0.3, 0.4] }   # one variant per combination

For each dataset the variants are merged into one spec: nodes that are the same op with the same
parameters on the same inputs are one node (so a common prefix is computed once), and everything
runs as one dask graph through the cache like any run. Each variant is scored by one-to-one matching
of its points to the truth (:mod:`cvplgraph.metrics`).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import CvplError, Problem, SpecError
from .spec import InputSpec, NodeSpec, Spec, load_toml, resolve_path, spec_from_raw
from .spec_fields import locate_fields
from .types import PortType

#: Matching tolerance when neither the suite nor the dataset gives one and the truth is not synthetic:
#: half of a typical 10 µm cell body.
DEFAULT_TOLERANCE_UM = 5.0
#: Where shipped method specs live, for ``spec = "NAME"`` without a path.
SHIPPED_SPECS = (Path(__file__).parent / "specs", Path(__file__).parents[1] / "specs")


@dataclass(frozen=True)
class Dataset:
    name: str
    input: dict[str, Any]  # an [input] table, paths absolute
    inputs: dict[str, Any] | None = None  # [inputs.*] tables replacing the variants' (atlases)
    synth: dict[str, Any] | None = None  # generator parameters (cvplgraph.synth.SynthParams)
    truth: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    cell_type: int = 2
    region_truth: str | None = None
    tolerance_um: float | None = None


@dataclass(frozen=True)
class Variant:
    name: str  # family name, with the grid values in brackets
    family: str
    spec: Path
    overrides: tuple[tuple[str, str, Any], ...] = ()  # (node, parameter, value)
    points: str | None = None
    regions: str | None = None


@dataclass(frozen=True)
class Suite:
    path: str
    datasets: tuple[Dataset, ...]
    variants: tuple[Variant, ...]
    output: Path
    cache_url: str
    tolerance_um: float | None = None


@dataclass
class Score:
    """One variant on one dataset."""

    dataset: str
    variant: str
    family: str
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
    tolerance_um: float | None = None
    seconds_own: float = 0.0  # task seconds of the nodes only this variant has (first to need them)
    seconds_total: float = 0.0  # task seconds of every node it needs, shared ones included
    regions: pd.DataFrame | None = field(default=None, repr=False)


@dataclass
class DatasetRun:
    """What running one dataset's merged graph took."""

    dataset: str
    wall_seconds: float
    peak_rss_bytes: int
    computed: list[str]
    cached: list[str]


# --------------------------------------------------------------------------- the suite file


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; every problem is reported at once (file, line, field)."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([Problem(path, None, "file", f"cannot read the suite: {exc.strerror}")]) from None
    raw = load_toml(text, path)
    lines = locate_fields(text)
    base = Path(path).resolve().parent
    problems: list[Problem] = []

    def bad(where: str, message: str) -> None:
        problems.append(Problem(path, lines.get(where), where, message))

    unknown = set(raw) - {"bench", "datasets", "variants"}
    for key in sorted(unknown):
        bad(key, "unknown table; expected [bench], [datasets.NAME] or [variants.NAME]")
    settings = raw.get("bench", {})
    output = base / str(settings.get("output", f"{Path(path).stem}-results"))
    cache = resolve_path(str(settings.get("cache", output / "cache")), base)
    tolerance = settings.get("tolerance_um")
    if tolerance is not None and not _positive(tolerance):
        bad("bench.tolerance_um", f"expected a positive number of µm, got {tolerance!r}")
    datasets = [_dataset(name, body, base, bad) for name, body in _tables(raw, "datasets", bad)]
    variants = [v for name, body in _tables(raw, "variants", bad) for v in _variants(name, body, base, bad)]
    if problems:
        raise SpecError(problems)
    return Suite(path, tuple(d for d in datasets if d), tuple(variants), output, cache, tolerance)


def _tables(raw: dict[str, Any], kind: str, bad: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    tables = raw.get(kind)
    if not isinstance(tables, dict) or not tables:
        bad(kind, f"expected at least one [{kind}.NAME] table")
        return
    for name, body in tables.items():
        if isinstance(body, dict):
            yield name, body
        else:
            bad(f"{kind}.{name}", f"expected a table, got {body!r}")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _dataset(name: str, body: dict[str, Any], base: Path, bad: Any) -> Dataset | None:
    where = f"datasets.{name}"
    known = {"synth", "input", "tiff", "inputs", "truth", "voxel_size", "cell_type", "region_truth", "tolerance_um"}
    for key in sorted(set(body) - known):
        bad(f"{where}.{key}", f"unknown key; expected one of {', '.join(sorted(known))}")
    given_url = isinstance(body.get("input"), dict) and "url" in body["input"]
    if sum(("synth" in body, given_url, "tiff" in body)) != 1:
        bad(where, 'expected one of synth = { … generator parameters … }, input = { url = … } or tiff = "…"')
        return None
    if "tiff" in body:  # converted to OME-Zarr on first use; other [input] options still apply
        if not isinstance(body["tiff"], str) or not isinstance(body.get("voxel_size"), list):
            bad(f"{where}.tiff", "expected a TIFF path (z, y, x), with voxel_size = [z, y, x] µm")
            return None
        body = {**body, "input": {**dict(body.get("input", {})), "tiff": resolve_path(body["tiff"], base)}}
    if "synth" in body:
        from .synth import SynthParams

        try:
            SynthParams(**_tuples(body["synth"]))
        except (TypeError, ValueError) as exc:
            bad(f"{where}.synth", str(exc))
            return None
    inp = dict(body.get("input", {}))
    if "input" in body and "tiff" not in inp and not isinstance(inp.get("url"), str):
        bad(f"{where}.input.url", f"expected an OME-Zarr path or URL, got {inp.get('url')!r}")
        return None
    if "url" in inp:
        inp["url"] = resolve_path(inp["url"], base)
    voxel = body.get("voxel_size")
    if voxel is not None and not (isinstance(voxel, list) and len(voxel) == 3 and all(map(_positive, voxel))):
        bad(f"{where}.voxel_size", f"expected three positive numbers (µm per voxel, z y x), got {voxel!r}")
    tolerance = body.get("tolerance_um")
    if tolerance is not None and not _positive(tolerance):
        bad(f"{where}.tolerance_um", f"expected a positive number of µm, got {tolerance!r}")
    inputs = body.get("inputs")
    if inputs is not None:
        if not isinstance(inputs, dict) or not all(isinstance(t, dict) for t in inputs.values()):
            bad(f"{where}.inputs", f"expected [{where}.inputs.NAME] tables (atlases), got {inputs!r}")
            inputs = None
        else:  # relative to the suite, as every path in it
            inputs = {n: {**t, **({"url": resolve_path(t["url"], base)} if isinstance(t.get("url"), str) else {})}
                      for n, t in inputs.items()}  # fmt: skip
    files = {key: resolve_path(body[key], base) if isinstance(body.get(key), str) else None
             for key in ("truth", "region_truth")}  # fmt: skip
    return Dataset(
        name,
        inp,
        inputs,
        _tuples(body["synth"]) if "synth" in body else None,
        files["truth"],
        tuple(voxel) if voxel else None,  # type: ignore[arg-type]
        int(body.get("cell_type", 2)),
        files["region_truth"],
        tolerance,
    )


def _tuples(params: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def _variants(name: str, body: dict[str, Any], base: Path, bad: Any) -> list[Variant]:
    where = f"variants.{name}"
    known = {"spec", "points", "regions", "set", "grid"}
    for key in sorted(set(body) - known):
        bad(f"{where}.{key}", f"unknown key; expected one of {', '.join(sorted(known))}")
    spec = _find_spec(body.get("spec"), base)
    if spec is None:
        bad(f"{where}.spec", f"expected a spec file (a path, or the name of a shipped spec), got {body.get('spec')!r}")
        return []
    fixed = [(*_node_param(k, f"{where}.set", bad), v) for k, v in dict(body.get("set", {})).items()]
    grid = dict(body.get("grid", {}))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            bad(f"{where}.grid", f"expected a non-empty list of values for {key!r}, got {values!r}")
            return []
    axes = [(_node_param(k, f"{where}.grid", bad), values) for k, values in grid.items()]
    out = []
    for combination in itertools.product(*(values for _, values in axes)):
        chosen = [(node, param, value) for ((node, param), _), value in zip(axes, combination)]
        label = ", ".join(f"{param}={value}" for _, param, value in chosen)
        out.append(
            Variant(
                f"{name}[{label}]" if label else name,
                name,
                spec,
                tuple(fixed + chosen),
                body.get("points"),
                body.get("regions"),
            )
        )
    return out


def _node_param(key: str, where: str, bad: Any) -> tuple[str, str]:
    node, _, param = key.partition(".")
    if not node or not param:
        bad(where, f'expected "node.parameter" keys, got {key!r}')
    return node, param


def _find_spec(value: Any, base: Path) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    path = Path(resolve_path(value, base))
    if path.is_file():
        return path
    for folder in SHIPPED_SPECS:
        shipped = folder / (value if value.endswith(".toml") else f"{value}.toml")
        if shipped.is_file():
            return shipped
    return None


# --------------------------------------------------------------------------- one graph per dataset


def variant_spec(variant: Variant, dataset: Dataset, cache_url: str) -> Spec:
    """The variant's spec on the dataset: its input, the suite's cache, the overrides applied,
    only the nodes (and atlases) the scored points and regions need."""
    text = variant.spec.read_text(encoding="utf-8")
    raw = load_toml(text, str(variant.spec))
    from .plugins import import_plugin

    for module in raw.get("plugins", []) if isinstance(raw.get("plugins"), list) else []:
        import_plugin(module, variant.spec.resolve().parent)  # its ops decide which nodes are read
    nodes = raw.get("nodes", {})
    for node, param, value in variant.overrides:
        if node not in nodes:
            raise CvplError(f"{variant.spec}: variant {variant.name}: no node {node!r} to set {param} on "
                            f"(nodes: {', '.join(nodes)})")  # fmt: skip
        nodes[node][param] = value
    keep = set()
    for name in [scored_node(raw, variant), *([variant.regions] if variant.regions else [])]:
        keep |= _upstream(nodes, name)
    raw["nodes"] = {name: body for name, body in nodes.items() if name in keep}
    raw["input"] = dataset.input
    atlases = dataset.inputs if dataset.inputs is not None else raw.get("inputs", {})
    raw["inputs"] = {name: body for name, body in atlases.items() if name in keep}
    raw["cache"] = {"url": cache_url}
    for key in ("outputs", "cluster", "tune"):
        raw.pop(key, None)
    return spec_from_raw(raw, str(variant.spec), locate_fields(text))


def scored_node(raw: dict[str, Any], variant: Variant) -> str:
    """The node whose points are scored: the variant's ``points``, or the spec's only Points node."""
    nodes = raw.get("nodes", {})
    if variant.points:
        if variant.points not in nodes:
            raise CvplError(f"variant {variant.name}: points = {variant.points!r} is not a node of {variant.spec}")
        return variant.points
    points = [name for name, body in nodes.items() if _op(body) is not None and _op(body).output is PortType.Points]
    if len(points) != 1:
        raise CvplError(
            f"variant {variant.name}: {variant.spec} has {len(points)} Points nodes ({', '.join(points) or 'none'}); "
            'say which to score with points = "NODE"'
        )
    return points[0]


def _op(body: Any) -> Any:
    from .registry import REGISTRY, known_ops

    op = body.get("op") if isinstance(body, dict) else None
    return REGISTRY.get(op) if isinstance(op, str) and op in known_ops() else None


def _upstream(nodes: dict[str, Any], name: str) -> set[str]:
    """``name`` and every node or input it reads, in a spec's raw [nodes] tables."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        opdef = _op(nodes.get(current))
        if opdef is not None:
            todo += [nodes[current][p.name] for p in opdef.inputs if isinstance(nodes[current].get(p.name), str)]
    return seen


def merge(specs: dict[str, Spec], suite_path: str) -> tuple[Spec, dict[tuple[str, str], str]]:
    """One spec holding every variant's nodes, identical nodes once.

    Two nodes are identical when they run the same op with the same parameters on identical
    inputs (all variants read the same input). Returns the merged spec and, per (variant, node),
    the merged node's name (``variant.node`` of the first variant that needed it).
    """
    names: dict[tuple[str, str], str] = {}
    identity: dict[str, str] = {}  # identity → merged name
    merged: list[NodeSpec] = []
    atlases: dict[str, Any] = {}
    for variant, spec in specs.items():
        for name, atlas in spec.atlases:
            if atlases.setdefault(name, atlas) != atlas:
                raise CvplError(f"variants give different atlases named {name!r}; give them one in the dataset")
        ident = {source: source for source in spec.sources}
        order = _in_order(spec)
        for node in order:
            inputs = tuple((port, ident[src]) for port, src in node.inputs)
            key = json.dumps([node.op, node.params, inputs], sort_keys=True, default=str)
            if key not in identity:
                identity[key] = f"{variant}.{node.name}"
                rename = {port: names.get((variant, src), src) for port, src in node.inputs}
                merged.append(replace(node, name=identity[key], inputs=tuple(rename.items())))
            names[(variant, node.name)] = identity[key]
            ident[node.name] = key
    first = next(iter(specs.values()))
    plugins = tuple(dict.fromkeys(p for s in specs.values() for p in s.plugins))
    spec = replace(first, path=suite_path, nodes=tuple(merged), outputs=(), locations={}, formats=(),
                   atlases=tuple(atlases.items()), plugins=plugins)  # fmt: skip
    return spec, names


def _in_order(spec: Spec) -> list[NodeSpec]:
    """Nodes with every node after the nodes it reads."""
    nodes = {n.name: n for n in spec.nodes}
    out: list[NodeSpec] = []
    done: set[str] = set(spec.sources)

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for _, src in nodes[name].inputs:
            visit(src)
        out.append(nodes[name])

    for name in nodes:
        visit(name)
    return out


# --------------------------------------------------------------------------- running and scoring


def dataset_input(dataset: Dataset, suite: Suite) -> tuple[dict[str, Any], str | None]:
    """The dataset's [input] table and truth file; a synthetic dataset is written once, under
    the output folder, in a folder named by its parameters' hash."""
    if "tiff" in dataset.input:
        from .hashing import digest

        folder = suite.output / "datasets" / f"{dataset.name}-{digest([dataset.input, dataset.voxel_size])[:12]}"
        if not (folder / "image.ome.zarr" / "zarr.json").exists():
            _tiff_to_ome_zarr(dataset.input["tiff"], str(folder / "image.ome.zarr"), dataset.voxel_size)
        options = {k: v for k, v in dataset.input.items() if k != "tiff"}
        return {**options, "url": str(folder / "image.ome.zarr")}, dataset.truth
    if dataset.synth is None:
        return dataset.input, dataset.truth
    from .demo import write_synthetic
    from .hashing import digest
    from .synth import SynthParams

    params = SynthParams(**dataset.synth)
    folder = suite.output / "datasets" / f"{dataset.name}-{digest(dataset.synth)[:12]}"
    url, truth = folder / "image.ome.zarr", folder / "cells.csv"
    if not truth.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_synthetic(str(url), params, str(truth))
    return {"url": str(url)}, str(truth)


def _tiff_to_ome_zarr(tiff: str, url: str, voxel_size: Any) -> None:
    """A (z, y, x) TIFF as an OME-Zarr input (read whole: meant for crops, not whole scans)."""
    import dask
    import dask.array as da
    import tifffile

    from .spec import StoreSpec
    from .storage import write_array
    from .values import Geometry, wrap

    try:
        array = tifffile.imread(tiff)
    except (OSError, ValueError) as exc:
        raise CvplError(f"{tiff}: cannot read the TIFF ({exc})") from None
    if array.ndim != 3:
        raise CvplError(f"{tiff}: expected a (z, y, x) TIFF, got {array.ndim} axes of shape {array.shape}")
    chunks = (min(32, array.shape[0]), 256, 256)
    size = (float(voxel_size[0]), float(voxel_size[1]), float(voxel_size[2]))
    value = wrap(da.from_array(array, chunks=chunks), Geometry(array.shape, size))
    dask.compute(*write_array(url, value, PortType.Image, StoreSpec(chunks=chunks), Path(tiff).stem))


def read_truth(dataset: Dataset, truth: str | None) -> tuple[pd.DataFrame | None, pd.Series | None]:
    """The true centres (µm) and true counts per region, or a one-line error naming the file."""
    from .truth import read_points, read_region_truth

    points = read_points(truth, voxel_size=dataset.voxel_size, cell_type=dataset.cell_type) if truth else None
    regions = read_region_truth(dataset.region_truth) if dataset.region_truth else None
    return points, regions


def tolerance_for(suite: Suite, dataset: Dataset) -> float:
    """The suite's tolerance, else the dataset's, else the synthetic cells' mean radius (half a
    diameter), else :data:`DEFAULT_TOLERANCE_UM`."""
    from .metrics import default_tolerance_um

    if suite.tolerance_um is not None:
        return float(suite.tolerance_um)
    if dataset.tolerance_um is not None:
        return float(dataset.tolerance_um)
    if dataset.synth is not None:
        from .synth import SynthParams

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
    suite: Suite, *, scheduler: str | None = "threads", progress: bool = False, log: Any = print
) -> tuple[list[Score], list[DatasetRun]]:
    """Run every dataset's merged graph and score every variant on it."""
    from .execute import execute
    from .plan import make_plan

    truths = {}
    for dataset in suite.datasets:  # every truth is read before anything runs: a bad file fails fast
        inp, truth = dataset_input(dataset, suite)
        truths[dataset.name] = (inp, *read_truth(dataset, truth))
    scores: list[Score] = []
    runs: list[DatasetRun] = []
    for dataset in suite.datasets:
        inp, truth, region_truth = truths[dataset.name]
        located = replace(dataset, input=inp)
        specs = {v.name: variant_spec(v, located, suite.cache_url) for v in suite.variants}
        scored = {v.name: scored_node(load_toml(v.spec.read_text(encoding="utf-8"), str(v.spec)), v)
                  for v in suite.variants}  # fmt: skip
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
            truth = inside(truth, merged.input)
        tolerance = tolerance_for(suite, dataset)
        first_owner: dict[str, str] = {}
        for variant in suite.variants:
            for node in specs[variant.name].nodes:
                first_owner.setdefault(names[(variant.name, node.name)], variant.name)
        for variant in suite.variants:
            spec = specs[variant.name]
            found = results[names[(variant.name, scored[variant.name])]].to_dataframe()
            used = {names[(variant.name, n.name)] for n in spec.nodes}
            seconds = results.report.node_seconds
            score = score_points(found, truth, tolerance)
            score.dataset, score.variant, score.family = dataset.name, variant.name, variant.family
            score.seconds_total = sum(seconds.get(n, 0.0) for n in used)
            score.seconds_own = sum(seconds.get(n, 0.0) for n in used if first_owner[n] == variant.name)
            if variant.regions and region_truth is not None:
                score.regions = region_scores(results[names[(variant.name, variant.regions)]], region_truth)
            scores.append(score)
    return scores, runs


def inside(points: pd.DataFrame, source: InputSpec) -> pd.DataFrame:
    """The points (µm) inside the voxels of the input (after its crop): a crop is scored against
    the truth it contains."""
    from .storage import read_input
    from .values import Geometry

    _, within = Geometry.of(read_input(source)).to_voxel(points[["z_um", "y_um", "x_um"]].to_numpy(float))
    return points[within].reset_index(drop=True)


def score_points(found: pd.DataFrame, truth: pd.DataFrame | None, tolerance_um: float) -> Score:
    """Matching metrics of found centres (µm columns) against the truth (None: counts only)."""
    from .metrics import match

    score = Score("", "", "", len(found))
    if truth is None:
        return score
    columns = ["z_um", "y_um", "x_um"]
    m = match(found[columns].to_numpy(float), truth[columns].to_numpy(float), tolerance_um)
    score.true, score.tp, score.fp, score.fn = len(truth), m.tp, m.fp, m.fn
    score.precision, score.recall, score.f1 = m.precision, m.recall, m.f1
    score.count_error, score.count_error_pct, score.tolerance_um = m.count_error, m.count_error_pct, tolerance_um
    return score


def region_scores(regions: Any, truth: pd.Series) -> pd.DataFrame:
    """Found against true cells per region (both hemispheres), by acronym when the truth uses
    acronyms, else by id."""
    from .metrics import region_errors

    cells = regions["cells"]
    both = "both" in cells["hemisphere"].values  # the region table's total over hemispheres
    cells = cells.sel(hemisphere="both") if both else cells.sum("hemisphere")
    frame = cells.to_dataframe().reset_index()
    by = "acronym" if truth.index.dtype == object else "region"
    found = frame.groupby(by)["cells"].sum()
    return region_errors(found, truth)
