"""Outputs never destroy what they must not: the input, an atlas file, the cache, another output, or
an existing path that is not an earlier output of the same spec. One line naming the field, exit 1,
and the protected files byte for byte as before."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import SPEC

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def digest(folder: Path) -> str:
    """Every file below ``folder`` (or the file itself), names and bytes."""
    h = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(folder.parent)).encode() + p.read_bytes())
    return h.hexdigest()


def run(spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvplgraph", "run", str(spec), "--quiet", "--scheduler", "threads"],
                          capture_output=True, text=True, cwd=spec.parent, env=ENV, timeout=300)  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, synthetic: tuple[Path, pd.DataFrame]) -> tuple[Path, Path]:
    """A copy of the synthetic input inside a fresh project folder (in a folder of its own)."""
    image = tmp_path / "raw.ome.zarr" / "scan.ome.zarr"
    shutil.copytree(synthetic[0], image)
    return tmp_path, image


CASES = [
    # (what the output is, the [outputs] lines, the words the one-line error must hold)
    ("the input itself", 'mask = "raw.ome.zarr/scan.ome.zarr"', "is the input ([input] url)"),
    ("a store holding the input", 'mask = "raw.ome.zarr"', "holds the input ([input] url)"),
    ("a file inside the input store", 'centroids = "raw.ome.zarr/scan.ome.zarr/cells.csv"',
     "lies inside the input ([input] url)"),
    ("inside the cache", 'centroids = "cache/cells.csv"', "lies inside the cache ([cache] url)"),
    ("the same path twice", 'centroids = "results/x.csv"\ncounts = "results/x.csv"', "is also the output of"),
    ("below a file", 'centroids = "notes.txt/cells.csv"', "is a file, not a folder"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "outputs", "words"), CASES, ids=[c[0] for c in CASES])
def test_an_output_that_would_destroy_something_is_refused(project: tuple[Path, Path], what: str, outputs: str,
                                                           words: str) -> None:  # fmt: skip
    folder, image = project
    spec = folder / "spec.toml"
    spec.write_text(SPEC.format(url=image, level=0.3).split("[outputs]")[0] + "[outputs]\n" + outputs + "\n")
    (folder / "cache").mkdir()
    (folder / "notes.txt").write_text("a file where a folder would be")
    before = digest(folder / "raw.ome.zarr")
    done = run(spec)
    assert done.returncode == 1, (what, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "outputs." in lines[0] and "spec.toml:" in lines[0], lines
    assert "Traceback" not in done.stderr
    assert digest(folder / "raw.ome.zarr") == before
    assert not (folder / "results").exists() and not list((folder / "cache").iterdir())


def test_an_existing_path_is_replaced_only_when_this_spec_wrote_it(project: tuple[Path, Path]) -> None:
    folder, image = project
    spec = folder / "spec.toml"
    spec.write_text(SPEC.format(url=image, level=0.3))
    foreign = folder / "results" / "centroids.csv"
    foreign.parent.mkdir()
    foreign.write_text("someone's table\n")
    done = run(spec)
    assert done.returncode == 1 and "outputs.centroids" in done.stderr
    assert "is not an output of cvplgraph" in done.stderr
    assert foreign.read_text() == "someone's table\n"
    foreign.unlink()
    first = run(spec)
    assert first.returncode == 0, first.stderr
    again = run(spec)  # its own earlier output: replaced (with the same bytes)
    assert again.returncode == 0, again.stderr
    other = folder / "other.toml"  # a copy of the spec writing to the same files: refused
    other.write_text(spec.read_text())
    table = foreign.read_bytes()
    done = run(other)
    assert done.returncode == 1 and "exists as an output of another spec" in done.stderr
    assert str(spec.resolve()) in done.stderr and foreign.read_bytes() == table


def test_plan_reports_it_too(project: tuple[Path, Path]) -> None:
    folder, image = project
    spec = folder / "spec.toml"
    text = SPEC.format(url=image, level=0.3).split("[outputs]")[0]
    spec.write_text(text + '[outputs]\nmask = "raw.ome.zarr/scan.ome.zarr"\n')
    done = subprocess.run([sys.executable, "-m", "cvplgraph", "plan", str(spec)], capture_output=True, text=True,
                          cwd=folder, env=ENV, timeout=300)  # fmt: skip
    assert done.returncode == 1 and "is the input" in done.stderr


def test_outputs_get_the_permissions_of_the_users_umask(project: tuple[Path, Path]) -> None:
    """umask 022: every file a run writes into results/ is readable by others (0644), as `open()` gives."""
    folder, image = project
    spec = folder / "spec.toml"
    spec.write_text(SPEC.format(url=image, level=0.3))
    done = subprocess.run([sys.executable, "-m", "cvplgraph", "run", str(spec), "--quiet", "--scheduler", "threads"],
                          capture_output=True, text=True, cwd=folder, env=ENV, timeout=300,
                          preexec_fn=lambda: os.umask(0o022))  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = sorted((folder / "results").iterdir())
    assert len(files) == 4  # two tables and their provenance files
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o644" for f in files}
