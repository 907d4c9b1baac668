"""``cvplgraph plan``: the dry run — what is cached, what will compute and why; the DAG; one node explained."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_common, format_plan


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``plan`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "plan",
        help="dry run: what is cached, what will compute, and why",
        description="Compile the spec and compare every node's key with the cache. "
        "Reads metadata only; computes nothing.",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--dag",
        metavar="FILE",
        help="also draw the DAG, coloured by status, edges labelled with ports: .svg or .png (Graphviz when "
        "installed, else drawn in Python), .dot or .mmd text; '-' prints Mermaid (or --dag-format dot) "
        "instead of the table",
    )
    p.add_argument(
        "--dag-format", choices=["svg", "png", "dot", "mermaid"], help="override the format --dag's suffix implies"
    )
    p.add_argument(
        "--explain",
        metavar="NODE",
        help="why NODE will (or will not) run: what changed since its cached entry, old → new",
    )
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Print the plan (a table or JSON), draw the DAG, or explain one node."""
    from cvplgraph.engine.estimate import plan_with_estimates
    from cvplgraph.spec.parse import load_spec

    plan = plan_with_estimates(load_spec(args.spec))
    if args.explain:
        from cvplgraph.inspect.explain import explain

        print(explain(plan, args.explain))
        return 0
    if args.dag:
        from cvplgraph.inspect.dag import dag_from_plan, write_dag

        text = write_dag(dag_from_plan(plan), args.dag, args.dag_format)
        if text is not None:
            print(text)
            return 0
    print(plan.to_json() if args.json else format_plan(plan))
    if args.dag and not args.json:
        print(f"DAG → {args.dag}")
    return 0
