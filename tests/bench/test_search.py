"""The adaptive search on objectives whose optimum is known: sweeps where the docstring puts them, the
parabola's vertex where numpy's fit puts it, and a search that reaches the 6 × 6 grid's best in 12."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from cvplgraph.bench.ranges import Range, fraction_of, readable, value_at
from cvplgraph.bench.search import SWEEP, PatternSearch, _vertex, adaptive, start_values

T, D = ("cells", "threshold"), ("cells", "diameter")


@dataclass
class FakeRunner:
    """Runs a batch by evaluating ``objective`` on each parameter set, as tune's runner records trials."""

    objective: Any
    trials: list[Any] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)

    def run(self, batch: list[dict], total: int) -> list[Any]:
        done = [SimpleNamespace(values=dict(v), objective=float(self.objective(v)), number=len(self.trials) + i + 1,
                                pooled=SimpleNamespace(count_error=0)) for i, v in enumerate(batch)]  # fmt: skip
        self.trials += done
        self.batches.append(len(batch))
        return done


def ridge(values: dict) -> float:
    """A tilted ridge in log space, peak at threshold 4.3, diameter 11.7 (an F1-like landscape)."""
    u, v = math.log(values[T] / 4.3), math.log(values[D] / 11.7)
    return 1.0 - (u + 0.5 * v) ** 2 - 0.3 * v**2


def test_the_sweeps_come_first_at_the_stated_fractions() -> None:
    space = {D: Range(6.0, 24.0, log=True), T: Range(3.0, 12.0, log=True)}
    start = start_values(space)
    assert start == {D: 12.0, T: 6.0}  # the log middles
    search = PatternSearch(space, start)
    first = search.propose(space, [], set())
    assert first is not None and [p[T] for p in first] == [6.0] * 4
    expected = [float(f"{6.0 * 4.0**f:.3g}") for f in SWEEP]  # 6 × 4^f: the fractions in log space
    assert [p[D] for p in first] == expected


def test_the_vertex_is_the_parabolas_peak() -> None:
    where = Range(0.0, 1.0)
    xs = [0.125, 0.375, 0.625]
    peak = 0.41
    trials = [SimpleNamespace(values={T: x}, objective=1 - (x - peak) ** 2, number=i) for i, x in enumerate(xs)]
    out = _vertex({T: 0.375}, {T: where}, {T: [{T: x} for x in xs]}, trials)
    a, b, _ = np.polyfit(xs, [t.objective for t in trials], 2)
    assert out[T] == readable(-b / (2 * a), where) == pytest.approx(peak, abs=0.01)


def test_the_search_reaches_the_grids_best_in_a_third_of_its_trials() -> None:
    space = {D: Range(6.0, 24.0, log=True), T: Range(3.0, 12.0, log=True)}
    grid = max(ridge({T: t, D: d}) for t, d in itertools.product(np.geomspace(3, 12, 6), np.geomspace(6, 24, 6)))
    runner = FakeRunner(ridge)
    adaptive(runner, space, start_values(space), {k: lambda _: None for k in space}, trials=12, timeout=None,
             seed=0, batch=4, log=lambda *_: None)  # fmt: skip
    assert len(runner.trials) == 12 and max(runner.batches) <= 4
    assert len({tuple(t.values.values()) for t in runner.trials}) == 12  # nothing run twice
    assert max(t.objective for t in runner.trials) >= grid


def test_after_the_pattern_converges_tpe_asks_for_the_rest() -> None:
    """A narrow linear range: the pattern search runs out of distinct values, the TPE phase takes over,
    and the search stops when nothing new is left rather than running a value twice."""
    space = {T: Range(0.1, 0.2)}  # values rounded to 0.001: 101 distinct
    lines: list[str] = []
    runner = FakeRunner(lambda v: 1 - abs(v[T] - 0.1537))
    adaptive(runner, space, start_values(space), {T: lambda _: None}, trials=40, timeout=None, seed=3, batch=4,
             log=lines.append)  # fmt: skip
    values = [t.values[T] for t in runner.trials]
    assert any("TPE for the rest" in line for line in lines), lines
    assert len(values) == len(set(values)) and len(values) <= 40
    assert min(abs(v - 0.1537) for v in values) <= 0.001


def test_a_best_at_the_end_of_a_range_widens_it_and_the_search_follows() -> None:
    space = {T: Range(1.0, 2.0, log=True)}
    lines: list[str] = []
    runner = FakeRunner(lambda v: 1 - abs(math.log(v[T] / 3.1)))  # > 0: F1-like (0 means nothing found)
    adaptive(runner, space, start_values(space), {T: lambda v: None if v < 100 else "too big"}, trials=16,
             timeout=None, seed=0, batch=4, log=lines.append)  # fmt: skip
    assert any("range widened to 1..4" in line for line in lines), lines
    best = max(runner.trials, key=lambda t: t.objective).values[T]
    assert best == pytest.approx(3.1, rel=0.05)
    assert fraction_of(Range(1.0, 4.0, log=True), value_at(Range(1.0, 4.0, log=True), 0.3)) == pytest.approx(0.3)


def test_an_int_range_too_narrow_for_four_sweep_values_runs_each_value_once() -> None:
    """1..3:int rounds the sweep's fractions to 1, 2, 2, 3: three trials, a parabola through three
    distinct points, no value twice, then nothing new to try."""
    space = {T: Range(1, 3, integer=True)}
    runner = FakeRunner(lambda v: 1 - abs(v[T] - 2))
    adaptive(runner, space, start_values(space), {T: lambda _: None}, trials=12, timeout=None, seed=0, batch=4,
             log=lambda *_: None)  # fmt: skip
    values = [t.values[T] for t in runner.trials]
    assert sorted(values) == [1, 2, 3]
