"""Chunks absent from the input store: counted when planning, said by `plan` and `run`, refused on request."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cvplgraph
from cvplgraph.cache.fingerprint import survey_input
from cvplgraph.errors import InputError


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvplgraph.cli", *args], capture_output=True, text=True)


@pytest.fixture
def holed(spec_file: Path, tmp_path: Path, synthetic: tuple[Path, object]) -> tuple[Path, Path]:
    """The fixture spec over a copy of the synthetic volume (2 × 2 × 2 chunks) with two chunks deleted."""
    copy = tmp_path / "holed.ome.zarr"
    shutil.copytree(synthetic[0], copy)
    for key in ("0/0/1", "1/1/0"):
        (copy / "0" / "c" / key).unlink()
    spec_file.write_text(spec_file.read_text().replace(str(synthetic[0]), str(copy)))
    return spec_file, copy


def stored(level: Path) -> set[str]:
    """Chunk files present, as keys relative to the level (an independent count: the file system)."""
    return {str(p.relative_to(level)) for p in (level / "c").rglob("*") if p.is_file()}


def test_absent_chunks_are_counted_against_the_files_there(holed: tuple[Path, Path]) -> None:
    spec_file, copy = holed
    survey = survey_input(cvplgraph.load_spec(spec_file).input)
    grid = {f"c/{z}/{y}/{x}" for z in range(2) for y in range(2) for x in range(2)}
    assert survey.total == len(grid) == 8
    assert survey.absent == len(grid - stored(copy / "0")) == 2
    assert set(survey.examples) == {"c/0/0/1", "c/1/1/0"}


def test_a_crop_counts_only_the_chunks_it_reads(holed: tuple[Path, Path]) -> None:
    """The crop z 0–24, y 0–96, x 0–192 reads chunks (0, 0, 0) and (0, 0, 1): one of them is absent."""
    spec_file, _ = holed
    text = spec_file.read_text().replace("[input]\n", "[input]\ncrop = { z = [0, 24], y = [0, 96], x = [0, 192] }\n")
    spec_file.write_text(text)
    survey = survey_input(cvplgraph.load_spec(spec_file).input)
    assert (survey.absent, survey.total, survey.examples) == (1, 2, ("c/0/0/1",))
    spec_file.write_text(text.replace("y = [0, 96]", "y = [96, 192]"))  # (0, 1, 0) and (0, 1, 1): both there
    assert survey_input(cvplgraph.load_spec(spec_file).input).absent == 0


def test_plan_and_run_say_so_and_the_record_keeps_it(holed: tuple[Path, Path]) -> None:
    spec_file, copy = holed
    plan = cli("plan", str(spec_file))
    assert plan.returncode == 0
    line = f"warning: {copy}/0: 2 of 8 chunks absent (c/0/0/1, c/1/1/0), read as the fill value 0"
    assert line in plan.stdout
    run = cli("run", str(spec_file), "--scheduler", "threads")
    assert run.returncode == 0, run.stderr
    assert line in run.stderr
    (record,) = (spec_file.parent / "cache" / "runs").glob("*.json")
    assert any("2 of 8 chunks absent" in w for w in json.loads(record.read_text())["warnings"])


def test_missing_chunks_error_refuses_before_anything_is_written(holed: tuple[Path, Path]) -> None:
    spec_file, copy = holed
    spec_file.write_text(spec_file.read_text().replace("[input]\n", '[input]\nmissing_chunks = "error"\n'))
    with pytest.raises(InputError, match="2 of 8 chunks absent"):
        cvplgraph.plan(cvplgraph.load_spec(spec_file))
    out = cli("run", str(spec_file))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f'cvplgraph: error: {copy}/0: 2 of 8 chunks absent (c/0/0/1, c/1/1/0…); [input] missing_chunks = "error" '
        "expects every chunk the selection reads to exist"
    ]
    assert not (spec_file.parent / "cache").exists()


def test_a_whole_input_says_nothing(spec_file: Path) -> None:
    spec = cvplgraph.load_spec(spec_file)
    assert cvplgraph.plan(spec).warnings == []
    bad = spec_file.read_text().replace("[input]\n", '[input]\nmissing_chunks = "zero"\n')
    spec_file.write_text(bad)
    out = cli("plan", str(spec_file))
    assert out.returncode == 1 and "input.missing_chunks: expected \"fill\" or \"error\", got 'zero'" in out.stderr
