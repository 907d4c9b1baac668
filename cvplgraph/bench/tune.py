"""`cvplgraph tune`: search a spec's free parameters against annotated cells, write the best spec.

The free parameters come from the command (``--param mask.level=0.2,0.3,0.4`` or
``--param mask.level=0.1:0.5:5``, five values from 0.1 to 0.5) or from the spec's ``[tune]``
table::

    [tune]
    "mask.level" = [0.2, 0.25, 0.3]
    "cells.connectivity" = { from = 6, to = 26, steps = 2 }

Every combination (a grid) is one variant of a :mod:`cvplgraph.bench.run` suite with one dataset —
the spec's input, cropped with ``--crop`` — so all trials run as one graph in which the steps
they share (reading, smoothing, a mask two trials agree on) are computed once, through the spec's
own cache. The best trial (highest F1; ties: smallest count error, then the first) is written
beside the spec as ``<name>.tuned.toml`` with its score in a header comment.
"""

from __future__ import annotations

import datetime
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvplgraph.bench.run import Score, run_suite
from cvplgraph.bench.suite import Dataset, Suite, Variant, split_node_param
from cvplgraph.errors import CvplError
from cvplgraph.spec.fields import locate_fields
from cvplgraph.spec.model import AXES
from cvplgraph.spec.parse import load_spec, load_toml

#: A free parameter: (node, parameter) → the values to try.
Grid = dict[tuple[str, str], list[Any]]


@dataclass
class TuneResult:
    best: Score
    values: dict[tuple[str, str], Any]  # the best trial's parameter values
    scores: list[Score]  # every trial, in grid order
    trials_to_best: int  # 1-based position of the best trial in the grid order
    spec: Path  # the tuned spec written


def parse_param(text: str) -> tuple[tuple[str, str], list[Any]]:
    """``node.param=v1,v2,…`` or ``node.param=start:stop:count`` (inclusive, evenly spaced)."""
    name, sep, values = text.partition("=")
    if not sep or not values.strip():
        raise CvplError(f"--param {text!r}: expected node.parameter=v1,v2,… or node.parameter=start:stop:count")
    try:
        node, param = split_node_param(name)
    except ValueError as exc:
        raise CvplError(f"--param {text!r}: {exc}") from None
    if values.count(":") == 2:
        start, stop, count = values.split(":")
        try:
            return (node, param), _steps(float(start), float(stop), int(count))
        except ValueError:
            raise CvplError(f"--param {text!r}: expected numbers in start:stop:count, count ≥ 1") from None
    return (node, param), [_value(v.strip()) for v in values.split(",")]


def _steps(start: float, stop: float, count: int) -> list[Any]:
    if count < 1:
        raise ValueError
    values = np.linspace(start, stop, count).tolist()
    if float(start).is_integer() and float(stop).is_integer() and all(float(v).is_integer() for v in values):
        return [int(v) for v in values]
    return [round(v, 10) for v in values]


def _value(text: str) -> Any:
    """A command-line value as TOML would read it (number, boolean, else the string)."""
    try:
        return load_toml(f"v = {text}", "--param")["v"]
    except CvplError:
        return text


def grid_from_table(table: Any, where: str) -> Grid:
    """The free parameters of a spec's ``[tune]`` table."""
    if not isinstance(table, dict):
        raise CvplError(f'{where}: [tune]: expected a table of "node.parameter" = [values], got {table!r}')
    grid: Grid = {}
    for key, values in table.items():
        try:
            node, param = split_node_param(key)
        except ValueError as exc:
            raise CvplError(f"{where}: tune.{key}: {exc}") from None
        if isinstance(values, dict) and set(values) == {"from", "to", "steps"}:
            try:
                values = _steps(float(values["from"]), float(values["to"]), int(values["steps"]))
            except (TypeError, ValueError):
                values = None
        if not isinstance(values, list) or not values:
            raise CvplError(
                f'{where}: tune.{key}: expected "node.parameter" = [values] or {{ from, to, steps }}, got {values!r}'
            )
        grid[(node, param)] = values
    return grid


