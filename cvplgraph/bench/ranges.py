"""Ranges of the adaptive search: how values are drawn from them, written, spread and widened."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: A range is widened when the best trial lies within this fraction of its width from an end.
EDGE = 0.1
#: Significant digits of values drawn from a log range (linear ranges: see :func:`readable`).
DIGITS = 3


@dataclass(frozen=True)
class Range:
    """A continuous (or integer) interval searched adaptively; ``log``: sampled in log space."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __str__(self) -> str:
        flags = "".join(f":{f}" for f, on in (("log", self.log), ("int", self.integer)) if on)
        return f"{self.low:g}..{self.high:g}{flags}"


#: The free parameters: (node, parameter) → the values to try, or a range.
Space = dict[tuple[str, str], "list[Any] | Range"]


def make_range(low: float, high: float, log: bool = False, integer: bool = False) -> Range:
    """A checked :class:`Range` (ValueError saying what is wrong)."""
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"expected low < high, got {low:g}..{high:g}")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got {low:g}")
    if integer:
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ValueError(f"an int range needs whole ends, got {low:g}..{high:g}")
        return Range(int(low), int(high), log, True)
    return Range(float(low), float(high), log, False)


def even_steps(start: float, stop: float, count: int) -> list[Any]:
    """``count`` evenly spaced values, rounded to a tenth of the step (readable, still distinct)."""
    if count < 1:
        raise ValueError
    values = np.linspace(start, stop, count).tolist()
    if float(start).is_integer() and float(stop).is_integer() and all(float(v).is_integer() for v in values):
        return [int(v) for v in values]
    step = abs(stop - start) / (count - 1) if count > 1 else abs(start) or 1.0
    return [round_to(v, step / 10) for v in values]


def round_to(value: float, resolution: float) -> float:
    """``value`` rounded to the decimal place of ``resolution`` (10 decimals at most)."""
    if not resolution > 0:
        return value
    decimals = min(10, max(0, -math.floor(math.log10(resolution))))
    return round(value, decimals) + 0.0


def readable(value: float, where: Range) -> Any:
    """A value drawn from ``where`` as people write it: whole numbers for int ranges, 3 significant
    digits in log ranges, the decimal place of a hundredth of the width in linear ones."""
    if where.integer:
        return int(round(value))
    if where.log:
        value = float(f"{value:.{DIGITS}g}")
    else:
        value = round_to(value, (where.high - where.low) / 100)
    return min(max(value, where.low), where.high)


def widen(where: Range, side: str, problem: Callable[[Any], str | None]) -> Range | None:
    """``where`` with its ``side`` ("low" or "high") end moved out — ×2 (÷2) in a log range, by half
    the width in a linear one — or less when the op refuses the new end (halving the step up to
    six times); None when no wider end is valid."""
    for attempt in range(6):
        if where.log:
            factor = 2.0 ** (0.5**attempt)
            end = where.high * factor if side == "high" else where.low / factor
        else:
            move = (where.high - where.low) / 2 * 0.5**attempt
            end = where.high + move if side == "high" else where.low - move
        if where.integer:
            end = math.ceil(end) if side == "high" else math.floor(end)
            if where.log and end < 1:
                continue
        else:
            end = float(f"{end:.{DIGITS}g}") if where.log else round_to(end, (where.high - where.low) / 100)
        if end == (where.high if side == "high" else where.low) or problem(end) is not None:
            continue
        return replace(where, **{side: end})
    return None


def value_at(where: Range, fraction: float) -> float:
    """The value ``fraction`` (0 → low, 1 → high) of the way along ``where``, in log space for a log range."""
    fraction = min(max(fraction, 0.0), 1.0)
    if where.log:
        return math.exp(math.log(where.low) + fraction * (math.log(where.high) - math.log(where.low)))
    return where.low + fraction * (where.high - where.low)


def fraction_of(where: Range, value: float) -> float:
    """Where ``value`` lies along ``where``: the inverse of :func:`value_at` (not clipped)."""
    if where.log:
        return (math.log(value) - math.log(where.low)) / (math.log(where.high) - math.log(where.low))
    return (value - where.low) / (where.high - where.low)
