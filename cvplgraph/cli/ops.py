"""``cvplgraph ops``: the available ops, their inputs and parameters."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``ops`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "ops",
        help="list the available ops, their inputs and parameters",
        description="List every registered op with its input ports, output type and parameters.",
    )
    p.add_argument("--markdown", action="store_true", help="the reference as Markdown (docs/ops.md)")
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Print the op reference, as text or Markdown."""
    from cvplgraph.ops.doc import ops_markdown, ops_text

    print(ops_markdown() if args.markdown else ops_text())
    return 0
