"""Checking spec values against an op's declared parameter types."""

from __future__ import annotations

import math
import typing
from typing import Any

from cvplgraph.registry import Param


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_param(param: Param, value: Any) -> tuple[bool, Any]:
    """(True, normalised value) if ``value`` fits ``param``'s type, else (False, None).

    Integers are accepted for float parameters (and become floats); lists
    become tuples.
    """
    ann = param.annotation
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        choices = typing.get_args(ann)
        match = [c for c in choices if c == value and type(c) is type(value)]
        return (True, match[0]) if match else (False, None)
    if origin is tuple:
        inner = typing.get_args(ann)[0]
        if not isinstance(value, list):
            return False, None
        ok, items = zip(*(check_param(Param("item", inner), v) for v in value)) if value else ((), ())
        return (True, tuple(items)) if all(ok) else (False, None)
    if ann is bool:
        return (True, value) if isinstance(value, bool) else (False, None)
    if ann is int:
        return (True, value) if isinstance(value, int) and not isinstance(value, bool) else (False, None)
    if ann is float:
        return (True, float(value)) if _is_number(value) and math.isfinite(value) else (False, None)
    if ann is str:
        return (True, value) if isinstance(value, str) else (False, None)
    return False, None
