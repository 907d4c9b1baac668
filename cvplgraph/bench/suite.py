"""The suite file of `cvplgraph bench`: datasets and variants, read and checked.

A suite (TOML) names datasets and variants::

    [bench]
    output = "bench-results"        # tables and plots (default: <suite>-results beside the suite)
    cache = "bench-cache"           # one cache for every variant (default: inside the output folder)
    tolerance_um = 5.0              # matching distance, or [z, y, x] µm for an ellipsoid (default: per dataset)

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

Running and scoring: :mod:`cvplgraph.bench.run`; merging the variants: :mod:`cvplgraph.bench.graph`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvplgraph.errors import Problem, SpecError
from cvplgraph.spec.fields import locate_fields
from cvplgraph.spec.parse import load_toml, resolve_path

#: Where shipped method specs live, for ``spec = "NAME"`` without a path: the package's, the repository's.
SHIPPED_SPECS = (Path(__file__).parents[1] / "specs", Path(__file__).parents[2] / "specs")


@dataclass(frozen=True)
class Dataset:
    name: str
    input: dict[str, Any]  # an [input] table, paths absolute
    inputs: dict[str, Any] | None = None  # [inputs.*] tables replacing the variants' (atlases)
    synth: dict[str, Any] | None = None  # generator parameters (cvplgraph.synth.volume.SynthParams)
    truth: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    cell_type: int = 2
    region_truth: str | None = None
    tolerance_um: float | tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Variant:
    name: str  # the [variants.NAME] name, with the grid values in brackets
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
    tolerance_um: float | tuple[float, float, float] | None = None


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
    tolerance = _tolerance(settings.get("tolerance_um"), "bench.tolerance_um", bad)
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


def _tolerance(value: Any, where: str, bad: Any) -> float | tuple[float, float, float] | None:
    """A tolerance: a positive number of µm, or three (z, y, x) for an ellipsoid."""
    if value is None or _positive(value):
        return value
    if isinstance(value, list) and len(value) == 3 and all(map(_positive, value)):
        return (float(value[0]), float(value[1]), float(value[2]))
    bad(where, f"expected a positive number of µm, or [z, y, x] µm, got {value!r}")
    return None


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
        from cvplgraph.synth.volume import SynthParams

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
    tolerance = _tolerance(body.get("tolerance_um"), f"{where}.tolerance_um", bad)
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
                spec,
                tuple(fixed + chosen),
                body.get("points"),
                body.get("regions"),
            )
        )
    return out


def split_node_param(key: str) -> tuple[str, str]:
    """The node and the parameter a ``"node.parameter"`` key names, as suites (``set``, ``grid``),
    ``[tune]`` tables and ``cvplgraph tune --param`` write them.

    Parameters
    ----------
    key : str
        ``"mask.level"``: a node name, a dot, a parameter name (split at the first dot).

    Returns
    -------
    tuple of (str, str)
        ``("mask", "level")``.

    Raises
    ------
    ValueError
        If either part is empty; its message, ``expected "node.parameter", got 'level'``, is the
        one every caller reports (after saying where the key stands).
    """
    node, _, param = key.strip().partition(".")
    if not node or not param:
        raise ValueError(f'expected "node.parameter", got {key!r}')
    return node, param


def _node_param(key: str, where: str, bad: Any) -> tuple[str, str]:
    try:
        return split_node_param(key)
    except ValueError as exc:
        bad(where, str(exc))
        return "", ""


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
