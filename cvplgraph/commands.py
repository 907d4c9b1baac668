"""Command implementations: call the library, return data, print it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .errors import CvplError
from .plan import COMPUTE, Plan


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def format_plan(plan: Plan) -> str:
    rows = [("node", "op", "type", "status", "shape", "chunks", "bytes", "why")]
    for p in plan.nodes.values():
        status = p.status if p.status != COMPUTE else "to compute"
        rows.append((p.name, p.op, p.type, status, "×".join(map(str, p.shape)) if p.shape else "-",
                     "×".join(map(str, p.chunks)) if p.chunks else "-", _fmt_bytes(p.nbytes), "; ".join(p.reasons)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    n = len(plan.to_compute())
    lines.append(f"\n{n} node(s) to compute, {sum(p.status == 'cached' for p in plan.nodes.values())} cached; "
                 f"cache: {plan.manifest.url}")
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    from .estimate import plan_with_estimates
    from .spec import load_spec

    plan = plan_with_estimates(load_spec(args.spec))
    print(plan.to_json() if args.json else format_plan(plan))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .execute import execute
    from .plan import make_plan
    from .spec import load_spec

    spec = load_spec(args.spec)
    plan = make_plan(spec)
    todo = plan.to_compute()
    if not args.quiet:
        print(f"{len(todo)} node(s) to compute" + (f": {', '.join(todo)}" if todo else " — everything is cached"))
    results = execute(plan, scheduler=args.scheduler, progress=not args.quiet)
    report = results.report
    if report.dashboard and not args.quiet:
        print(f"dask dashboard: {report.dashboard}")
    if not args.quiet:
        print(f"done in {report.seconds:.1f} s; computed: {', '.join(report.computed) or 'nothing'}")
        for name, target in report.outputs.items():
            print(f"  {name} → {target}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import SynthParams, write_synthetic

    try:
        params = SynthParams(shape=tuple(args.shape), chunks=tuple(args.chunks), voxel_size=tuple(args.voxel_size),
                             spacing_um=args.spacing, seed=args.seed)
    except ValueError as exc:
        raise CvplError(str(exc)) from None
    truth = args.truth or str(Path(args.out.rstrip("/")).with_suffix("").with_suffix("")) + "_cells.csv"
    cells = write_synthetic(args.out, params, truth)
    print(f"wrote {args.out} {tuple(args.shape)} with {len(cells)} cells; truth: {truth}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from importlib import resources

    from .execute import execute
    from .plan import make_plan
    from .spec import load_spec
    from .synth import SynthParams, write_synthetic

    folder = Path(args.dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "demo.toml"
    spec_path.write_text(resources.files("cvplgraph").joinpath("specs/demo.toml").read_text(encoding="utf-8"))
    volume = folder / "synthetic.ome.zarr"
    start = time.perf_counter()
    params = SynthParams(shape=tuple(args.shape), chunks=(32, 256, 256))
    if not volume.exists():
        print(f"writing a synthetic volume {tuple(args.shape)} with known cells → {volume}")
        write_synthetic(str(volume), params, str(folder / "true_cells.csv"))
    import pandas as pd

    truth = pd.read_csv(folder / "true_cells.csv")
    spec = load_spec(spec_path)
    plan = make_plan(spec)
    print(f"running {spec_path} ({len(plan.to_compute())} node(s) to compute)")
    results = execute(plan, scheduler=args.scheduler, progress=not args.quiet)
    found = int(results["counts"].attrs["total"])
    error = 100.0 * (found - len(truth)) / max(len(truth), 1)
    print(json.dumps({"cells_found": found, "true_cells": len(truth), "error_percent": round(error, 2)}))
    print(f"cells found: {found}, true cells: {len(truth)} ({error:+.2f} %)")
    print(f"time: {time.perf_counter() - start:.1f} s (pipeline {results.report.seconds:.1f} s)")
    print(f"outputs: {', '.join(results.report.outputs.values())}")
    print(f"cache: {spec.cache_url}  —  run `cvplgraph plan {spec_path}` to see it is all cached")
    return 0
