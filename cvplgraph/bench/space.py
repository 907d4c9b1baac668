"""The free parameters of a search: read from ``--param`` or a spec's ``[tune]`` table, and checked
against each op's types and checks before anything runs (see :mod:`cvplgraph.bench.tune`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvplgraph.bench.ranges import Range, Space, even_steps, make_range
from cvplgraph.bench.suite import split_node_param
from cvplgraph.errors import CvplError
from cvplgraph.spec.model import Spec
from cvplgraph.spec.parse import load_toml


def parse_param(text: str) -> tuple[tuple[str, str], list[Any] | Range]:
    """``node.param=v1,v2,…``, ``=start:stop:count`` (inclusive, evenly spaced) or a range
    ``=low..high`` with optional ``:log`` and ``:int``."""
    expected = "expected node.parameter=v1,v2,…, =start:stop:count or =low..high[:log][:int]"
    name, sep, values = text.partition("=")
    if not sep or not values.strip():
        raise CvplError(f"--param {text!r}: {expected}")
    try:
        node, param = split_node_param(name)
    except ValueError as exc:
        raise CvplError(f"--param {text!r}: {exc}") from None
    values = values.strip()
    if ".." in values:
        bounds, *flags = values.split(":")
        low, _, high = bounds.partition("..")
        if set(flags) - {"log", "int"}:
            raise CvplError(f"--param {text!r}: unknown flag {':'.join(flags)!r}; expected low..high[:log][:int]")
        try:
            return (node, param), make_range(float(low), float(high), "log" in flags, "int" in flags)
        except ValueError as exc:
            raise CvplError(f"--param {text!r}: {exc}") from None
    if values.count(":") == 2:
        start, stop, count = values.split(":")
        try:
            return (node, param), even_steps(float(start), float(stop), int(count))
        except ValueError:
            raise CvplError(f"--param {text!r}: expected numbers in start:stop:count, count ≥ 1") from None
    return (node, param), [_value(v.strip()) for v in values.split(",")]


def _value(text: str) -> Any:
    """A command-line value as TOML would read it (number, boolean, else the string)."""
    try:
        return load_toml(f"v = {text}", "--param")["v"]
    except CvplError:
        return text


def grid_from_table(table: Any, where: str) -> Space:
    """The free parameters of a spec's ``[tune]`` table."""
    if not isinstance(table, dict):
        raise CvplError(f'{where}: [tune]: expected a table of "node.parameter" = [values], got {table!r}')
    space: Space = {}
    expected = "[values], { from, to, steps } or { low, high, log = false, int = false }"
    for key, values in table.items():
        try:
            node, param = split_node_param(key)
        except ValueError as exc:
            raise CvplError(f"{where}: tune.{key}: {exc}") from None
        if isinstance(values, dict) and {"low", "high"} <= set(values) <= {"low", "high", "log", "int"}:
            try:
                space[(node, param)] = make_range(float(values["low"]), float(values["high"]),
                                                  values.get("log") is True, values.get("int") is True)  # fmt: skip
            except (TypeError, ValueError) as exc:
                raise CvplError(f"{where}: tune.{key}: {exc}; expected {expected}") from None
            continue
        if isinstance(values, dict) and set(values) == {"from", "to", "steps"}:
            try:
                values = even_steps(float(values["from"]), float(values["to"]), int(values["steps"]))
            except (TypeError, ValueError):
                values = None
        if not isinstance(values, list) or not values:
            raise CvplError(f'{where}: tune.{key}: expected "node.parameter" = {expected}, got {values!r}')
        space[(node, param)] = values
    return space


def value_problem(spec: Spec, node: str, param: str) -> Callable[[Any], str | None]:
    """What is wrong with a value of ``node.param`` (its type, the op's checks), or None."""
    from cvplgraph.registry import get_op
    from cvplgraph.spec.params import check_param

    opdef = get_op(spec.node(node).op)
    definition = opdef.param(param)
    if definition is None:
        raise CvplError(f"cannot tune {node}.{param}: op {opdef.name!r} has no parameter {param!r}")

    def problem(value: Any) -> str | None:
        ok, checked = check_param(definition, value)
        if not ok:
            return str(definition.describe())
        try:
            return opdef.checks[param](checked) if param in opdef.checks else None
        except (TypeError, ValueError) as exc:
            return str(exc)

    return problem


def check_space(spec: Spec, spec_path: Path, space: Space) -> None:
    """Every tuned node exists, has the parameter, and takes every listed value and range end."""
    from cvplgraph.registry import get_op

    nodes = [n.name for n in spec.nodes]
    for (node, param), values in space.items():
        if node not in nodes:
            raise CvplError(f"{spec_path}: cannot tune {node}.{param}: no node {node!r} (nodes: {', '.join(nodes)})")
        opdef = get_op(spec.node(node).op)
        if opdef.param(param) is None:
            known = ", ".join(p.name for p in opdef.params) or "none"
            raise CvplError(f"{spec_path}: cannot tune {node}.{param}: op {opdef.name} has no parameter "
                            f"{param!r} (parameters: {known})")  # fmt: skip
        problem = value_problem(spec, node, param)
        for value in [values.low, values.high] if isinstance(values, Range) else values:
            if (why := problem(value)) is not None:
                raise CvplError(f"{spec_path}: cannot tune {node}.{param} = {value!r}: expected {why}")
