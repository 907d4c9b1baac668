"""``cvplgraph run``: compute what is not cached, write the outputs, record the run."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from cvplgraph.cli._common import add_common

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from cvplgraph.engine.plan import Plan


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``run`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "run",
        help="compute what is not cached and write the spec's outputs",
        description="Compute every node that is not cached yet (one dask graph), store "
        "cached nodes, write [outputs]. A second run recomputes nothing.",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask scheduler address (overrides [cluster] address and factory), 'threads' / 'sync' for dask's "
        "local schedulers, or 'cluster' for the spec's [cluster] (else a LocalCluster) whatever the size; "
        "default ('auto'): the spec's [cluster] if it has one, threads in this process for an input under "
        "2 GiB, else a LocalCluster on this machine",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    shown.add_argument("--json", action="store_true",
                       help="JSON lines on stdout: start, progress (tasks, ETA, bytes) every second, done")  # fmt: skip
    p.add_argument("--report", metavar="HTML", help="also write the run's report page (see `cvplgraph report`)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="lower op by op instead of running chains of ops (threshold → connected_components → "
                   "centroids) as one task per block; the same results, slower (to compare, to debug)")  # fmt: skip
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Run the spec: a progress bar (or JSON lines, or nothing), the run's record, optionally its report."""
    import time

    from cvplgraph.engine.plan import make_plan
    from cvplgraph.engine.progress import Display
    from cvplgraph.inspect.runlog import RunInterrupted, new_run_id, run_and_record
    from cvplgraph.spec.parse import load_spec

    spec = load_spec(args.spec)
    plan = make_plan(spec)
    todo = plan.to_compute()
    display = Display("json" if args.json else "quiet" if args.quiet else "bar")
    started, run_id = time.time(), new_run_id()
    display.event("start", run=run_id, spec=spec.source, compute=todo,
                  cached=plan.cached())  # fmt: skip
    if display.mode == "bar":
        print(f"{len(todo)} node(s) to compute" + (f": {', '.join(todo)}" if todo else " — everything is cached"))
    for line in plan.warnings:  # before the compute: a user may stop a run on a damaged input
        display.event("warning", run=run_id, message=line)
        if display.mode != "json":
            print(f"warning: {line}", file=sys.stderr)
    try:
        run = run_and_record(plan, scheduler=args.scheduler, progress=display, run_id=run_id, started=started,
                             report=args.report, fuse=args.fuse)  # fmt: skip
    except RunInterrupted as stop:
        display.event("interrupted", run=run_id, record=stop.record_url)
        raise KeyboardInterrupt(_interrupted(plan, args.spec)) from None
    report, record, page = run.results.report, run.record, run.page
    after = [w for w in record["warnings"] if w not in plan.warnings]  # the plan's were said before the compute
    for line in [*after, *empty_warnings(record)]:
        display.event("warning", run=run_id, message=line)
        if display.mode != "json":
            print(f"warning: {line}", file=sys.stderr)
    if display.mode == "json":
        display.event("done", run=run_id, seconds=round(report.seconds, 3), computed=report.computed,
                      outputs=report.outputs, counts=record["counts"], record=run.record_url, report=page)  # fmt: skip
    elif display.mode == "bar":
        print(f"done in {report.seconds:.1f} s; computed: {', '.join(report.computed) or 'nothing'}")
        for name, target in report.outputs.items():
            print(f"  {name} → {target}")
        if run.record_url is None:
            print(f"run {run_id} not recorded: the cache refused the record (read-only?)")
        else:
            print(f"run {run_id} recorded" + (f"; report → {page}" if page else f" (cvplgraph report {args.spec})"))
    return 0


def empty_warnings(record: dict[str, Any]) -> list[str]:
    """A line for each node of points that found nothing: a result a user must not take for a count."""
    types = {n["name"]: n.get("type") for n in record.get("nodes") or []}
    return [
        f"{name} found no objects. If the input is integer (e.g. uint16 counts) and not normalized, it is "
        "read as a fraction of the dtype's range, where cells often sit below 0.02: fixed levels then find "
        "nothing. Use specs/cells.toml (contrast in noise units), a `normalize` node, or [input] "
        "intensity_range."
        for name, n in (record.get("counts") or {}).items()
        if n == 0 and types.get(name) == "Points"
    ]


def _interrupted(plan: Plan, spec: str) -> str:
    """What an interrupted run leaves: nothing committed, the chunks already written kept for the next run."""
    from cvplgraph.cache.resume import partial_progress

    kept = []
    for name in plan.to_compute():
        share = partial_progress(plan.manifest.url, plan.nodes[name].key) if plan.nodes[name].cache else None
        if share:
            kept.append(f"{name} {share:.0%}")
    written = f"; chunks already written are kept ({', '.join(kept)})" if kept else ""
    return (
        f"interrupted: no cache entry was committed for an unfinished node{written} — resume with: cvplgraph run {spec}"
    )
