"""`cvplgraph tune`: search a spec's free parameters against annotated cells, write the best spec.

The free parameters come from the command or from the spec's ``[tune]`` table, in three forms::

    --param mask.level=0.2,0.3,0.4        "mask.level" = [0.2, 0.3, 0.4]                  values (a grid axis)
    --param mask.level=0.1:0.5:5          "mask.level" = { from = 0.1, to = 0.5, steps = 5 }  evenly spaced values
    --param cells.threshold=2..12:log     "cells.threshold" = { low = 2, high = 12, log = true }  a range
    --param blobs.num_sigma=3..10:int     "blobs.num_sigma" = { low = 3, high = 10, int = true }

Values only: every combination is tried (grid search). Any range: an adaptive search of ``trials``
trials, a batch at a time (:mod:`cvplgraph.bench.search`: sweeps of each parameter, a pattern
search around the best, then Optuna's TPE sampler), which widens a range whose end the best trial
sits at (within :data:`~cvplgraph.bench.ranges.EDGE` of its width), as far as the op's own checks
allow.

Each trial is a variant of a :mod:`cvplgraph.bench.run` suite whose datasets are the annotated
crops (``--truth``/``--crop`` pairs), so the steps trials share (reading, smoothing, a mask two
trials agree on) are computed once, through the spec's own cache. A trial is scored on all crops
together (pooled tp/fp/fn), and first on a small probe (the centre of the first crop) when that
saves time: a trial whose probe count, extrapolated to the crops, exceeds ``budget`` detections
per true cell is marked ``flooded`` and not run further. The best trial (highest objective; ties:
smallest count error, then the first) is written beside the spec as ``<name>.tuned.toml``; every
trial's points and a ``trials.csv`` go to ``<name>-tune/``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cvplgraph.bench.ranges import (
    Range,
    Space,
)
from cvplgraph.bench.run import Score, run_suite
from cvplgraph.bench.search import adaptive, rank, start_values
from cvplgraph.bench.space import check_space, grid_from_table, value_problem
from cvplgraph.bench.suite import Dataset, Suite, Variant
from cvplgraph.bench.trials import Trial, leave_one_out, pool, trial_line, trial_table, tuned_text
from cvplgraph.errors import CvplError
from cvplgraph.spec.model import AXES, Spec
from cvplgraph.spec.parse import load_spec, load_toml

#: Fewest voxels per axis of the probe a trial runs on first.
PROBE_MIN = 32



@dataclass
class TuneResult:
    best: Score  # the best trial's pooled score
    values: dict[tuple[str, str], Any]  # the best trial's parameter values
    scores: list[Score]  # every trial's pooled score, in trial order
    trials_to_best: int  # 1-based number of the best trial
    spec: Path | None  # the tuned spec written (None when the best F1 is 0)
    trials: list[Trial] = field(default_factory=list)
    search: str = "grid"
    folder: Path | None = None  # <name>-tune: trials.csv, trials/NNNN.csv
    crops: list[str] = field(default_factory=list)
    cv: list[tuple[str, int, Score]] = field(default_factory=list)  # held-out crop, trial chosen, its score there
    computed: list[str] = field(default_factory=list)  # merged nodes computed (not read from the cache), every run


@dataclass(frozen=True)
class Crop:
    name: str
    truth: str
    box: tuple[int, ...] | None  # z0 z1 y0 y1 x0 x1 (voxels, stop exclusive); None: the whole input
    source: dict[str, Any]  # the [input] table
    true: int  # annotated cells inside
    voxels: int


def scored_points(spec: Spec, spec_path: Path, points: str | None) -> str:
    """The node whose points are scored: ``--points``, else the spec's only Points node."""
    from cvplgraph.registry import get_op
    from cvplgraph.types import PortType

    names = [n.name for n in spec.nodes]
    if points is not None:
        if points not in names:
            raise CvplError(f"{spec_path}: --points {points}: no such node (nodes: {', '.join(names)})")
        return points
    found = [n.name for n in spec.nodes if get_op(n.op).output is PortType.Points]
    if len(found) != 1:
        raise CvplError(f"{spec_path} has {len(found)} Points nodes ({', '.join(found) or 'none'}); "
                        "say which to score with --points NODE")  # fmt: skip
    return found[0]


