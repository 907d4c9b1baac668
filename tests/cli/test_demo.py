"""The demo pipeline on synthetic brains: cells per region against the known truth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cvplgraph.cli.demo import run_demo
from cvplgraph.synth.brain import find_atlas_folder

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

ATLASES = [
    "procedural",
    pytest.param(
        None,
        marks=pytest.mark.skipif(find_atlas_folder() is None, reason="the Allen atlas of ../shared/data is absent"),
        id="allen",
    ),
]


@pytest.mark.parametrize("atlas", ATLASES)
def test_counts_per_region_match_the_truth(tmp_path: Path, atlas: str | None) -> None:
    summary = run_demo(tmp_path, atlas=atlas, scheduler="threads", say=lambda _: None)
    regions = summary.regions.set_index("id")
    big = regions[(regions["true"] >= 200) & (regions.index > 0)]
    assert len(big) >= 3
    assert (big["error_percent"].abs() <= 2.0).all(), big
    # points outside the atlas volume and in id 0 are reported with their true number
    truth = pd.read_csv(tmp_path / "cells.csv")
    assert regions.loc[-1, "found"] == (truth["region_id"] == -1).sum() > 0
    assert abs(regions.loc[0, "found"] - (truth["region_id"] == 0).sum()) <= 0.02 * regions.loc[0, "true"]
    table = pd.read_csv(tmp_path / "results" / "regions.csv")
    assert table[table["hemisphere"] == "both"]["cells"].sum() == summary.cells_found
    page = Path(summary.report).read_text(encoding="utf-8")
    assert summary.report == str(tmp_path / "results" / "report.html")
    assert f">{summary.cells_found:,}<" in page  # the count, as the report's tables print it
    assert "data:image/png;base64," in page and "<svg" in page
