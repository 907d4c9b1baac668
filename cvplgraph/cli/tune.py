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
        description="Search the free parameters (--param, or the spec's [tune] table) on the spec's input, "
        "cropped with --crop (several --truth/--crop pairs are scored together), every trial through the "
        "spec's cache; score each against the truth (F1 of one-to-one matching) and write the best spec "
        "beside this one as NAME.tuned.toml, every trial's points and trials.csv in NAME-tune/. Values only: "
        "every combination (grid). Any range low..high: an adaptive search (a sweep of each range in the "
        "order given, a pattern search around the best, then Optuna TPE) that widens a range whose end holds "
        "the best trial; give the parameter that matters most (a cell size) first. Example: "
        "cvplgraph tune spec.toml --truth cells.xml "
        "--voxel-size 5 2 2 --crop 0 20 0 256 0 256 --param mask.level=0.05..0.5:log",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument("--truth", required=True, action="append", help="true cell centres: CSV (µm or voxels), "
                   "napari points CSV, or CellCounter XML; repeat for several annotated crops")  # fmt: skip
    p.add_argument("--param", action="append", default=[], metavar="NODE.PARAM=VALUES",
                   help="values to try: v1,v2,… or start:stop:count (a grid), or a range low..high, "
                   "low..high:log, low..high:int (adaptive); repeat for more parameters")  # fmt: skip
    p.add_argument("--crop", type=int, nargs=6, action="append", metavar=("Z0", "Z1", "Y0", "Y1", "X0", "X1"),
                   help="tune on this box of the input (voxels, stop exclusive); repeat to pair with each "
                   "--truth in order, or give once for all (default: the whole input)")  # fmt: skip
    p.add_argument("--points", metavar="NODE", help="the node whose points are scored (default: the only one)")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="µm per voxel of a truth file in voxels")  # fmt: skip
    p.add_argument("--tolerance", metavar="UM", help="matching distance in µm (default 5), or Z,Y,X µm for an "
                   "ellipsoid, such as 10,10,25")  # fmt: skip
    p.add_argument("--search", choices=("grid", "adaptive"), help="grid: every combination; adaptive: sweeps, "
                   "a pattern search, then Optuna TPE (default: adaptive when a range is given)")  # fmt: skip
    p.add_argument("--trials", type=int, default=24, help="trials of the adaptive search (default 24)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="start no new batch of adaptive trials after this many seconds")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the adaptive search's TPE phase (default 0)")
    p.add_argument("--batch", type=int, default=4, help="adaptive trials asked and run together (default 4)")
    p.add_argument("--objective", default="f1", metavar="f1|recall@K",
                   help="f1 (default), or recall@K: recall with at most K detections per true cell, for "
                   "references that annotate only some cells")  # fmt: skip
    p.add_argument("--budget", type=float, default=20.0, metavar="K",
                   help="detections per true cell beyond which a trial is flooded: stopped after the probe "
                   "(default 20; 0: no limit)")  # fmt: skip
    p.add_argument("--probe", type=float, default=0.125, metavar="FRACTION",
                   help="each trial runs first on the centre of the first crop, this fraction of its voxels "
                   "(default 0.125; 0: no probe)")  # fmt: skip
    p.add_argument("--cv", action="store_true", help="with several crops: leave-one-crop-out report")
    add_local_run(p)
    return p


def tolerance(text: str | None) -> float | tuple[float, float, float] | None:
    """``--tolerance 5`` or ``--tolerance 10,10,25`` (z, y, x µm)."""
    from cvplgraph.errors import CvplError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or not all(v > 0 for v in values):
        raise CvplError(f"--tolerance {text!r}: expected µm > 0, or three Z,Y,X µm such as 10,10,25")
    return values[0] if len(values) == 1 else (values[0], values[1], values[2])


def handle(args: argparse.Namespace) -> int:
    """Run the search, print one line per trial and the table, write the tuned spec."""
    from cvplgraph.bench.space import parse_param
    from cvplgraph.bench.trials import format_trials, trial_table
    from cvplgraph.bench.tune import tune

    params = dict(parse_param(p) for p in args.param)
    result = tune(args.spec, args.truth, params=params or None, crop=[tuple(c) for c in args.crop or []] or None,
                  points=args.points, voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
                  tolerance_um=tolerance(args.tolerance), search=args.search, trials=args.trials,
                  timeout=args.timeout, seed=args.seed, batch=args.batch, objective=args.objective,
                  budget=args.budget or None, probe=args.probe, cv=args.cv, scheduler=args.scheduler,
                  progress=not args.quiet)  # fmt: skip
    keys = list(result.values)
    print(format_trials(trial_table(result.trials, keys, result.crops), keys))
    best = result.best
    chosen = ", ".join(f"{n}.{p} = {v}" for (n, p), v in result.values.items())
    shown = f"F1 {best.f1:.3f}" if best.f1 is not None else "flooded"
    print(f"best: {chosen} — {shown} (trial {result.trials_to_best} of {len(result.scores)}, "
          f"{result.search} search)")  # fmt: skip
    for held, number, score in result.cv:
        print(f"  held out {held}: trial {number}, best on the other crops, scores F1 {score.f1:.3f} there")
    print(f"  trials: {result.folder}")
    if result.spec is not None:
        print(f"  → {result.spec}")
    return 0
