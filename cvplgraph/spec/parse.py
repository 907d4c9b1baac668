"""TOML spec → frozen, validated :class:`Spec`.

Every problem is collected with the file, line and dotted field path where
it stands, the bad value and what was expected; :func:`load_spec` raises one
:class:`~cvplgraph.errors.SpecError` that lists them all. The schema is
documented in ``docs/spec.md``.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import cvplgraph.ops  # noqa: F401  (the built-in ops register themselves on import)
from cvplgraph.errors import Problem, SpecError
from cvplgraph.plugins import import_plugin
from cvplgraph.registry import get_op, known_ops
from cvplgraph.spec.cluster import parse_cluster
from cvplgraph.spec.fields import Collector, locate_fields, resolve_path
from cvplgraph.spec.graph import graph_problems
from cvplgraph.spec.model import (
    AXES,
    COMPRESSORS,
    FORMATS,
    INPUT,
    NONFINITE,
    ORIENTATION_PAIRS,
    SPARSE_COMPRESSOR,
    AtlasSpec,
    InputSpec,
    NodeSpec,
    Params,
    Spec,
    StoreSpec,
)
from cvplgraph.spec.params import check_param
from cvplgraph.spec.targets import protected, target_problems
from cvplgraph.types import PortType


def _parse_input(raw: Any, c: Collector, base: Path) -> InputSpec | None:
    if not isinstance(raw, dict):
        c.add("input", 'missing [input] table; expected url = "path/to/image.ome.zarr"')
        return None
    c.unknown_keys(
        raw,
        [
            "url",
            "channel",
            "timepoint",
            "level",
            "crop",
            "intensity_range",
            "chunks",
            "fingerprint",
            "missing_chunks",
            "nonfinite",
        ],
        "input",
    )
    missing = c.typed(raw, "missing_chunks", "input", str, '"fill" or "error"', default="fill")
    if missing not in ("fill", "error"):
        c.add("input.missing_chunks", f'expected "fill" or "error", got {missing!r}')
        missing = "fill"
    fingerprint = c.typed(raw, "fingerprint", "input", str, '"listing" or "content"', default="listing")
    if fingerprint not in ("listing", "content"):
        c.add("input.fingerprint", f'expected "listing" or "content", got {fingerprint!r}')
        fingerprint = "listing"
    expected = " or ".join(f'"{m}"' for m in NONFINITE)
    nonfinite = c.typed(raw, "nonfinite", "input", str, expected, default="error")
    if nonfinite not in NONFINITE:
        c.add("input.nonfinite", f"expected {expected} (what NaN and ±Inf voxels do), got {nonfinite!r}")
        nonfinite = "error"
    url = c.typed(raw, "url", "input", str, "an OME-Zarr path or fsspec URL (a string)", required=True)
    if isinstance(url, str) and not url.strip():
        c.add("input.url", "expected an OME-Zarr path or fsspec URL, got an empty string")
    ints = {}
    for key in ("channel", "timepoint", "level"):
        v = c.typed(raw, key, "input", int, "an integer ≥ 0", default=0)
        if v < 0:
            c.add(f"input.{key}", f"expected an integer ≥ 0, got {v!r}")
            v = 0
        ints[key] = v
    crop = None
    if "crop" in raw:
        crop = _parse_crop(raw["crop"], c)
    irange = None
    if "intensity_range" in raw:
        v = raw["intensity_range"]
        if (
            isinstance(v, list)
            and len(v) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            and v[0] < v[1]
        ):
            irange = (float(v[0]), float(v[1]))
        else:
            c.add("input.intensity_range", f"expected [low, high] with low < high, got {v!r}")
    chunks = c.int_list(raw["chunks"], "input.chunks", 3, 1) if "chunks" in raw else None
    if not isinstance(url, str) or not url.strip():
        return None
    return InputSpec(
        resolve_path(url, base),
        ints["channel"],
        ints["timepoint"],
        ints["level"],
        crop,
        irange,
        chunks,  # type: ignore[arg-type]
        fingerprint,
        nonfinite=nonfinite,
        missing_chunks=missing,
    )


def _parse_crop(raw: Any, c: Collector) -> tuple[tuple[int, int], ...] | None:
    if not isinstance(raw, dict):
        c.add("input.crop", f"expected a table like {{ z = [0, 64], y = [0, 512], x = [0, 512] }}, got {raw!r}")
        return None
    c.unknown_keys(raw, list(AXES), "input.crop")
    out = []
    for axis in AXES:
        v = raw.get(axis)
        if v is None:
            out.append((0, -1))  # whole axis; clamped when the input is opened
            continue
        if (
            isinstance(v, list)
            and len(v) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            and 0 <= v[0] < v[1]
        ):
            out.append((v[0], v[1]))
        else:
            c.add(f"input.crop.{axis}", f"expected [start, stop] voxels with 0 ≤ start < stop, got {v!r}")
            out.append((0, -1))
    return tuple(out)


def _parse_store(raw: Any, c: Collector, path: str) -> StoreSpec:
    if not isinstance(raw, dict):
        c.add(path, f"expected a table like {{ chunks = [64, 256, 256], multiscale = 1 }}, got {raw!r}")
        return StoreSpec()
    c.unknown_keys(raw, ["chunks", "multiscale", "compressor"], path)
    chunks = c.int_list(raw["chunks"], f"{path}.chunks", 3, 1) if "chunks" in raw else None
    levels = c.typed(raw, "multiscale", path, int, "an integer ≥ 1 (number of pyramid levels)", default=1)
    if levels < 1:
        c.add(f"{path}.multiscale", f"expected an integer ≥ 1 (number of pyramid levels), got {levels!r}")
        levels = 1
    compressor = StoreSpec().compressor
    if "compressor" in raw:
        comp = raw["compressor"]
        cid = comp.get("id") if isinstance(comp, dict) else None
        if cid not in COMPRESSORS:
            c.add(f"{path}.compressor", f"expected a table with id one of {', '.join(COMPRESSORS)}, got {comp!r}")
        else:
            compressor = tuple(sorted(comp.items()))
    return StoreSpec(chunks, levels, compressor)  # type: ignore[arg-type]


ATLAS_KEYS = ["kind", "url", "name", "version", "orientation", "structures", "hemispheres", "hemisphere_values",
              "scale", "translation", "transpose", "chunks"]  # fmt: skip
#: Output formats beside the one a suffix implies: brainmapper's region summary and per-cell table, CellCounter XML.
OUTPUT_FORMATS = tuple(FORMATS)


def orientation_problem(code: str) -> str | None:
    """Why ``code`` is not a BrainGlobe orientation (three letters, one of each of a/p, s/i, l/r), or None."""
    pairs = sorted(next((i for i, pair in enumerate(ORIENTATION_PAIRS) if c in pair), 9) for c in code.lower())
    if pairs == [0, 1, 2]:
        return None
    return f'expected three letters, one of each pair a/p, s/i, l/r, for where z, y, x point (e.g. "asr"), got {code!r}'


def _float_list(value: Any, full: str, c: Collector, positive: bool) -> tuple[float, ...] | None:
    ok = (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive) for v in value)
    )
    if not ok:
        c.add(full, f"expected a list of 3 {'numbers > 0' if positive else 'numbers'} (z, y, x µm), got {value!r}")
        return None
    return tuple(float(v) for v in value)


def _parse_atlas(name: str, raw: Any, c: Collector, base: Path) -> AtlasSpec | None:
    path = f"inputs.{name}"
    if not isinstance(raw, dict):
        c.add(path, f'expected a table [inputs.{name}] with kind = "atlas" and url = "...", got {raw!r}')
        return None
    c.unknown_keys(raw, ATLAS_KEYS, path)
    kind = c.typed(raw, "kind", path, str, '"atlas"', default="atlas")
    if kind != "atlas":
        c.add(f"{path}.kind", f'expected "atlas" (the image to segment is [input]), got {kind!r}')
        return None
    what = "an atlas: OME-Zarr labels, a TIFF or a BrainGlobe atlas folder"
    url = c.typed(raw, "url", path, str, what, default="")
    name = c.typed(raw, "name", path, str, 'a BrainGlobe atlas name such as "allen_mouse_25um"', default="")
    version = c.typed(raw, "version", path, str, 'an atlas version such as "1.2"', default="")
    orientation = c.typed(raw, "orientation", path, str, 'a BrainGlobe orientation code such as "asr"', default="")
    if bool(url) == bool(name):
        c.add(path, f'expected either url = "..." (atlas files) or name = "..." (an installed BrainGlobe atlas), '
                    f"got {'both' if url else 'neither'}")  # fmt: skip
    if version and not name:
        c.add(f"{path}.version", f'version goes with name = "..." (a BrainGlobe atlas), got {version!r} alone')
    if orientation and orientation_problem(orientation):
        c.add(f"{path}.orientation", str(orientation_problem(orientation)))
    if orientation and "transpose" in raw:
        c.add(f"{path}.transpose", "expected transpose or orientation, not both (orientation sets the axes and flips)")
    structures = c.typed(raw, "structures", path, str, "a structure table (CSV or BrainGlobe JSON)", default="")
    hemispheres = c.typed(raw, "hemispheres", path, str, "a hemisphere label volume", default="")
    values = raw.get("hemisphere_values", {"left": 1, "right": 2})
    left_right = (1, 2)
    if (
        not isinstance(values, dict)
        or set(values) != {"left", "right"}
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values())
        or values["left"] == values["right"]
    ):
        c.add(
            f"{path}.hemisphere_values", f"expected {{ left = 1, right = 2 }} (two different integers), got {values!r}"
        )
    else:
        left_right = (values["left"], values["right"])
    scale = _float_list(raw["scale"], f"{path}.scale", c, True) if "scale" in raw else None
    translation = _float_list(raw["translation"], f"{path}.translation", c, False) if "translation" in raw else None
    transpose: tuple[int, ...] = (0, 1, 2)
    if "transpose" in raw:
        axes = raw["transpose"]
        ints = isinstance(axes, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in axes)
        if ints and sorted(axes) == [0, 1, 2]:
            transpose = tuple(axes)
        else:
            c.add(f"{path}.transpose", f"expected the file axes that become z, y, x, e.g. [2, 1, 0], got {axes!r}")
    chunks = c.int_list(raw["chunks"], f"{path}.chunks", 3, 1) if "chunks" in raw else None
    if bool(url) == bool(name):
        return None
    return AtlasSpec(
        resolve_path(url, base) if url else "",
        resolve_path(structures, base) if structures else "",
        resolve_path(hemispheres, base) if hemispheres else "",
        left_right,
        scale,  # type: ignore[arg-type]
        translation,  # type: ignore[arg-type]
        transpose,  # type: ignore[arg-type]
        chunks or AtlasSpec.chunks,  # type: ignore[arg-type]
        name,
        version,
        orientation.lower(),
    )


def _parse_inputs(raw: Any, c: Collector, base: Path) -> tuple[tuple[str, AtlasSpec], ...]:
    if not isinstance(raw, dict):
        c.add("inputs", f'expected tables [inputs.NAME] with kind = "atlas", got {raw!r}')
        return ()
    out = []
    for name, body in raw.items():
        if name == INPUT:
            c.add(f"inputs.{name}", f"`{INPUT}` is the raw image's name ([input]); choose another name")
            continue
        atlas = _parse_atlas(name, body, c, base)
        if atlas is not None:
            out.append((name, atlas))
    return tuple(out)


def _parse_outputs(raw: Any, c: Collector, base: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``node = "path"``, ``node = { path = "...", format = "..." }`` or a list of those."""
    outputs: list[tuple[str, str]] = []
    formats: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        c.add("outputs", f'expected a table node = "path", got {raw!r}')
        return outputs, formats
    for node_name, value in raw.items():
        path = f"outputs.{node_name}"
        for target in value if isinstance(value, list) else [value]:
            fmt = ""
            if isinstance(target, dict):
                c.unknown_keys(target, ["path", "format"], path)
                fmt = target.get("format", "")
                if fmt not in OUTPUT_FORMATS:
                    c.add(f"{path}.format", f"expected one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
                target = target.get("path")
            if not isinstance(target, str) or not target:
                c.add(path, f'expected a file path (string) or {{ path = "...", format = "..." }}, got {target!r}')
            elif "://" in target and not target.startswith("file://"):
                c.add(path, f"expected a local file path (outputs are local files), got {target!r}")
            else:
                resolved = resolve_path(target.removeprefix("file://"), base)
                outputs.append((node_name, resolved))
                if fmt:
                    formats.append((resolved, fmt))
    return outputs, formats


def _parse_node(name: str, raw: Any, c: Collector, base: Path) -> NodeSpec | None:
    path = f"nodes.{name}"
    if not isinstance(raw, dict):
        c.add(path, f'expected a table [nodes.{name}] with op = "...", got {raw!r}')
        return None
    if name == INPUT:
        c.add(path, f"`{INPUT}` is the raw image's name; choose another node name")
        return None
    known = known_ops()
    opname = c.typed(raw, "op", path, str, f"an op name ({', '.join(known)})", required=True)
    if opname is None:
        return None
    if opname not in known:
        hint = difflib.get_close_matches(opname, known, n=1)
        maybe = f" (did you mean `{hint[0]}`?)" if hint else ""
        c.add(f"{path}.op", f"unknown op {opname!r}{maybe}; known ops: {', '.join(known)}")
        return None
    opdef = get_op(opname)
    reserved = ["op", "cache", "store", "view"]
    ports = [p.name for p in opdef.inputs]
    params = [p.name for p in opdef.params]
    c.unknown_keys(raw, reserved + ports + params, path)
    inputs = []
    for port in opdef.inputs:
        if port.name not in raw:
            if not port.optional:
                c.add(f"{path}.{port.name}", f'missing input `{port.name}`; expected the name of a node or "{INPUT}"')
            continue
        source = raw[port.name]
        if not isinstance(source, str) or not source:
            c.add(f"{path}.{port.name}", f'expected the name of a node or "{INPUT}", got {source!r}')
            continue
        inputs.append((port.name, source))
    given = []
    for p in opdef.params:
        if p.name not in raw:
            if p.required:
                c.add(f"{path}.{p.name}", f"missing parameter `{p.name}`; expected {p.describe()}")
            continue
        ok, value = check_param(p, raw[p.name])
        problem = None if not ok else (opdef.checks[p.name](value) if p.name in opdef.checks else None)
        if not ok or problem:
            c.add(f"{path}.{p.name}", f"expected {problem or p.describe()}, got {raw[p.name]!r}")
            continue
        given.append((p.name, resolve_path(value, base) if p.name in opdef.paths else value))
    cache = c.typed(raw, "cache", path, bool, "true or false", default=True)
    store = _parse_store(raw["store"], c, f"{path}.store") if "store" in raw else StoreSpec()
    given_compressor = isinstance(raw.get("store"), dict) and "compressor" in raw["store"]
    if not given_compressor and opdef.output in (PortType.Mask, PortType.Labels):
        store = replace(store, compressor=SPARSE_COMPRESSOR)  # mostly zeros: a fast codec loses little
    view = raw.get("view", {})
    if not isinstance(view, dict):
        c.add(f"{path}.view", f"expected a table of display options, got {view!r}")
        view = {}
    return NodeSpec(name, opname, tuple(inputs), Params(given), cache, store, tuple(sorted(view.items())))


def _parse_plugins(raw: Any, c: Collector, base: Path) -> tuple[str, ...]:
    """Import the plugin modules a spec names, before its nodes are checked against the registry."""
    if not isinstance(raw, list) or not all(isinstance(m, str) and m for m in raw):
        c.add("plugins", f'expected a list of module names such as ["lab_ops"], got {raw!r}')
        return ()
    for module in raw:
        if problem := import_plugin(module, base):
            c.add("plugins", problem)
    return tuple(raw)


def parse_spec(text: str, path: str = "<spec>") -> Spec:
    """Parse and validate spec text; raise :class:`SpecError` listing every problem."""
    return spec_from_raw(load_toml(text, path), path, locate_fields(text))


def load_toml(text: str, path: str) -> dict[str, Any]:
    """TOML text as a dict, or a :class:`SpecError` naming the line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise SpecError([Problem(path, int(m.group(1)) if m else None, "toml", f"not valid TOML: {exc}")]) from None


def spec_from_raw(raw: dict[str, Any], path: str = "<spec>", locations: Mapping[str, int] | None = None) -> Spec:
    """Validate a spec given as the dict its TOML parses to (``path`` names it in problems, and
    relative paths are resolved against its folder; ``locations`` maps fields to lines)."""

    locations = dict(locations or {})
    c = Collector(path, locations)
    base = Path(path).resolve().parent if path != "<spec>" else Path.cwd()
    c.unknown_keys(raw, ["plugins", "input", "inputs", "nodes", "cache", "cluster", "outputs", "tune"], "")
    plugins = _parse_plugins(raw.get("plugins", []), c, base)
    inp = _parse_input(raw.get("input"), c, base)
    atlases = _parse_inputs(raw.get("inputs", {}), c, base)
    for name, _ in atlases:
        if isinstance(raw.get("nodes"), dict) and name in raw["nodes"]:
            c.add(f"nodes.{name}", f"`{name}` is already the name of an input ([inputs.{name}]); choose another")
    nodes_raw = raw.get("nodes", {})
    nodes = []
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        c.add("nodes", 'expected at least one [nodes.NAME] table with op = "..."')
    else:
        for name, body in nodes_raw.items():
            node = _parse_node(name, body, c, base)
            if node is not None:
                nodes.append(node)
    cache_raw = raw.get("cache", {})
    cache_url = ""
    if isinstance(cache_raw, dict):
        c.unknown_keys(cache_raw, ["url"], "cache")
        cache_url = c.typed(cache_raw, "url", "cache", str, "a folder path or fsspec URL", default="cache")
        if not cache_url.strip():
            c.add("cache.url", "expected a folder path or fsspec URL, got an empty string")
    else:
        c.add("cache", f'expected a table with url = "...", got {cache_raw!r}')
    cluster = parse_cluster(raw.get("cluster", {}), c)
    outputs, formats = _parse_outputs(raw.get("outputs", {}), c, base)
    source = os.path.realpath(path) if path != "<spec>" else None
    target_problems(outputs, protected(inp, atlases, resolve_path(cache_url or "cache", base)), source, c.add)
    # the graph is checked even when the input is unusable, so that every problem is reported at once
    spec = Spec(
        path,
        inp or InputSpec(""),
        tuple(nodes),
        resolve_path(cache_url or "cache", base),
        cluster,
        tuple(outputs),
        locations,
        plugins,
        atlases,
        tuple(formats),
    )
    declared = {n for n in (nodes_raw if isinstance(nodes_raw, dict) else {}) if n != INPUT}
    problems = c.problems + graph_problems(spec, declared)
    if problems:
        raise SpecError(problems)
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read, parse and validate a spec file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([Problem(str(path), None, "file", f"cannot read the spec: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise SpecError([Problem(str(path), line, "file", f"byte {exc.start} ({exc.object[exc.start]:#04x}) is "
                                 "not UTF-8 text; expected a TOML spec (UTF-8 text)")]) from None  # fmt: skip
    return parse_spec(text, str(p))
