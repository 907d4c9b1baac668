"""Tune on one volume, report on another: `cvplgraph tune` as a user with one annotated crop meets it.

The suite's hard pair (``hard_tune`` and ``hard_heldout`` in ``benchmarks/methods.toml``: touching
pairs, dim cells, a gradient background, Poisson noise, 4 × 1.8 × 1.8 µm voxels; the same
statistics, different cells and noise) is written once into ``--workdir``. For each method:

1. its parameters are tuned on ``hard_tune`` against that volume's truth: ``specs/cells.toml`` with
   the adaptive search over its own ``[tune]`` ranges (``--trials``), DoG (``specs/blob_dog.toml``)
   with a grid over threshold and smallest σ;
2. the tuned values are run once on ``hard_heldout`` and scored against its truth;
3. the shipped (untuned) parameters are scored on ``hard_heldout`` too.

    python benchmarks/bench_heldout.py --workdir /tmp/cvpl-bench-heldout --json heldout.json
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Any

from bench_tune import spec_on
from machine_info import machine

from cvplgraph.bench.space import grid_from_table, parse_param
from cvplgraph.bench.tune import tune
from cvplgraph.spec.parse import load_spec
from cvplgraph.synth.volume import SynthParams, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "cells": {"spec": "specs/cells.toml", "points": "cells", "search": "adaptive"},
    "dog": {"spec": "specs/blob_dog.toml", "points": "dog", "search": "grid",
            "space": ["dog.threshold=0.02,0.03,0.04,0.06,0.08,0.1", "dog.min_sigma=1.5,2.0,2.5"]},
    "threshold": {"spec": "specs/demo.toml", "points": "centroids", "search": "grid",
                  "space": ["mask.level=0.15,0.2,0.25,0.3,0.35,0.4,0.5,0.6"]},
    "otsu": {"spec": "specs/otsu.toml", "points": "kept", "search": "grid",
             "space": ["kept.min_voxels=1,2,4,8,16,32"]},
}  # fmt: skip


def volume(work: Path, name: str) -> tuple[Path, Path, float]:
    suite = tomllib.loads((ROOT / "benchmarks" / "methods.toml").read_text(encoding="utf-8"))
    fields = suite["datasets"][name]["synth"]
    params = SynthParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    image, truth = work / f"{name}.ome.zarr", work / f"{name}.csv"
    if not truth.exists():
        write_synthetic(str(image), params, str(truth))
    return image, truth, sum(params.cell_radius_um) / 2


def score(spec: Path, points: str, truth: Path, values: dict[Any, Any], tolerance: float) -> Any:
    """One run of ``spec`` with ``values`` set, scored against ``truth``."""
    result = tune(spec, str(truth), params={k: [v] for k, v in values.items()}, points=points, search="grid",
                  tolerance_um=tolerance, probe=0, budget=None, log=lambda *_: None)  # fmt: skip
    return result.best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/cvpl-bench-heldout")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--pair", nargs=2, default=["hard_tune", "hard_heldout"], metavar=("TUNE", "HELD_OUT"),
                        help="the two datasets of benchmarks/methods.toml: tune on the first, report on the second")
    parser.add_argument("--methods", default="cells,dog", help=f"comma-separated, of {', '.join(METHODS)}")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tune_name, held_name = args.pair
    tune_image, tune_truth, tolerance = volume(work, tune_name)
    held_image, held_truth, _ = volume(work, held_name)
    figures: dict[str, Any] = {"machine": machine(["dask", "optuna", "numpy", "scipy"]), "tolerance_um": tolerance}
    figures["pair"] = [tune_name, held_name]
    for name in args.methods.split(","):
        method = METHODS[name]
        source = ROOT / method["spec"]
        on_tune = spec_on(source, tune_image, work / f"cache-{name}-{tune_name}", work / f"{name}-{tune_name}.toml")
        on_held = spec_on(source, held_image, work / f"cache-{name}-{held_name}", work / f"{name}-{held_name}.toml")
        if "space" in method:
            space = dict(parse_param(p) for p in method["space"])
        else:  # the spec's own [tune] table
            space = grid_from_table(tomllib.loads(source.read_text(encoding="utf-8"))["tune"], str(source))
        start = time.perf_counter()
        options = {"trials": args.trials, "seed": args.seed} if method["search"] == "adaptive" else {}
        tuned = tune(on_tune, str(tune_truth), params=space, points=method["points"], search=method["search"],
                     tolerance_um=tolerance, probe=0, log=lambda *_: None, **options)  # fmt: skip
        seconds = time.perf_counter() - start
        held = score(on_held, method["points"], held_truth, tuned.values, tolerance)
        spec = load_spec(source)
        shipped = {(n, p): spec.node(n).params[p] for n, p in space if p in spec.node(n).params}
        untuned = score(on_held, method["points"], held_truth, shipped, tolerance)
        row = {
            "trials": len(tuned.trials), "tune_seconds": round(seconds, 1),
            "tuned": {f"{n}.{p}": v for (n, p), v in tuned.values.items()},
            "f1_on_tune": tuned.best.f1,
            "held_out": {"f1": held.f1, "precision": held.precision, "recall": held.recall, "found": held.found,
                         "true": held.true},
            "shipped_on_held_out": {"f1": untuned.f1, "precision": untuned.precision, "recall": untuned.recall,
                                    "found": untuned.found},
        }  # fmt: skip
        figures[name] = row
        print(f"{name}: tuned {row['tuned']} in {row['trials']} trials ({seconds:.0f} s), F1 on {tune_name} "
              f"{tuned.best.f1:.4f}; on {held_name} F1 {held.f1:.4f} (precision {held.precision:.3f}, recall "
              f"{held.recall:.3f}, {held.found} found of {held.true}); shipped parameters there: F1 "
              f"{untuned.f1:.4f}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
