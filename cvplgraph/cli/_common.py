"""What several commands share: the common options, aligned tables, byte sizes and the plan table.

Nothing here imports dask, xarray, pandas or zarr at module level: every command module imports
this one while the parser is built, and ``cvplgraph --help`` must stay fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from cvplgraph.engine.plan import Plan


def add_common(p: argparse.ArgumentParser) -> None:
    """Add the options every command has (``--debug``) to ``p``."""
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")


def add_local_run(p: argparse.ArgumentParser) -> None:
    """Options of commands that run many small graphs here (bench, tune): threads by default."""
    p.add_argument("--scheduler", metavar="ADDRESS", default="threads",
                   help="dask scheduler address, or 'threads' (default) / 'sync'")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(p)


def fmt_bytes(n: float | None) -> str:
    """A byte count for people, such as ``1.50 MiB`` (:func:`dask.utils.format_bytes`); ``-`` if unknown.

    Parameters
    ----------
    n : float or None
        Bytes; None when not known.

    Returns
    -------
    str
    """
    if n is None:
        return "-"
    from dask.utils import format_bytes

    return format_bytes(int(n))


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of text as lines with columns padded to a common width."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_plan(plan: Plan) -> str:
    """The table ``cvplgraph plan`` prints: one row per node, then how many compute and the cache.

    Parameters
    ----------
    plan : Plan
        A plan, with size estimates or without.

    Returns
    -------
    str
    """
    from cvplgraph.engine.status import Status

    rows = [("node", "op", "type", "status", "shape", "chunks", "bytes", "why")]
    for p in plan.nodes.values():
        status = str(p.status) if p.status != Status.COMPUTE else "to compute"
        if p.status == Status.COMPUTE and p.done is not None:
            status = f"partial {p.done:.0%}"
        rows.append(
            (
                p.name,
                p.op,
                p.type,
                status,
                "×".join(map(str, p.shape)) if p.shape else "-",
                "×".join(map(str, p.chunks)) if p.chunks else "-",
                fmt_bytes(p.nbytes),
                "; ".join(p.reasons),
            )
        )
    lines = aligned(rows)
    n = len(plan.to_compute())
    lines.append(
        f"\n{n} node(s) to compute, {len(plan.cached())} cached; "
        f"cache: {plan.manifest.url}"
    )
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)
