"""The command line, run as a user runs it: a subprocess per command."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvplgraph.cli import build_parser, main

pytestmark = pytest.mark.slow  # whole runs, subprocesses or every op's conformance; see pyproject.toml's markers

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ROOT = Path(__file__).resolve().parents[2]


def cvplgraph(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cvplgraph", *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600
    )


def test_demo_counts_within_two_percent_and_second_run_is_cached(tmp_path: Path) -> None:
    """The demo with its real LocalCluster; the counts must match the synthetic truth, in all and per region."""
    out = cvplgraph("demo", "--dir", str(tmp_path / "demo"), "--atlas", "procedural", "--quiet", "--scheduler",
                    "cluster")
    assert out.returncode == 0, out.stderr
    found = int(out.stdout.split("cells found: ")[1].split(",")[0])
    truth = pd.read_csv(tmp_path / "demo" / "cells.csv")
    assert len(truth) > 500
    assert abs(found - len(truth)) <= 0.02 * len(truth)
    assert "cells per region" in out.stdout and "outside_atlas" in out.stdout
    for name in ("regions.csv", "summary.csv", "regions.png", "cells.csv", "counts.csv"):
        assert (tmp_path / "demo" / "results" / name).exists(), name
    # BrainGlobe's summary accounts for every cell in the brain, whatever the imaged volume of its region
    summary = pd.read_csv(tmp_path / "demo" / "results" / "summary.csv")
    per_cell = pd.read_csv(tmp_path / "demo" / "results" / "cells.csv")
    assert summary["total_cells"].sum() == (per_cell["region_id"] > 0).sum() > 0
    plan = cvplgraph("plan", str(tmp_path / "demo" / "demo.toml"), "--json")
    assert plan.returncode == 0, plan.stderr
    statuses = {n["name"]: n["status"] for n in json.loads(plan.stdout)["nodes"]}
    assert statuses == {
        "input": "input",
        "atlas": "input",
        "mask": "cached",
        "cells": "cached",
        "centroids": "cached",
        "counts": "cached",
        "regions": "cached",
        "cell_regions": "cached",
        "region_map": "cached",
    }


def test_run_then_run_again(spec_file: Path) -> None:
    first = cvplgraph("run", str(spec_file), "--scheduler", "threads")
    assert first.returncode == 0, first.stderr
    assert "computed: mask, cells, centroids, counts" in first.stdout
    csv = (spec_file.parent / "results" / "centroids.csv").read_bytes()
    second = cvplgraph("run", str(spec_file), "--scheduler", "threads")
    assert second.returncode == 0, second.stderr
    assert "everything is cached" in second.stdout and "computed: nothing" in second.stdout
    assert (spec_file.parent / "results" / "centroids.csv").read_bytes() == csv


def test_plan_shows_reason_shape_chunks_bytes(spec_file: Path) -> None:
    out = cvplgraph("plan", str(spec_file))
    assert out.returncode == 0, out.stderr
    mask_line = next(line for line in out.stdout.splitlines() if line.startswith("mask "))
    assert "to compute" in mask_line and "48×192×192" in mask_line and "24×96×96" in mask_line
    assert "1.69 MiB" in mask_line and mask_line.endswith("new")


def test_bad_spec_is_one_line_exit_1_and_touches_nothing(spec_file: Path) -> None:
    assert cvplgraph("run", str(spec_file), "--scheduler", "threads").returncode == 0
    manifest = sorted((spec_file.parent / "cache" / "manifest").iterdir())
    before = {p: p.read_bytes() for p in manifest}
    text = spec_file.read_text().replace("level = 0.3", 'level = "bright"')
    spec_file.write_text(text)
    out = cvplgraph("run", str(spec_file))
    assert out.returncode == 1
    number = text.splitlines().index('level = "bright"') + 1
    line = f"{spec_file}:{number}: nodes.mask.level: expected a finite number, got 'bright'"
    assert out.stderr.strip() == f"cvplgraph: error: {line}"
    assert "Traceback" not in out.stderr
    assert {p: p.read_bytes() for p in sorted((spec_file.parent / "cache" / "manifest").iterdir())} == before
    debug = cvplgraph("run", str(spec_file), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('[input]\nurl = "nowhere.ome.zarr"\n\n[nodes.m]\nop = "threshold"\nimage = "input"\n')
    out = cvplgraph("plan", str(spec))
    assert out.returncode == 1
    assert out.stderr.startswith(f"cvplgraph: error: {tmp_path / 'nowhere.ome.zarr'}: not a readable zarr group")
    assert "Traceback" not in out.stderr


def test_synth_writes_volume_and_truth(tmp_path: Path) -> None:
    out = cvplgraph("synth", str(tmp_path / "v.ome.zarr"), "--shape", "16", "64", "64", "--chunks", "8", "32", "32")
    assert out.returncode == 0, out.stderr
    cells = pd.read_csv(tmp_path / "v_cells.csv")
    assert len(cells) > 0 and {"z", "y", "x", "z_um", "y_um", "x_um"} <= set(cells.columns)
    bad = cvplgraph("synth", str(tmp_path / "w.ome.zarr"), "--shape", "0", "64", "64")
    assert bad.returncode == 1 and "shape" in bad.stderr and "Traceback" not in bad.stderr


def test_synth_stress_options_reach_the_generator(tmp_path: Path) -> None:
    from cvplgraph.io.stores import read_array
    from cvplgraph.synth.volume import SynthParams, synth_volume

    options = ["--pairs", "0.5", "--pair-distance", "0.7", "0.9", "--dim-fraction", "0.3", "--dim-brightness",
               "0.1", "0.3", "--photons", "100", "--gain", "1000", "--offset", "100", "--dtype", "uint16"]  # fmt: skip
    out = cvplgraph("synth", str(tmp_path / "v.ome.zarr"), "--shape", "16", "64", "64", "--chunks", "8", "32", "32",
                    *options)  # fmt: skip
    assert out.returncode == 0, out.stderr
    params = SynthParams(shape=(16, 64, 64), chunks=(8, 32, 32), pairs=0.5, pair_distance=(0.7, 0.9), dim_fraction=0.3,
                         dim_brightness=(0.1, 0.3), photons=100, gain=1000, offset=100, dtype="uint16")  # fmt: skip
    volume, cells = synth_volume(params)
    stored = read_array(str(tmp_path / "v.ome.zarr")).data.compute()
    assert stored.dtype == "uint16" and (stored == volume.data.compute()).all()
    written = pd.read_csv(tmp_path / "v_cells.csv")
    assert (written["partner"] >= 0).sum() > 0
    pd.testing.assert_frame_equal(written, cells, check_exact=False, rtol=1e-12)
    bad = cvplgraph("synth", str(tmp_path / "b"), "--atlas", "procedural", "--photons", "3")
    assert bad.returncode == 1 and "--photons: only for plain volumes" in bad.stderr
    bad = cvplgraph("synth", str(tmp_path / "w.ome.zarr"), "--pair-distance", "1", "3")
    assert bad.returncode == 1 and "pair_distance must be a range" in bad.stderr and "Traceback" not in bad.stderr


def test_help_explains_every_command() -> None:
    out = cvplgraph("--help")
    assert out.returncode == 0
    for command in ("run", "plan", "synth", "demo"):
        assert command in out.stdout
    assert "--json" in cvplgraph("plan", "--help").stdout


def subcommands() -> list[str]:
    """Every sub-command the parser has, read from its sub-parsers action so that none is forgotten."""
    (action,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_the_parser_has_the_commands() -> None:
    assert {"run", "plan", "report", "bench", "tune", "train", "ops", "synth", "demo", "view", "cache"} <= set(
        subcommands()
    )


@pytest.mark.parametrize("command", subcommands())
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cvplgraph {command} ")
    assert "--debug" in out


#: Heavy libraries that starting the command line must not import.
HEAVY = ("dask", "distributed", "xarray", "pandas", "zarr", "napari", "optuna")

LAZY_START = """\
import sys
from cvplgraph.cli import main
for argv in {argv!r}:
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [[["--version"]], [["--help"]], [[]], [[command, "--help"] for command in subcommands()]],
    ids=["version", "help", "no-command", "every-command-help"],
)
def test_start_up_imports_no_heavy_library(argv: list[list[str]]) -> None:
    """``cvplgraph --version`` and ``--help`` (its own and every command's) stay light, in a fresh process."""
    code = LAZY_START.format(argv=argv, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_import_cvplgraph_imports_no_heavy_library() -> None:
    code = f"import sys, cvplgraph; cvplgraph.__version__; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_points_output_that_found_nothing_is_said(tmp_path: Path) -> None:
    """Raw uint16 counts (cells at ≈ 1 % of 65 535) under a fixed level of 0.3: the run succeeds but
    says, on stderr, that the node found nothing and why that may be; specs/cells.toml finds them."""
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    params = SynthParams(shape=(24, 96, 96), chunks=(24, 96, 96), seed=1, dtype="uint16", gain=1000.0, offset=100.0)
    cells = write_synthetic(str(tmp_path / "scan.ome.zarr"), params)
    (tmp_path / "level.toml").write_text(
        '[input]\nurl = "scan.ome.zarr"\n[nodes.mask]\nop = "threshold"\nimage = "input"\nlevel = 0.3\n'
        '[nodes.cells]\nop = "connected_components"\nmask = "mask"\n'
        '[nodes.centres]\nop = "centroids"\nlabels = "cells"\n[outputs]\ncentres = "centres.csv"\n'
    )
    out = cvplgraph("run", "level.toml", "--quiet", "--scheduler", "threads", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "warning: centres found no objects" in out.stderr and "specs/cells.toml" in out.stderr
    (tmp_path / "cells.toml").write_text(
        (ROOT / "specs" / "cells.toml").read_text().replace("synthetic.ome.zarr", "scan.ome.zarr")
    )
    out = cvplgraph("run", "cells.toml", "--quiet", "--scheduler", "threads", cwd=tmp_path)
    assert out.returncode == 0 and "found no objects" not in out.stderr, out.stderr
    assert abs(len(pd.read_csv(tmp_path / "results" / "cells.csv")) - len(cells)) <= 0.05 * len(cells)


DAMAGED_SPEC = """\
[input]
url = "scan.ome.zarr"
{extra}
[nodes.mask]
op = "threshold"
image = "input"
level = 0.3

[nodes.cells]
op = "connected_components"
mask = "mask"

[nodes.centres]
op = "centroids"
labels = "cells"
image = "input"

[outputs]
centres = "centres.csv"
"""


def damaged_scan(folder: Path) -> np.ndarray:
    """A float32 scan of (24, 96, 96) in (12, 48, 48) chunks, two NaN and one +Inf in chunk (1, 1, 0); its values."""
    import zarr

    from cvplgraph.synth.volume import SynthParams, write_synthetic

    write_synthetic(str(folder / "scan.ome.zarr"), SynthParams(shape=(24, 96, 96), chunks=(12, 48, 48), seed=2))
    array = zarr.open_group(str(folder / "scan.ome.zarr"), mode="r+")["0"]
    block = array[12:24, 48:96, 0:48]
    block[0, 0, 0], block[5, 6, 7], block[11, 47, 47] = np.nan, np.nan, np.inf
    array[12:24, 48:96, 0:48] = block
    return np.asarray(array[:])


def test_nan_voxels_stop_the_run_in_one_line_or_are_read_as_0_and_counted(tmp_path: Path) -> None:
    """Default: one line naming the store, the block and its voxels, and the count; exit 1, nothing committed.
    nonfinite = "zero": the run finishes, says on stderr how many it replaced, and records the number;
    its cells are those of the scan with NaN/Inf set to 0, counted with scipy on the whole array."""
    from scipy import ndimage

    raw = damaged_scan(tmp_path)
    (tmp_path / "spec.toml").write_text(DAMAGED_SPEC.format(extra=""))
    out = cvplgraph("run", "spec.toml", "--quiet", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    store = tmp_path / "scan.ome.zarr"
    assert out.stderr.strip().splitlines() == [
        f"cvplgraph: error: {store} level 0: block (1, 1, 0) (voxels z 12:24, y 48:96, x 0:48) holds 3 non-finite "
        "value(s) (2 NaN, 1 ±Inf); expected finite intensities (a broken conversion?). Fix the store, or set "
        '[input] nonfinite = "zero" to read them as 0'
    ]
    assert not (tmp_path / "cache" / "manifest").exists() and not (tmp_path / "centres.csv").exists()

    (tmp_path / "spec.toml").write_text(DAMAGED_SPEC.format(extra='nonfinite = "zero"\n'))
    out = cvplgraph("run", "spec.toml", "--quiet", "--scheduler", "cluster", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"warning: input: 3 non-finite voxel(s) (NaN or ±Inf) of {store} were read as 0" in out.stderr
    record = json.loads(next((tmp_path / "cache" / "runs").glob("*.json")).read_text())
    assert record["tallies"] == {"input.nonfinite": 3} and len(record["warnings"]) == 1
    _, expected = ndimage.label(np.where(np.isfinite(raw), raw, 0) > 0.3, structure=np.ones((3, 3, 3)))
    assert len(pd.read_csv(tmp_path / "centres.csv")) == expected


def test_a_chunk_of_garbage_bytes_is_one_line_naming_its_file(tmp_path: Path) -> None:
    """One chunk file of the input overwritten with random bytes, on the default LocalCluster: one line
    naming the chunk's file, its index, the level and store and the decoder's complaint; exit 1."""
    damaged_scan(tmp_path)
    chunk = tmp_path / "scan.ome.zarr" / "0" / "c" / "0" / "1" / "1"
    chunk.write_bytes(np.random.default_rng(3).bytes(chunk.stat().st_size))
    (tmp_path / "spec.toml").write_text(DAMAGED_SPEC.format(extra='nonfinite = "zero"\n'))
    out = cvplgraph("run", "spec.toml", "--quiet", "--scheduler", "cluster", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"cvplgraph: error: {chunk}: chunk (0, 1, 1) of level 0 of {tmp_path / 'scan.ome.zarr'}"
                               " cannot be read (")  # fmt: skip
    assert "blosc" in lines[0]  # the decoder's complaint, or the frame's header that does not fit the chunk


def test_a_halo_wider_than_the_volume_is_a_spec_problem(spec_file: Path) -> None:
    """``sigma = 1e6`` on a gaussian: one line at the field, with the largest sigma this volume holds, from
    `plan` and `run` alike, before anything is written."""
    text = spec_file.read_text().replace(
        '[nodes.mask]\nop = "threshold"\nimage = "input"',
        '[nodes.smooth]\nop = "gaussian"\nimage = "input"\nsigma = 1e6\n\n'
        '[nodes.mask]\nop = "threshold"\nimage = "smooth"',
    )
    spec_file.write_text(text)
    number = text.splitlines().index("sigma = 1e6") + 1
    for command in (["plan"], ["run", "--scheduler", "threads"]):
        out = cvplgraph(*command[:1], str(spec_file), *command[1:])
        assert out.returncode == 1
        assert out.stderr.startswith(f"cvplgraph: error: {spec_file}:{number}: nodes.smooth.sigma: 1e+06 needs a halo")
        assert out.stderr.count("\n") == 1 and "expected at most" in out.stderr and "Traceback" not in out.stderr
    assert not (spec_file.parent / "cache").exists()


SPEC_GARBAGE = {
    "random bytes": bytes(__import__("random").Random(5).randrange(256) for _ in range(400)),
    "UTF-8 text, not TOML": "日本語のテキスト\nκείμενο = = [[\n".encode(),
    "NUL bytes": b"\x00\x01\x02[input]\x00",
    "a byte-order mark": b'\xef\xbb\xbf[input]\nurl = "x"\n',
    "half a table": b'[nodes.a\nop = "threshold"\n',
}


@pytest.mark.parametrize("kind", list(SPEC_GARBAGE))
def test_a_spec_file_that_is_no_toml_is_one_line(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.toml"
    path.write_bytes(SPEC_GARBAGE[kind])
    for command in ("run", "plan"):
        assert main([command, str(path), "--scheduler", "threads"] if command == "run" else [command, str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"cvplgraph: error: {path}:") and err.count("\n") == 1, err
        assert "not valid TOML" in err or "is not UTF-8 text" in err
    assert [p.name for p in tmp_path.iterdir()] == ["spec.toml"]