def pair_crops(truths: Sequence[str], crops: Sequence[tuple[int, ...] | None]) -> list[tuple[str, Any]]:
    """(truth, crop) pairs: crops in order, one crop for all truths, or the whole input."""
    if not truths:
        raise CvplError("--truth: expected at least one file of true cell centres")
    if len(crops) == 1:
        return [(t, crops[0]) for t in truths]
    if len(crops) > len(truths):
        raise CvplError(f"--crop given {len(crops)} times for {len(truths)} --truth: expected one --crop per "
                        "--truth (in order), or one for all")  # fmt: skip
    return [(t, crops[i] if i < len(crops) else None) for i, t in enumerate(truths)]


def parse_objective(text: str) -> tuple[str, float | None]:
    """``f1`` → ("f1", None); ``recall@K`` → ("recall", K)."""
    found = re.fullmatch(r"\s*(f1|recall@([0-9.eE+]+))\s*", text or "")
    try:
        k = float(found.group(2)) if found and found.group(2) else None
    except ValueError:
        found = None
    if not found or (k is not None and not (math.isfinite(k) and k > 0)):
        raise CvplError(f"--objective {text!r}: expected f1, or recall@K (recall with at most K detections "
                        "per true cell, such as recall@5)")  # fmt: skip
    return ("recall", k) if k is not None else ("f1", None)


# --------------------------------------------------------------------------- the search


