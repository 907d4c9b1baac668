"""`cvplgraph tune` as a user runs it: one line per trial under --quiet, one-line errors, the files."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from cvplgraph.synth.volume import SynthParams, write_synthetic

pytestmark = pytest.mark.slow  # subprocesses and whole runs; see pyproject.toml's markers


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """threshold → connected components → centroids on a small synthetic volume (truth beside it)."""
    folder = tmp_path_factory.mktemp("tune-cli")
    url = folder / "image.ome.zarr"
    write_synthetic(str(url), SynthParams(shape=(24, 80, 80), chunks=(12, 40, 40), seed=11, noise=0.04),
                    str(folder / "cells.csv"))  # fmt: skip
    path = folder / "spec.toml"
    path.write_text(
        f'[input]\nurl = "{url}"\n\n[cache]\nurl = "cache"\n\n'
        '[nodes.mask]\nop = "threshold"\nimage = "input"\nlevel = 0.3\n\n'
        '[nodes.cells]\nop = "connected_components"\nmask = "mask"\n\n'
        '[nodes.centroids]\nop = "centroids"\nlabels = "cells"\nimage = "input"\n'
    )
    return path


def tune(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvplgraph.cli", "tune", str(spec), "--truth", "cells.csv", *args],
                          capture_output=True, text=True, cwd=spec.parent)  # fmt: skip


def test_quiet_still_prints_one_line_per_trial_and_writes_the_trials(spec: Path) -> None:
    out = tune(spec, "--param", "mask.level=0.35:0.55:3", "--tolerance", "4,4,6", "--quiet")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    done = [line.split(":")[0] for line in lines if re.match(r"trial \d+/", line)]
    assert done == ["trial 1/3", "trial 2/3", "trial 3/3"]
    assert "within 4,4,6 µm" in (spec.parent / "spec.tuned.toml").read_text().splitlines()[1]
    table = pd.read_csv(spec.parent / "spec-tune" / "trials.csv")
    assert table["mask.level"].tolist() == [0.35, 0.45, 0.55]
    for row in table.itertuples():
        assert len(pd.read_csv(spec.parent / "spec-tune" / "trials" / f"{row.trial:04d}.csv")) == row.found


def test_nothing_found_is_one_line_and_exit_1(spec: Path) -> None:
    out = tune(spec, "--param", "mask.level=0.999,1.5", "--quiet")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "none of the 2 trials found a cell" in line and "--points NODE" in line


def test_bad_options_are_one_line_in_the_commands_syntax(spec: Path) -> None:
    for args, expected in (
        (["--param", "mask.level=0.3", "--tolerance", "4,4"], "--tolerance '4,4': expected µm > 0, or three Z,Y,X"),
        (["--param", "mask.level=0.3..0.1"], "--param 'mask.level=0.3..0.1': expected low < high"),
        (["--param", "mask.level=0.1..0.3", "--search", "grid"], "--search grid: mask.level=0.1..0.3 is a range"),
    ):
        out = tune(spec, *args)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert expected in line


def test_the_shipped_cells_spec_tunes_with_nothing_but_the_truth(tmp_path: Path) -> None:
    """`cvplgraph tune specs/cells.toml --truth FILE`: the spec's own [tune] ranges, adaptive search,
    a tuned spec whose values lie in (or beyond, when widened) those ranges and score what they say."""
    root = Path(__file__).resolve().parents[2]
    write_synthetic(str(tmp_path / "synthetic.ome.zarr"),
                    SynthParams(shape=(24, 96, 96), chunks=(24, 96, 96), seed=5, noise=0.05),
                    str(tmp_path / "cells.csv"))  # fmt: skip
    spec = tmp_path / "cells.toml"
    spec.write_text((root / "specs" / "cells.toml").read_text(encoding="utf-8"), encoding="utf-8")
    out = tune(spec, "--trials", "6", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "adaptive search" in out.stdout, out.stdout
    trials = pd.read_csv(tmp_path / "cells-tune" / "trials.csv")
    assert len(trials) == 6 and {"cells.threshold", "cells.diameter"} <= set(trials.columns)
    best = trials.loc[trials["f1"].idxmax()]
    tuned = tomllib.loads((tmp_path / "cells.tuned.toml").read_text(encoding="utf-8"))["nodes"]["cells"]
    assert (tuned["threshold"], tuned["diameter"]) == (best["cells.threshold"], best["cells.diameter"]), tuned
    assert best["f1"] >= 0.9  # a bright, sparse volume: the method finds its cells across the ranges
