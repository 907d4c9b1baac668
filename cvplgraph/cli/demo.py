"""Synthetic data on disk, and the end-to-end demo that runs on it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class DemoSummary:
    cells_found: int
    true_cells: int
    seconds: float
    pipeline_seconds: float
    spec: str
    cache: str
    outputs: dict[str, str]
    regions: pd.DataFrame  # found and true cells per region with ≥ 1 true cell (both hemispheres)
    report: str = ""  # the run's HTML report

    @property
    def error_percent(self) -> float:
        return 100.0 * (self.cells_found - self.true_cells) / max(self.true_cells, 1)


def demo_spec_text() -> str:
    return resources.files("cvplgraph").joinpath("specs/demo.toml").read_text(encoding="utf-8")


def compare_regions(found: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Cells per region found by a run (``region_counts`` table) beside the synthetic truth, both hemispheres."""
    both = found[found["hemisphere"] == "both"].set_index("id")
    true = truth.groupby("id")["cells"].sum()
    out = pd.DataFrame({"acronym": both["acronym"].reindex(true.index), "true": true})
    out["found"] = both["cells"].reindex(true.index).fillna(0).astype(int)
    out["error_percent"] = 100.0 * (out["found"] - out["true"]) / out["true"]
    return out.sort_values("true", ascending=False).rename_axis("id").reset_index()


def run_demo(
    folder: str | Path,
    *,
    atlas: str | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    say: Any = print,
) -> DemoSummary:
    """Write a synthetic brain (once) next to a copy of the demo spec, run it, compare with the truth.

    ``atlas``: None = the Allen CCFv3 atlas of ``../shared/data`` when it is there, else a
    procedural one; ``"procedural"``; or an Allen-style atlas folder.
    """
    from cvplgraph.engine.execute import execute
    from cvplgraph.engine.plan import make_plan
    from cvplgraph.inspect.report import write_report
    from cvplgraph.inspect.runlog import make_record, new_run_id, save_record
    from cvplgraph.spec.parse import load_spec
    from cvplgraph.synth.brain import write_synthetic_brain

    start = time.perf_counter()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "demo.toml"
    spec_path.write_text(demo_spec_text(), encoding="utf-8")
    cells_csv, regions_csv = folder / "cells.csv", folder / "regions_truth.csv"
    if not ((folder / "image.ome.zarr").exists() and cells_csv.exists() and regions_csv.exists()):
        say(f"writing a synthetic brain with known cells per region → {folder}")
        write_synthetic_brain(folder, atlas=atlas, say=say)
    truth = pd.read_csv(cells_csv)
    spec = load_spec(spec_path)
    plan = make_plan(spec)
    say(f"running {spec_path}: {len(plan.to_compute())} node(s) to compute")
    started = time.time()
    results = execute(plan, scheduler=scheduler, progress=progress, profile=True)
    record = make_record(plan, results.report, results, run_id=new_run_id(started), started=started)
    save_record(record)
    page = write_report(record, str(folder / "results" / "report.html"))
    found = pd.read_csv(folder / "results" / "regions.csv")
    return DemoSummary(
        int(results["counts"].attrs["total"]),
        len(truth),
        time.perf_counter() - start,
        results.report.seconds,
        str(spec_path),
        spec.cache_url,
        dict(results.report.outputs),
        compare_regions(found, pd.read_csv(regions_csv)),
        page,
    )