def tune(
    spec_path: str | Path,
    truth: str,
    *,
    params: Grid | None = None,
    crop: tuple[int, ...] | None = None,
    points: str | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    tolerance_um: float | None = None,
    scheduler: str | None = "threads",
    progress: bool = False,
    log: Any = print,
) -> TuneResult:
    """Score every combination of the free parameters on the (cropped) input; write the best spec."""
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)  # the spec must be valid as it stands
    text = spec_path.read_text(encoding="utf-8")
    raw = load_toml(text, str(spec_path))
    grid = params or grid_from_table(raw.get("tune", {}), str(spec_path))
    if not grid:
        raise CvplError(f"{spec_path}: nothing to tune: give --param node.parameter=… or a [tune] table")
    nodes = {n.name for n in spec.nodes}
    for node, param in grid:
        if node not in nodes:
            raise CvplError(f"{spec_path}: cannot tune {node}.{param}: no node {node!r} (nodes: {', '.join(nodes)})")
    source = dict(raw["input"])
    if crop is not None:
        source["crop"] = {axis: [crop[2 * i], crop[2 * i + 1]] for i, axis in enumerate(AXES)}
    keys = list(grid)
    variants = []
    for combination in itertools.product(*grid.values()):
        label = ", ".join(f"{node}.{param}={value}" for (node, param), value in zip(keys, combination))
        chosen = tuple((node, param, value) for (node, param), value in zip(keys, combination))
        variants.append(Variant(label, spec_path, chosen, points))
    dataset = Dataset("tune", source, truth=str(truth), voxel_size=voxel_size, tolerance_um=tolerance_um)
    suite = Suite(str(spec_path), (dataset,), tuple(variants), spec_path.parent / f"{spec_path.stem}-tune",
                  spec.cache_url)  # fmt: skip
    log(f"tuning {' × '.join(f'{n}.{p} ({len(v)})' for (n, p), v in grid.items())} = {len(variants)} trials")
    scores, _ = run_suite(suite, scheduler=scheduler, progress=progress, log=log)
    ranked = sorted(range(len(scores)), key=lambda i: (-(scores[i].f1 or 0.0), abs(scores[i].count_error or 0), i))
    best = ranked[0]
    values = {(node, param): value for node, param, value in variants[best].overrides}
    out = spec_path.with_name(f"{spec_path.stem}.tuned.toml")
    out.write_text(tuned_text(text, values, scores[best], truth, crop), encoding="utf-8")
    return TuneResult(scores[best], values, scores, best + 1, out)


def tuned_text(
    text: str, values: dict[tuple[str, str], Any], score: Score, truth: str, crop: tuple[int, ...] | None
) -> str:
    """The spec text with the chosen values set and its score in a header comment."""
    lines = text.splitlines()
    where = locate_fields(text)
    for (node, param), value in values.items():
        line = where.get(f"nodes.{node}.{param}")
        if line is not None:
            found = re.match(r"^(\s*[\w\"']+\s*=\s*)([^#]*?)(\s*(#.*)?)$", lines[line - 1])
            if found is None:
                raise CvplError(f"cannot place {node}.{param} in the spec text (line {line})")
            lines[line - 1] = found.group(1) + toml_value(value) + (found.group(3) or "")
        elif (header := where.get(f"nodes.{node}")) is not None:
            lines.insert(header, f"{param} = {toml_value(value)}")
            where = locate_fields("\n".join(lines))
        else:
            raise CvplError(f"cannot place {node}.{param} in the spec text")
    stamp = datetime.date.today().isoformat()
    head = [
        f"# tuned by `cvplgraph tune` on {stamp} against {truth}" + (f", crop {list(crop)}" if crop else ""),
        f"# best of the grid: F1 {score.f1:.3f} (precision {score.precision:.3f}, recall {score.recall:.3f}), "
        f"{score.found} found of {score.true} true within {score.tolerance_um:g} µm",
        "# " + ", ".join(f"{node}.{param} = {toml_value(v)}" for (node, param), v in values.items()),
    ]
    return "\n".join(head + lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise CvplError(f"cannot write {value!r} as a TOML value")