def tune(
    spec_path: str | Path,
    truth: str | Sequence[str],
    *,
    params: Space | None = None,
    crop: Sequence[int] | Sequence[Sequence[int] | None] | None = None,
    points: str | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    tolerance_um: float | tuple[float, float, float] | None = None,
    search: str | None = None,
    trials: int = 24,
    timeout: float | None = None,
    seed: int = 0,
    batch: int = 4,
    objective: str = "f1",
    budget: float | None = 20.0,
    probe: float = 0.125,
    cv: bool = False,
    scheduler: str | None = "threads",
    progress: bool = False,
    log: Any = print,
) -> TuneResult:
    """Search the free parameters on the annotated crops; write the best spec and every trial.

    ``truth`` and ``crop`` pair up (see :func:`pair_crops`); ``search`` is "grid", "adaptive" or
    None (adaptive when any parameter is a :class:`Range`); ``trials``, ``timeout`` (seconds,
    checked between batches), ``seed`` and ``batch`` (trials per suite run) steer the adaptive
    search; ``objective`` is "f1" or "recall@K"; ``budget`` is the most detections per true cell
    before a trial counts as flooded (None: no limit); ``probe`` the fraction of the first crop's
    voxels a trial runs on first (0: no probe); ``cv`` adds a leave-one-crop-out report.
    ``log`` gets one line per finished trial; ``progress`` also shows the runs' bars and logs.
    """
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)  # the spec must be valid as it stands
    text = spec_path.read_text(encoding="utf-8")
    raw = load_toml(text, str(spec_path))
    space = params or grid_from_table(raw.get("tune", {}), str(spec_path))
    if not space:
        raise CvplError(f"{spec_path}: nothing to tune: give --param node.parameter=… or a [tune] table")
    check_space(spec, spec_path, space)
    scored = scored_points(spec, spec_path, points)
    goal, k = parse_objective(objective)
    ranges = any(isinstance(v, Range) for v in space.values())
    search = search or ("adaptive" if ranges else "grid")
    if search not in ("grid", "adaptive"):
        raise CvplError(f"--search {search!r}: expected grid or adaptive")
    if search == "grid" and ranges:
        named = next(f"{n}.{p}={v}" for (n, p), v in space.items() if isinstance(v, Range))
        raise CvplError(f"--search grid: {named} is a range; give values (v1,v2,… or start:stop:count)")
    if trials < 1 or batch < 1:
        raise CvplError(f"--trials {trials}, --batch {batch}: expected numbers ≥ 1")

    truths = [truth] if isinstance(truth, (str, Path)) else list(truth)
    given: list[Any] = [None] if crop is None else list(crop)
    boxes = [tuple(given)] if given and all(isinstance(c, (int, np.integer)) for c in given) else given
    for box in boxes:
        if box is not None and len(box) != 6:
            raise CvplError(f"--crop {list(box)}: expected six voxel bounds Z0 Z1 Y0 Y1 X0 X1")
    crops = _crops(spec, raw, pair_crops([str(t) for t in truths], boxes), voxel_size)
    folder = spec_path.parent / f"{spec_path.stem}-tune"
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    for old in (folder / "trials").glob("[0-9][0-9][0-9][0-9].csv"):
        old.unlink()
    true_total = sum(c.true for c in crops)
    limit = budget * max(true_total, 1) if budget is not None else None
    probe_crop = _probe(crops[0], spec, probe) if limit is not None and probe > 0 else None

    runner = _Runner(spec_path, scored, crops, probe_crop, limit, goal, k, tolerance_um, voxel_size, folder,
                     spec.cache_url, scheduler, progress, log)  # fmt: skip
    where = " and ".join(f"{c.name} ({c.truth}, {c.true} true)" for c in crops)
    if search == "grid":
        keys = list(space)
        combos = list(itertools.product(*space.values()))  # type: ignore[arg-type]
        log(f"tuning {' × '.join(f'{n}.{p} ({len(v)})' for (n, p), v in space.items())} = {len(combos)} trials "  # type: ignore[arg-type]
            f"(grid) on {where}")  # fmt: skip
        runner.run([dict(zip(keys, combo)) for combo in combos], len(combos))
    else:
        log(f"tuning {', '.join(f'{n}.{p} in {v}' for (n, p), v in space.items())}: {trials} trials (adaptive, "
            f"seed {seed}) on {where}")  # fmt: skip
        problems = {key: value_problem(spec, *key) for key, v in space.items() if isinstance(v, Range)}
        adaptive(runner, space, start_values(space), problems, trials, timeout, seed, batch, log)
    done = runner.trials

    if not any(t.flooded for t in done) and all(t.pooled.found == 0 for t in done):
        raise CvplError(f"{spec_path}: none of the {len(done)} trials found a cell in {where}; try other values "
                        f"(a lower threshold, a wider range), check that the crop holds cells and that {scored} "
                        "is the node to score (--points NODE)")  # fmt: skip
    best = rank(done)[0]
    _write_trials(folder, done, list(space), crops)
    result = TuneResult(best.pooled, best.values, [t.pooled for t in done], best.number, None, done, search, folder,
                        [c.name for c in crops], computed=runner.computed)  # fmt: skip
    if cv and len(crops) > 1:
        result.cv = leave_one_out(done, [c.name for c in crops], goal, k)
    elif cv:
        log("--cv: one crop only, nothing to hold out (give --truth/--crop pairs)")
    if all(t.flooded for t in done):
        log(f"warning: every trial flooded (more than {budget:g} detections per true cell); no tuned spec written "
            "(try higher thresholds, or a larger --budget)")  # fmt: skip
        return result
    if best.objective <= 0 or not best.pooled.tp:
        log(f"warning: the best {'F1' if goal == 'f1' else f'recall@{k:g}'} is 0: no trial matched a true cell "
            "within the tolerance; no tuned spec written (check --voxel-size, --tolerance, and that the truth "
            "lies in the crop)")  # fmt: skip
        return result
    out = spec_path.with_name(f"{spec_path.stem}.tuned.toml")
    described = ", ".join(f"{c.truth}" + (f" crop {list(c.box)}" if c.box else "") for c in crops)
    out.write_text(tuned_text(text, best.values, best.pooled, described, None, search), encoding="utf-8")
    result.spec = out
    return result


