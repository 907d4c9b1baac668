"""The op reference, generated from the registry (``docs/ops.md``, ``cvplgraph ops``)."""

from __future__ import annotations

import inspect

from cvplgraph.registry import get_op, known_ops
from cvplgraph.types import format_types


def _default(value: object) -> str:
    if value is inspect.Parameter.empty:
        return "required"
    if isinstance(value, tuple):
        return str(list(value))
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def ops_markdown() -> str:
    """Markdown reference of every registered op: ports, output, parameters, summary."""
    lines = [
        "# Op reference",
        "",
        "Generated from the op registry by `cvplgraph ops --markdown`; do not edit by hand.",
        "",
    ]
    for name in known_ops():
        op = get_op(name)
        lines += [
            f"## `{name}` (version {op.version})",
            "",
            op.summary,
            "",
            f"Output: **{op.output}** · halo: {op.halo} · cost: {op.cost or 'negligible'}",
            "",
            "| field | kind | type | default |",
            "|---|---|---|---|",
        ]
        for port in op.inputs:
            lines.append(
                f"| `{port.name}` | input | {format_types(port.types)} | "
                f"{'optional' if port.optional else 'required'} |"
            )
        for param in op.params:
            lines.append(f"| `{param.name}` | parameter | {param.describe()} | {_default(param.default)} |")
        lines.append("")
    return "\n".join(lines)


def ops_text() -> str:
    """Short listing for the terminal."""
    out = []
    for name in known_ops():
        op = get_op(name)
        ports = ", ".join(f"{p.name}: {format_types(p.types)}{'?' if p.optional else ''}" for p in op.inputs)
        params = ", ".join(f"{p.name}={_default(p.default)}" for p in op.params)
        out.append(f"{name} v{op.version}  ({ports}) → {op.output}  [{params}]\n    {op.summary}")
    return "\n".join(out)
