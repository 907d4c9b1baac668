"""``cvplgraph bench``: every variant of a suite on every dataset, scored against the truth."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_local_run


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``bench`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "bench",
        help="compare methods against ground truth (precision, recall, F1, count error)",
        description="Run every variant of a suite on every dataset — each dataset's variants as one "
        "graph, shared steps computed once and cached — and score each variant's points against the "
        "truth by one-to-one matching within a tolerance. Prints a table; writes results.csv, "
        "results.md, regions.csv (with region truth) and PNG plots to the suite's output folder. "
        "Suite format: docs/bench.md.",
    )
    p.add_argument("suite", help="the suite TOML file ([bench], [datasets.NAME], [variants.NAME])")
    p.add_argument("--output", metavar="FOLDER", help="where to write the tables and plots (default: the suite's)")
    add_local_run(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Run the suite, print the score table and the files written."""
    from dataclasses import replace
    from pathlib import Path

    from cvplgraph.bench.report import table, text_table, write_report
    from cvplgraph.bench.run import run_suite
    from cvplgraph.bench.suite import load_suite

    suite = load_suite(args.suite)
    if args.output:
        suite = replace(suite, output=Path(args.output))
    scores, runs = run_suite(suite, scheduler=args.scheduler, progress=not args.quiet)
    print(text_table(table(scores)))
    for path in write_report(suite.output, scores, runs, suite.path):
        print(f"  → {path}")
    return 0
