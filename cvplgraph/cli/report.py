"""``cvplgraph report``: one self-contained HTML page about a recorded run."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``report`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "report",
        help="write a run's report: one self-contained HTML page",
        description="Write one HTML page about a recorded run (every `cvplgraph run` records itself in "
        "<cache>/runs/): the spec, the DAG coloured by status, per-node time / bytes / cache hit, counts, "
        "the per-region table with a bar chart of densities, a maximum-intensity projection of the input "
        "with the detected centroids, and the environment. Plots are embedded; the page loads nothing.",
    )
    p.add_argument("run", help="a spec (its newest run), a run record (.json), or a run id with --cache")
    p.add_argument("--out", metavar="HTML", help="the page to write (default: report-<run id>.html here)")
    p.add_argument("--cache", metavar="URL", help="the cache holding the run id")
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Write the page of the run named and print where it went."""
    from cvplgraph.inspect.report import write_report
    from cvplgraph.inspect.runlog import load_record

    record = load_record(args.run, cache=args.cache)
    page = write_report(record, args.out or f"report-{record['id']}.html")
    print(f"report → {page}")
    return 0
