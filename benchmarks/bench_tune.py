"""Adaptive search against the full grid: how many trials `cvplgraph tune`'s adaptive search needs
to reach the grid's best F1 on a synthetic volume with known cells.

One run of this script:

1. writes a synthetic volume and its true cells (:func:`cvplgraph.synth.volume.write_synthetic`,
   ``--synth`` as JSON :class:`cvplgraph.synth.params.SynthParams` fields; kept in ``--workdir``);
2. copies the spec (``--spec``, default ``specs/local_threshold.toml``) with its input set to
   that volume, its cache in the work folder and no outputs;
3. runs the full grid (``--grid``, default ``mask.offset=0.02:0.3:15``), then, for each seed
   (``--seeds``), the adaptive search over the equivalent range (``--range``, default
   ``mask.offset=0.02..0.3``) with ``--trials`` trials;
4. reports the grid's best F1 and trial count, and per seed the adaptive best F1 and the number
   of trials it took to reach the grid's best exactly and within ``--within`` (default 0.01 F1),
   or "not reached".

Trials of both searches go through the spec's cache; each search gets a fresh cache folder, so
neither reuses the other's nodes. Flooding probes are off (``probe=0``): the comparison counts
trials, not seconds.

    python benchmarks/bench_tune.py --workdir /tmp/cvpl-bench-tune --json tune.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from machine_info import machine

from cvplgraph.bench.space import parse_param
from cvplgraph.bench.tune import tune
from cvplgraph.synth.volume import SynthParams, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
#: Noisy, dim cells: the best offset is a narrow peak, not a plateau at F1 1.0.
DEFAULT_SYNTH = {"shape": [32, 128, 128], "chunks": [32, 64, 64], "seed": 3, "noise": 0.1, "brightness": [0.12, 0.5]}


def spec_on(source: Path, image: Path, cache: Path, target: Path) -> Path:
    """``source`` with its [input] and [cache] urls replaced and its [outputs] and [tune] dropped."""
    out, section = [], ""
    for line in source.read_text(encoding="utf-8").splitlines():
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            section = header.group(1).strip()
        if section in ("outputs", "tune"):
            continue
        if section in ("input", "cache") and re.match(r"^\s*url\s*=", line):
            line = f'url = "{image if section == "input" else cache}"'
        out.append(line)
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "local_threshold.toml"))
    parser.add_argument("--grid", action="append", help="NODE.PARAM=start:stop:count or v1,v2,… (repeatable)")
    parser.add_argument("--range", action="append", help="NODE.PARAM=low..high[:log][:int] (repeatable)")
    parser.add_argument("--points", help="the Points node to score (default: the spec's only one)")
    parser.add_argument("--synth", default=json.dumps(DEFAULT_SYNTH), help="SynthParams fields as JSON")
    parser.add_argument("--tolerance", type=float, help="µm (default: the synthetic cells' radius)")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--within", type=float, default=0.01, help="F1 below the grid's best still counted as near")
    parser.add_argument("--workdir", default="/tmp/cvpl-bench-tune")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    params = SynthParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.synth).items()})
    image, truth = work / "image.ome.zarr", work / "cells.csv"
    if not truth.exists():
        write_synthetic(str(image), params, str(truth))
    tolerance = args.tolerance or (params.cell_radius_um[0] + params.cell_radius_um[1]) / 2
    grid = dict(parse_param(p) for p in (args.grid or ["mask.offset=0.02:0.3:15"]))
    ranges = dict(parse_param(p) for p in (args.range or ["mask.offset=0.02..0.3"]))

    def run(name: str, space: dict[Any, Any], **options: Any) -> Any:
        cache = work / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        spec = spec_on(Path(args.spec), image, cache, work / f"{name}.toml")
        start = time.perf_counter()
        result = tune(spec, str(truth), params=space, points=args.points, tolerance_um=tolerance, probe=0,
                      log=lambda *_: None, **options)  # fmt: skip
        return result, time.perf_counter() - start

    figures: dict[str, Any] = {"machine": machine(["dask", "optuna", "numpy", "scipy"]), "spec": args.spec,
                               "synth": json.loads(args.synth), "tolerance_um": tolerance}  # fmt: skip
    result, seconds = run("grid", grid, search="grid")
    target = result.best.f1
    figures["grid"] = {"trials": len(result.trials), "best_f1": result.best.f1, "seconds": round(seconds, 1),
                       "best": {f"{n}.{p}": v for (n, p), v in result.values.items()}}  # fmt: skip
    print(f"grid: {len(result.trials)} trials, best F1 {result.best.f1:.4f} at {figures['grid']['best']} "
          f"({seconds:.0f} s)")  # fmt: skip
    figures["adaptive"] = []
    for seed in args.seeds:
        result, seconds = run(f"adaptive-{seed}", ranges, search="adaptive", trials=args.trials, seed=seed)
        reached = next((t.number for t in result.trials if (t.pooled.f1 or 0.0) >= target), None)
        near = next((t.number for t in result.trials if (t.pooled.f1 or 0.0) >= target - args.within), None)
        row = {"seed": seed, "trials": len(result.trials), "best_f1": result.best.f1, "reached_at": reached,
               "within": args.within, "near_at": near, "seconds": round(seconds, 1),
               "best": {f"{n}.{p}": v for (n, p), v in result.values.items()}}  # fmt: skip
        figures["adaptive"].append(row)
        print(f"adaptive seed {seed}: best F1 {result.best.f1:.4f} at {row['best']}; the grid's best reached at "
              f"trial {reached or '—'}, within {args.within:g} at trial {near or '—'}, of {len(result.trials)} "
              f"({seconds:.0f} s)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
