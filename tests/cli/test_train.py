"""`cvplgraph train --objects`: what the command prints, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from cvplgraph.cli import main
from cvplgraph.synth.volume import SynthParams, write_synthetic

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

PARAMS = SynthParams(shape=(16, 96, 96), chunks=(16, 48, 48), brightness=(0.05, 0.6), noise=0.03, seed=5)
UM = ["z_um", "y_um", "x_um"]
SPEC = """\
[input]
url = "image.ome.zarr"

[cache]
url = "cache"

[nodes.candidates]
op = "blobs"
image = "input"
method = "peaks"
min_sigma = 1.5
threshold = 0.12

[nodes.smooth]
op = "gaussian"
image = "input"

[nodes.cells]
op = "classify_objects"
points = "candidates"
model = "models/objects-0000000000000000.npz"
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cvplgraph.bench.run import run_node
    from cvplgraph.spec.parse import load_spec

    folder = tmp_path_factory.mktemp("train_cli")
    truth = write_synthetic(str(folder / "image.ome.zarr"), PARAMS)
    (folder / "spec.toml").write_text(SPEC)
    table, _ = run_node(load_spec(folder / "spec.toml"), "candidates")
    found = table.to_dataframe()
    distance, _ = cKDTree(truth[UM].to_numpy()).query(found[UM].to_numpy())
    voxel = np.asarray(PARAMS.voxel_size)

    def markers(points: np.ndarray) -> str:
        return "".join(f"<Marker><MarkerX>{x}</MarkerX><MarkerY>{y}</MarkerY><MarkerZ>{z}</MarkerZ></Marker>"
                       for z, y, x in np.rint(points / voxel).astype(int))  # fmt: skip

    (folder / "marks.xml").write_text(
        "<?xml version='1.0'?><CellCounter_Marker_File><Marker_Data>"
        f"<Marker_Type><Type>1</Type>{markers(found[UM].to_numpy()[distance > 6][:40])}</Marker_Type>"
        f"<Marker_Type><Type>2</Type>{markers(truth[UM].to_numpy())}</Marker_Type>"
        "</Marker_Data></CellCounter_Marker_File>"
    )
    return folder


def train(folder: Path, *args: str) -> list[str]:
    return ["train", str(folder / "spec.toml"), "--annotations", str(folder / "marks.xml"), "--out",
            str(folder / "models"), "--quiet", *args]  # fmt: skip


def test_train_objects_prints_scores_and_the_usage_line(folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(train(folder, "--objects", "candidates", "--voxel-size", "4", "1.5", "1.5", "--trees", "20")) == 0
    out = capsys.readouterr().out
    assert "trained on " in out and " positives (cells) and 40 negatives" in out and "cross-validation" in out
    model = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("model: "))
    assert Path(model).is_file() and Path(model).parent == (folder / "models").resolve()
    assert f'use it: op = "classify_objects", points = "candidates", model = "{model}"' in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objects", "smooth"], "--objects smooth: op gaussian gives Image, not Points; Points nodes of the spec"),
        (["--objects", "candidates"], "CellCounter markers are voxels; give their size with --voxel-size Z Y X"),
        (["--objects", "candidates", "--voxel-size", "4", "1.5", "1.5", "--features", "contrast,size"],
         "no column contrast, size in the table"),
        (["--objects", "candidates", "--image", "smooth"], "--image: options of the pixel classifier"),
        (["--objects", "candidates", "--sigmas", "2"], "--sigmas: options of the pixel classifier"),
        (["--crop", "0", "8", "0", "48", "0", "48"], "--crop: options of the object classifier; add --objects NODE"),
        (["--objects", "candidates", "--voxel-size", "4", "1.5", "1.5", "--crop", "0", "8", "9", "9", "0", "48"],
         "--crop 0 8 9 9 0 48: expected Z0 Z1 Y0 Y1 X0 X1"),
        (["--objects", "candidates", "--voxel-size", "4", "1.5", "1.5", "--tolerance", "0"],
         "--tolerance 0.0: expected a pairing distance > 0 µm"),
    ],
)  # fmt: skip
def test_errors_are_one_line(folder: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    assert main(train(folder, *args)) == 1
    err = capsys.readouterr().err
    assert err.startswith("cvplgraph: error: ") and err.count("\n") == 1 and message in err, err
