"""The adaptive search of `cvplgraph tune`: sweeps, a pattern search, then Optuna's TPE sampler.

A model-based sampler needs many trials before its model beats chance: with the dozen trials a user
gives two parameters, Optuna's TPE draws most of them at random. Detection parameters have a simple
landscape (a ridge of good F1 along the threshold and the cell size), which a structured search
climbs in a few batches:

1. **Sweeps.** Each parameter in turn, in the order given (the one that matters most first — a
   cell size before a threshold), at :data:`SWEEP` (1/8, 3/8, 5/8 and 7/8 of its range, in log
   space for a log range; every value of a list), the others at the best trial so far (at first
   the middle of their ranges).
2. **Pattern search** around the best trial: one batch of moves to the corners of a box (up to
   three ranges: every sign combination; more: one range at a time) whose half-width is
   :data:`STEP` of each range; a batch that improves the best re-centres the box and doubles it
   (up to :data:`MAX_STEP`), one that does not halves it.
3. **TPE.** When the pattern search has nothing new to offer (its moves fall within the values'
   rounding), Optuna's TPE sampler, seeded and told every trial so far, asks for the rest.

After every batch a range whose end holds the best trial is widened (within the op's checks), and
the moves that follow reach into the new part.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from cvplgraph.bench.ranges import EDGE, Range, Space, fraction_of, readable, value_at, widen

#: Where a sweep puts its trials, as fractions of the range.
SWEEP = (1 / 8, 3 / 8, 5 / 8, 7 / 8)
#: The pattern search's first half-width, and its largest, as fractions of each range.
STEP = 1 / 8
MAX_STEP = 1 / 4
#: Below this half-width the pattern search has converged.
MIN_STEP = 1 / 512
#: Ranges up to this many are moved together (2^k corners); more are moved one at a time.
CORNERS_UP_TO = 3

Values = dict[tuple[str, str], Any]


class Trialish(Protocol):
    values: Values
    objective: float
    number: int


class Runner(Protocol):
    trials: list[Any]

    def run(self, batch: list[Values], total: int) -> list[Any]: ...


def rank(trials: list[Any]) -> list[Any]:
    """Best first: highest objective, then smallest count error, then the earliest."""
    return sorted(trials, key=lambda t: (-t.objective, abs(t.pooled.count_error or 0), t.number))


def start_values(space: Space) -> Values:
    """Where the search starts: the middle of each range (log space for a log range), the middle value
    of each list. (Not the spec's own values: those are what the user is tuning away from.)"""
    return {key: readable(value_at(w, 0.5), w) if isinstance(w, Range) else w[len(w) // 2] for key, w in space.items()}


class PatternSearch:
    """Proposals of steps 1 and 2 of the module docstring; ``None`` when it has nothing new."""

    def __init__(self, space: Space, start: Values) -> None:
        self.sweeps = list(space)
        self.start = dict(start)
        self.step = STEP
        self.best_before = -math.inf
        self.swept: dict[tuple[str, str], list[Values]] = {}  # each range's sweep, to place a parabola
        self.vertex_tried = False

    def propose(self, current: Space, trials: list[Any], seen: set[tuple[Any, ...]]) -> list[Values] | None:
        best = rank(trials)[0] if trials else None
        centre = dict(best.values) if best is not None else dict(self.start)
        while self.sweeps:
            key = self.sweeps.pop(0)
            where = current[key]
            values = [readable(value_at(where, f), where) for f in SWEEP] if isinstance(where, Range) else list(where)
            batch = [{**centre, key: v} for v in values]
            if isinstance(where, Range):
                self.swept[key] = batch
            if batch := _new(batch, seen):
                return batch
        if best is None:
            return None
        # grow after a batch that improved the best, shrink after one that did not
        improved = best.objective > self.best_before
        if improved and self.best_before > -math.inf:
            self.step = min(self.step * 2, MAX_STEP)
        elif not improved:
            self.step /= 2
        self.best_before = best.objective
        ranges = [k for k, w in current.items() if isinstance(w, Range)]
        first: list[Values] = []
        if not self.vertex_tried:  # the first pattern batch also tries where each sweep's parabola peaks
            self.vertex_tried = True
            vertex = _vertex(centre, current, self.swept, trials)
            first = [vertex] if vertex != centre else []
        while self.step >= MIN_STEP and ranges:
            moves = [_moved(centre, current, ranges, signs, self.step) for signs in _moves(len(ranges))]
            if batch := _new(first + moves, seen):
                return batch
            self.step /= 2
        return None


def _vertex(centre: Values, current: Space, swept: dict[tuple[str, str], list[Values]], trials: list[Any]) -> Values:
    """``centre`` with each swept range at the peak of the parabola through its sweep's best trial and
    the two around it (kept where the best is at an end of the sweep or the parabola opens upwards)."""
    score = {tuple(t.values.values()): t.objective for t in trials}
    out = dict(centre)
    for key, batch in swept.items():
        where = current[key]
        if not isinstance(where, Range):
            continue
        found = [score.get(tuple(v.values())) for v in batch]
        if any(s is None for s in found):
            continue
        # one point per distinct value (an int range's sweep may round two fractions to one value)
        points = sorted({fraction_of(where, v[key]): float(s) for v, s in zip(batch, found, strict=True)
                         if s is not None}.items())  # fmt: skip
        i = max(range(len(points)), key=lambda j: points[j][1])
        if i in (0, len(points) - 1):
            continue
        (x0, y0), (x1, y1), (x2, y2) = points[i - 1], points[i], points[i + 1]
        curvature = (y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)
        denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
        if curvature >= 0 or denominator == 0:
            continue
        # the vertex of the parabola through the three points
        numerator = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
        x = x1 - 0.5 * numerator / denominator
        out[key] = readable(value_at(where, min(max(x, x0), x2)), where)
    return out


def _moves(k: int) -> list[tuple[int, ...]]:
    """Sign vectors of the pattern: the 2^k corners up to CORNERS_UP_TO ranges, else ± each axis."""
    if k <= CORNERS_UP_TO:
        corners = list(itertools.product((-1, 1), repeat=k))
        return corners if k > 1 else [(-2,), (-1,), (1,), (2,)]  # one range: two distances each way
    return [tuple(s if i == j else 0 for i in range(k)) for j in range(k) for s in (-1, 1)]


def _moved(centre: Values, current: Space, ranges: list[tuple[str, str]], signs: tuple[int, ...],
           step: float) -> Values:  # fmt: skip
    """``centre`` moved by ``sign × step`` of each range's width (``ranges`` are keys of Range entries)."""
    out = dict(centre)
    for key, sign in zip(ranges, signs, strict=True):
        where = current[key]
        if not isinstance(where, Range):
            continue
        out[key] = readable(value_at(where, fraction_of(where, centre[key]) + sign * step), where)
    return out


def _new(batch: list[Values], seen: set[tuple[Any, ...]]) -> list[Values]:
    """The proposals not tried yet, each once."""
    out, keys = [], set(seen)
    for values in batch:
        key = tuple(values.values())
        if key not in keys:
            keys.add(key)
            out.append(values)
    return out


def adaptive(runner: Runner, space: Space, start: Values, problems: dict[tuple[str, str], Callable[[Any], str | None]],
             trials: int, timeout: float | None, seed: int, batch: int, log: Any) -> None:  # fmt: skip
    """Run up to ``trials`` trials through ``runner`` (``batch`` per suite run), as the module says."""
    current = dict(space)
    pattern: PatternSearch | None = PatternSearch(space, start)
    tpe: _Tpe | None = None  # once the pattern search has nothing new
    seen: set[tuple[Any, ...]] = set()
    began = time.monotonic()
    while len(runner.trials) < trials:
        if timeout is not None and runner.trials and time.monotonic() - began > timeout:  # one batch at least
            log(f"timeout: {timeout:g} s passed; stopped after {len(runner.trials)} trials")
            return
        proposals = pattern.propose(current, runner.trials, seen) if pattern is not None else None
        if proposals is None:
            if tpe is None:
                pattern, tpe = None, _Tpe(seed, runner.trials, current)
                log(f"pattern search converged after {len(runner.trials)} trials; TPE for the rest")
            proposals = tpe.ask(current, min(batch, trials - len(runner.trials)), seen)
            if not proposals:
                log(f"the search found nothing new to try after {len(runner.trials)} trials; stopped")
                return
        allowed = proposals[: trials - len(runner.trials)]
        for i in range(0, len(allowed), batch):
            if i and timeout is not None and time.monotonic() - began > timeout:
                log(f"timeout: {timeout:g} s passed; stopped after {len(runner.trials)} trials")
                return
            done = runner.run(allowed[i : i + batch], trials)
            seen.update(tuple(t.values.values()) for t in done)
            if tpe is not None:
                tpe.tell(done, current)
        _widen_at_edges(current, rank(runner.trials)[0], problems, log)


def _widen_at_edges(current: Space, best: Trialish, problems: dict[tuple[str, str], Callable[[Any], str | None]],
                    log: Any) -> None:  # fmt: skip
    """Widen each range whose end (within EDGE of its width) holds the best trial."""
    if best.objective <= 0:
        return
    for key, where in list(current.items()):
        if not isinstance(where, Range):
            continue
        at = fraction_of(where, best.values[key])
        for side, near in (("high", at >= 1 - EDGE), ("low", at <= EDGE)):
            if near and (wider := widen(where, side, problems[key])) is not None:
                log(f"{key[0]}.{key[1]}: the best so far ({best.values[key]}) lies at the {side} end of {where}; "
                    f"range widened to {wider}")  # fmt: skip
                where = current[key] = wider


class _Tpe:
    """Optuna's TPE sampler (seeded), told the trials so far, asking over the current ranges."""

    def __init__(self, seed: int, trials: list[Any], current: Space) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, constant_liar=True, multivariate=True)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.pending: dict[tuple[Any, ...], Any] = {}
        self.tell(trials, current)

    def tell(self, trials: list[Any], current: Space) -> None:
        import optuna

        for t in trials:
            key = tuple(t.values.values())
            if key in self.pending:
                self.study.tell(self.pending.pop(key), t.objective)
                continue
            params = {_name(k): v for k, v in t.values.items()}
            distributions = {_name(k): _distribution(w, t.values[k]) for k, w in current.items()}
            self.study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                           value=t.objective))  # fmt: skip

    def ask(self, current: Space, count: int, seen: set[tuple[Any, ...]]) -> list[Values]:
        import optuna

        distributions = {_name(k): _distribution(w) for k, w in current.items()}
        out: list[Values] = []
        for _ in range(4 * count):  # values already tried (after rounding) are asked again, a few times
            if len(out) == count:
                break
            trial = self.study.ask(distributions)
            values = {k: readable(trial.params[_name(k)], w) if isinstance(w, Range) else trial.params[_name(k)]
                      for k, w in current.items()}  # fmt: skip
            key = tuple(values.values())
            if key in seen or key in self.pending:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            self.pending[key] = trial
            out.append(values)
        return out


def _name(key: tuple[str, str]) -> str:
    return f"{key[0]}.{key[1]}"


def _distribution(where: list[Any] | Range, value: Any = None) -> Any:
    """Optuna's distribution of a range or list (widened to hold ``value``, a trial of an earlier range)."""
    import optuna

    if isinstance(where, Range):
        low, high = where.low, where.high
        if value is not None:
            low, high = min(low, value), max(high, value)
        if where.integer:
            return optuna.distributions.IntDistribution(int(low), int(high), log=where.log)
        return optuna.distributions.FloatDistribution(low, high, log=where.log)
    return optuna.distributions.CategoricalDistribution(where)