def _crops(spec: Spec, raw: dict[str, Any], pairs: list[tuple[str, Any]], voxel_size: Any) -> list[Crop]:
    """Each (truth, crop) pair as a dataset input, with its true cells counted (a bad file fails here)."""
    from cvplgraph.bench.run import inside
    from cvplgraph.bench.truth import read_points
    from cvplgraph.io.stores import read_input
    from cvplgraph.values import Geometry

    out = []
    for i, (truth, box) in enumerate(pairs):
        source = dict(raw["input"])
        inp = spec.input
        if box is not None:
            source["crop"] = {axis: [int(box[2 * a]), int(box[2 * a + 1])] for a, axis in enumerate(AXES)}
            inp = replace(inp, crop=tuple((int(box[2 * a]), int(box[2 * a + 1])) for a in range(3)))
        image = read_input(inp)
        cells = inside(read_points(truth, voxel_size=voxel_size), Geometry.of(image))
        name = f"crop{i + 1}" if len(pairs) > 1 else "crop"
        out.append(Crop(name, truth, tuple(box) if box is not None else None, source, len(cells),
                        int(np.prod(image.shape))))  # fmt: skip
    return out


def _probe(first: Crop, spec: Spec, fraction: float) -> Crop | None:
    """The centre of the first crop holding about ``fraction`` of its voxels (at least
    :data:`PROBE_MIN` voxels per axis, so that filters' halos fit); None when that is not smaller
    than the crop (nothing to save)."""
    from cvplgraph.io.stores import read_input

    if first.box is not None:
        box = [(first.box[2 * a], first.box[2 * a + 1]) for a in range(3)]
    else:
        whole = spec.input.crop or [(0, n) for n in read_input(replace(spec.input, crop=None)).shape]
        box = list(whole)
    side = fraction ** (1 / 3)
    inner = []
    for start, stop in box:
        n = stop - start
        m = min(n, max(PROBE_MIN, int(round(n * side))))
        inner.append((start + (n - m) // 2, start + (n - m) // 2 + m))
    voxels = int(np.prod([b - a for a, b in inner]))
    if voxels >= first.voxels:
        return None
    source = {**first.source, "crop": {axis: list(inner[a]) for a, axis in enumerate(AXES)}}
    return Crop("probe", first.truth, tuple(v for pair in inner for v in pair), source, 0, voxels)


class _Runner:
    """Runs batches of trials (probe first, then every crop) and keeps them."""

    def __init__(self, spec_path: Path, scored: str, crops: list[Crop], probe: Crop | None, limit: float | None,
                 goal: str, k: float | None, tolerance: Any, voxel_size: Any, folder: Path, cache_url: str,
                 scheduler: str | None, progress: bool, log: Any) -> None:  # fmt: skip
        self.spec_path, self.scored, self.crops, self.probe, self.limit = spec_path, scored, crops, probe, limit
        self.goal, self.k, self.tolerance, self.voxel_size, self.folder = goal, k, tolerance, voxel_size, folder
        self.cache_url, self.scheduler, self.progress, self.log = cache_url, scheduler, progress, log
        self.trials: list[Trial] = []
        self.computed: list[str] = []
        self.true = sum(c.true for c in crops)
        self.voxels = sum(c.voxels for c in crops)

    def _suite(self, crops: list[Crop], variants: list[Variant]) -> Suite:
        datasets = tuple(Dataset(c.name, c.source, truth=c.truth, voxel_size=self.voxel_size,
                                 tolerance_um=self.tolerance) for c in crops)  # fmt: skip
        return Suite(str(self.spec_path), datasets, tuple(variants), self.folder, self.cache_url)

    def _quiet(self, *_: Any) -> None:
        return None

    def run(self, batch: list[dict[tuple[str, str], Any]], total: int) -> list[Trial]:
        """Run a batch of parameter sets as trials numbered after the ones before."""
        start = len(self.trials)
        variants = []
        for i, values in enumerate(batch):
            label = ", ".join(f"{n}.{p}={v}" for (n, p), v in values.items())
            chosen = tuple((n, p, v) for (n, p), v in values.items())
            variants.append(Variant(f"trial {start + i + 1} ({label})", self.spec_path, chosen, self.scored))
        say = self.log if self.progress else self._quiet
        flooded: dict[str, Score] = {}
        seconds: dict[str, float] = {v.name: 0.0 for v in variants}
        ratio = self.voxels / self.probe.voxels if self.probe is not None else 1.0  # crops' voxels per probe voxel
        if self.probe is not None and self.limit is not None:
            try:
                scores, runs = run_suite(self._suite([self.probe], variants), scheduler=self.scheduler,
                                         progress=self.progress, log=say, keep_points=True)  # fmt: skip
                self.computed += [n for r in runs for n in r.computed]
            except (ValueError, CvplError) as exc:  # such as a filter's halo larger than the probe
                self.log(f"the probe ({self.probe.voxels} voxels) cannot run this spec ({exc}); "
                         "trials run on the crops only")  # fmt: skip
                self.probe, scores = None, []
            for score in scores:
                seconds[score.variant] += score.seconds_total
                if score.found * ratio > self.limit:
                    flooded[score.variant] = score
        todo = [v for v in variants if v.name not in flooded]
        per_crop: dict[str, dict[str, Score]] = {v.name: {} for v in todo}
        if todo:
            scores, runs = run_suite(self._suite(self.crops, todo), scheduler=self.scheduler,
                                     progress=self.progress, log=say, keep_points=True)  # fmt: skip
            self.computed += [n for r in runs for n in r.computed]
            for score in scores:
                per_crop[score.variant][score.dataset] = score
                seconds[score.variant] += score.seconds_total
        done = []
        for i, (variant, values) in enumerate(zip(variants, batch)):
            if variant.name in flooded:
                probe = flooded[variant.name]
                # counts extrapolated from the probe; no scores (objective 0)
                pooled = Score("all", variant.name, int(round(probe.found * ratio)), true=self.true)
                trial = Trial(start + i + 1, values, {}, pooled, flooded=True, seconds=seconds[variant.name])
                points = {"probe": probe}
            else:
                crops = per_crop[variant.name]
                trial = Trial(start + i + 1, values, crops, pool(list(crops.values()), variant.name),
                              seconds=seconds[variant.name])  # fmt: skip
                trial.flooded = self.limit is not None and trial.pooled.found > self.limit
                points = crops
            trial.objective = self._objective(trial)
            self._write_points(trial, points)
            self.log(trial_line(trial, total, self.goal, self.k))
            done.append(trial)
        self.trials += done
        return done

    def _objective(self, trial: Trial) -> float:
        if trial.flooded:
            return 0.0
        if self.goal == "recall":
            budget = math.inf if self.k is None else self.k * max(self.true, 1)
            if trial.pooled.found > budget:
                trial.over_budget = True
                return 0.0
            return float(trial.pooled.recall or 0.0)
        return float(trial.pooled.f1 or 0.0)

    def _write_points(self, trial: Trial, scores: dict[str, Score]) -> None:
        import pandas as pd

        parts = [s.points.assign(crop=name) for name, s in scores.items() if s.points is not None]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["z_um", "y_um", "x_um", "crop"])
        frame.to_csv(self.folder / "trials" / f"{trial.number:04d}.csv", index=False)
        for score in scores.values():
            score.points = None  # written; not kept in memory


def _write_trials(folder: Path, trials: list[Trial], keys: list[tuple[str, str]], crops: list[Crop]) -> None:
    trial_table(trials, keys, [c.name for c in crops]).to_csv(folder / "trials.csv", index=False)
