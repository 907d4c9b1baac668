"""The trained pixel classifier: sparse painting in, ≥ 0.9 voxel F1 on held-back voxels out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cvplgraph
from cvplgraph.bench.train import train
from cvplgraph.errors import CvplError
from cvplgraph.ops._classifier import ModelError, load
from cvplgraph.ops.testing import check_op

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

SPEC = """\
[input]
url = "{url}"

[nodes.mask]
op = "pixel_classifier"
image = "input"
model = "{model}"

[outputs]
"""


def paint(cells: pd.DataFrame, shape: tuple[int, ...], scale: tuple[float, ...], which: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Annotations as a person paints them: a few voxels at the centre of some cells (2), a
    sparse scatter of background voxels far from every cell (1)."""
    out = np.zeros(shape, np.uint8)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, scale)], indexing="ij"), axis=-1)
    centres = cells[["z_um", "y_um", "x_um"]].to_numpy()
    nearest = np.full(shape, np.inf)
    for c in centres:
        nearest = np.minimum(nearest, np.linalg.norm(grid - c, axis=-1))
    for i in np.flatnonzero(which):
        r = cells.radius_um.iloc[i]
        out[(np.linalg.norm(grid - centres[i], axis=-1) <= 0.5 * r)] = 2
    background = (nearest > 15.0) & (rng.random(shape) < 0.02)
    out[background & (out == 0)] = 1
    return out


@pytest.fixture(scope="module")
def painted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    folder = tmp_path_factory.mktemp("classifier")
    params = SynthParams(shape=(24, 96, 96), chunks=(12, 48, 48), seed=11)
    cells = write_synthetic(str(folder / "v.ome.zarr"), params)
    rng = np.random.default_rng(0)
    in_training = rng.random(len(cells)) < 0.3
    train_labels = paint(cells, params.shape, params.voxel_size, in_training, rng)
    held_labels = paint(cells, params.shape, params.voxel_size, ~in_training, rng)
    held_labels[train_labels > 0] = 0  # evaluate only on voxels never shown to training
    np.save(folder / "paint.npy", train_labels)
    spec_path = folder / "spec.toml"
    spec_path.write_text(SPEC.format(url=folder / "v.ome.zarr", model="unused.npz"))
    report = train(cvplgraph.load_spec(spec_path), str(folder / "paint.npy"), folder / "models",
                   sigmas_um=(1.0, 2.0), trees=16, depth=8)  # fmt: skip
    spec_path.write_text(SPEC.format(url=folder / "v.ome.zarr", model=report.model))
    return {"folder": folder, "report": report, "held": held_labels, "spec": spec_path}


def test_classifier_reaches_f1_on_held_back_voxels(painted: dict) -> None:
    report, held = painted["report"], painted["held"]
    assert report.voxels["cell"] > 100 and report.voxels["background"] > 1000
    results = cvplgraph.run(cvplgraph.load_spec(painted["spec"]), scheduler="threads")
    mask = results["mask"].values
    truth, judged = held == 2, held > 0
    tp = int((mask.astype(bool) & truth & judged).sum())
    f1 = 2 * tp / (int((mask.astype(bool) & judged).sum()) + int(truth.sum()))
    assert f1 >= 0.9, f1
    assert report.held_out_f1 >= 0.9


def test_model_file_is_checked_against_its_name(painted: dict, tmp_path: Path) -> None:
    model = Path(painted["report"].model)
    assert load(model).sigmas_um == (1.0, 2.0)
    tampered = tmp_path / model.name
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="content does not match the digest in its name"):
        load(tampered)
    renamed = tmp_path / "cells-0000000000000000.npz"
    renamed.write_bytes(model.read_bytes())
    with pytest.raises(ModelError, match="content does not match"):
        load(renamed)


def test_classifier_is_chunk_invariant(painted: dict) -> None:
    from cvplgraph import ops
    from cvplgraph.io.stores import read_input

    image = read_input(cvplgraph.load_spec(painted["spec"]).input).values
    check_op(ops.pixel_classifier, {"image": image}, params={"model": str(painted["report"].model)},
             chunkings=[(12, 48, 48), (7, 30, 41), (24, 20, 96)])  # fmt: skip


def test_train_command(painted: dict) -> None:
    folder = painted["folder"]
    out = subprocess.run([sys.executable, "-m", "cvplgraph", "train", str(painted["spec"]), "--annotations",
                          str(folder / "paint.npy"), "--out", str(folder / "cli-models"), "--sigmas", "1", "2",
                          "--trees", "8"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "model: " in out.stdout and 'op = "pixel_classifier"' in out.stdout
    bad = subprocess.run([sys.executable, "-m", "cvplgraph", "train", str(painted["spec"]), "--annotations",
                          str(folder / "v.ome.zarr")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


BEHIND_NORMALIZE = """\
[input]
url = "{url}"

[cache]
url = "{cache}"

[nodes.norm]
op = "normalize"
image = "input"
low = 5.0
high = 99.0

[nodes.mask]
op = "pixel_classifier"
image = "norm"
model = "{model}"
"""


def test_training_on_a_node_behind_normalize(painted: dict) -> None:
    """`train --image norm`: features of the normalised volume (computed through the cache) train the
    model, which then finds the held-back cells when it classifies that node's output in a run."""
    folder = painted["folder"]
    spec_path = folder / "norm.toml"
    fields = {"url": folder / "v.ome.zarr", "cache": folder / "cache"}
    spec_path.write_text(BEHIND_NORMALIZE.format(**fields, model="models/cells-0000000000000000.npz"))
    spec = cvplgraph.load_spec(spec_path)
    with pytest.raises(CvplError, match="--image mask: op pixel_classifier gives Mask, not Image; Image nodes"):
        train(spec, str(folder / "paint.npy"), folder / "norm-models", image="mask")
    report = train(spec, str(folder / "paint.npy"), folder / "norm-models", sigmas_um=(1.0, 2.0), trees=16,
                   depth=8, image="norm")  # fmt: skip
    assert report.image == "norm" and report.model.name != Path(painted["report"].model).name
    spec_path.write_text(BEHIND_NORMALIZE.format(**fields, model=report.model))
    results = cvplgraph.run(cvplgraph.load_spec(spec_path), scheduler="threads")
    mask, held = results["mask"].values.astype(bool), painted["held"]
    truth, judged = held == 2, held > 0
    f1 = 2 * int((mask & truth & judged).sum()) / (int((mask & judged).sum()) + int(truth.sum()))
    assert f1 >= 0.9, f1
    # the mask is the model applied to the normalised volume (not to the input)
    norm = results["norm"].values
    expected = load(report.model).cell_probability(norm, tuple(results["norm"].attrs["scale"])) > 0.5
    assert np.array_equal(mask, expected)


def test_running_a_spec_whose_model_is_not_trained_yet_is_one_line(painted: dict) -> None:
    spec_path = painted["folder"] / "untrained.toml"
    spec_path.write_text(SPEC.format(url=painted["folder"] / "v.ome.zarr", model="models/cells-ffffffffffffffff.npz"))
    out = subprocess.run([sys.executable, "-m", "cvplgraph", "run", str(spec_path), "--scheduler", "threads",
                          "--quiet"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "cells-ffffffffffffffff.npz: cannot read the model" in out.stderr
