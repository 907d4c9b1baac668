"""``cvplgraph demo``: a synthetic brain on disk, the demo spec run on it, the counts against the truth.

pandas is imported inside the functions that need it, so that building the parser stays light.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplgraph.cli._common import add_common

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
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
    import pandas as pd

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
    import pandas as pd

    from cvplgraph.engine.plan import make_plan
    from cvplgraph.inspect.runlog import run_and_record
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
    run = run_and_record(plan, scheduler=scheduler, progress=progress, report=str(folder / "results" / "report.html"))
    results = run.results
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
        run.page or "",
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``demo`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "demo",
        help="synthetic brain + specs/demo.toml, end to end",
        description="Write a synthetic brain (an image of an atlas crop with known cells per region), "
        "run the demo spec (threshold → connected components → centroids → cells per region) "
        "and compare the counts, in all and per region, with the truth.",
    )
    p.add_argument("--dir", default="cvplgraph-demo", help="working folder (default: ./cvplgraph-demo)")
    p.add_argument(
        "--atlas",
        default=None,
        metavar="FOLDER",
        help="the Allen CCFv3 atlas of ../shared/data when found (default), 'procedural', or an atlas folder",
    )
    p.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address, 'threads' / 'sync', or 'cluster' "
                   "(a LocalCluster; default: threads, the demo is small)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Run the demo and print the counts against the truth, the outputs and what to try next."""
    s = run_demo(args.dir, atlas=args.atlas, scheduler=args.scheduler, progress=not args.quiet)
    print(f"cells found: {s.cells_found}, true cells: {s.true_cells} ({s.error_percent:+.2f} %)")
    print("cells per region (both hemispheres), found / true:")
    for row in s.regions.head(12).itertuples():
        print(f"  {row.acronym:<16} {row.found:>6} / {row.true:<6} ({row.error_percent:+.1f} %)")
    if len(s.regions) > 12:
        print(f"  … {len(s.regions) - 12} more regions in {s.outputs['regions'].split(', ')[0]}")
    print(f"time: {s.seconds:.1f} s in all, {s.pipeline_seconds:.1f} s in the pipeline")
    for name, target in s.outputs.items():
        print(f"output {name}: {target}")
    print(f"cache: {s.cache}")
    print(f"report: {s.report} (open it in a browser)")
    print(f"next: `cvplgraph plan {s.spec}` shows every node cached; edit a parameter there and plan again")
    return 0
