"""``cvplgraph tune``: search a spec's free parameters against annotated cells."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_local_run


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``tune`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "tune",
        help="search a spec's free parameters against annotated cells; write the best spec",
        description="Try every combination of the free parameters (--param, or the spec's [tune] table) "
        "on the spec's input, cropped with --crop, all trials as one graph through the spec's cache; "
        "score each against the truth (F1 of one-to-one matching) and write the best spec beside this "
        "one as NAME.tuned.toml with its score. Example: cvplgraph tune spec.toml --truth cells.xml "
        "--voxel-size 5 2 2 --crop 0 20 0 256 0 256 --param mask.level=0.1:0.5:9",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument("--truth", required=True, help="true cell centres: CSV (µm or voxels), napari points CSV, "
                   "or CellCounter XML")  # fmt: skip
    p.add_argument("--param", action="append", default=[], metavar="NODE.PARAM=VALUES",
                   help="values to try: v1,v2,… or start:stop:count (repeat for more parameters)")  # fmt: skip
    p.add_argument("--crop", type=int, nargs=6, metavar=("Z0", "Z1", "Y0", "Y1", "X0", "X1"),
                   help="tune on this box of the input (voxels, stop exclusive)")  # fmt: skip
    p.add_argument("--points", metavar="NODE", help="the node whose points are scored (default: the only one)")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="µm per voxel of a truth file in voxels")  # fmt: skip
    p.add_argument("--tolerance", type=float, metavar="UM", help="matching distance (default 5 µm)")
    add_local_run(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Try the combinations, print the score table and the best, write the tuned spec."""
    from cvplgraph.bench.report import table, text_table
    from cvplgraph.bench.tune import parse_param, tune

    params = dict(parse_param(p) for p in args.param)
    result = tune(args.spec, args.truth, params=params or None, crop=tuple(args.crop) if args.crop else None,
                  points=args.points, voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
                  tolerance_um=args.tolerance, scheduler=args.scheduler, progress=not args.quiet)  # fmt: skip
    print(text_table(table(result.scores)))
    best = result.best
    chosen = ", ".join(f"{n}.{p} = {v}" for (n, p), v in result.values.items())
    print(f"best: {chosen} — F1 {best.f1:.3f} (trial {result.trials_to_best} of {len(result.scores)})")
    print(f"  → {result.spec}")
    return 0
