"""The object classifier's model file and the classify_objects op (Points → Points)."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array
import numpy as np
import pandas as pd
import pytest

from cvplgraph import ops
from cvplgraph.errors import SpecError
from cvplgraph.ops import _classifier as pixel
from cvplgraph.ops import _object_classifier as oc
from cvplgraph.ops._forest import ModelError
from cvplgraph.spec.parse import parse_spec
from cvplgraph.values import Geometry, Table, to_dataarray

FEATURES = ("contrast", "size", "flatness")


def candidates(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A table like a detector's, with a known rule behind cell / non-cell: cells are bright and
    mid-sized; ``flatness`` is noise; some values are missing or infinite."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "label": np.arange(1, n + 1), "z": rng.uniform(0, 20, n), "y": rng.uniform(0, 50, n),
        "x": rng.uniform(0, 50, n), "contrast": rng.normal(3, 2, n), "size": rng.integers(1, 200, n),
        "flatness": rng.random(n), "region": ["ctx"] * n,
    })  # fmt: skip
    for axis in "zyx":
        frame[f"{axis}_um"] = frame[axis] * 2.0
    frame.loc[frame.index[::37], "flatness"] = np.nan
    frame.loc[frame.index[5::41], "contrast"] = np.inf
    cell = (frame["contrast"] > 3) & frame["size"].between(30, 150)
    return frame, np.where(cell, oc.CELL, oc.NON_CELL)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("objects")
    frame, y = candidates(300, 0)
    columns = oc.feature_columns(frame)
    model = oc.fit(oc.rows(frame, columns), y, columns, trees=40)
    return {"folder": folder, "frame": frame, "y": y, "model": model, "path": oc.save(model, folder)}


def test_default_features_are_the_numeric_columns_but_label_and_coordinates(trained: dict) -> None:
    assert trained["model"].features == FEATURES  # region is text, label and positions are not features
    assert oc.feature_columns(trained["frame"], ["size"]) == ["size"]
    with pytest.raises(oc.FeatureError, match="column region is not numeric"):
        oc.feature_columns(trained["frame"], ["region"])


def test_model_round_trip_predicts_identically_and_loads_without_pickle(trained: dict) -> None:
    path: Path = trained["path"]
    fresh, _ = candidates(500, 1)
    loaded = oc.load(path)
    assert loaded.features == FEATURES
    expected = trained["model"].cell_probability(fresh)
    assert np.array_equal(loaded.cell_probability(fresh), expected)
    assert np.array_equal(loaded.cell_probability(fresh[list(reversed(fresh.columns))]), expected)  # by name
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    # the rule is learnt: well above chance on rows it never saw
    truth = (fresh["contrast"] > 3) & fresh["size"].between(30, 150)
    assert ((expected >= 0.5) == truth).mean() > 0.9


def test_altered_renamed_or_foreign_files_are_rejected(trained: dict, tmp_path: Path) -> None:
    path: Path = trained["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / path.name).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="content does not match the digest in its name"):
        oc.load(tmp_path / path.name)
    (tmp_path / "objects-0123456789abcdef.npz").write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match="content does not match"):
        oc.load(tmp_path / "objects-0123456789abcdef.npz")
    rng = np.random.default_rng(0)
    x, y = rng.random((60, 4)).astype(np.float32), np.repeat([pixel.BACKGROUND, pixel.CELL], 30)
    pixel_path = pixel.save(pixel.fit(x, y, (1.0,), trees=2, depth=3), tmp_path)
    with pytest.raises(ModelError, match="format 'cvplgraph-pixel-classifier/1', expected 'cvplgraph-object-"):
        oc.load(pixel_path)
    with pytest.raises(ModelError, match="cannot read the model"):
        oc.load(tmp_path / "objects-ffffffffffffffff.npz")


def test_the_name_follows_the_training_data(trained: dict) -> None:
    frame, y = trained["frame"], trained["y"]
    columns = list(FEATURES)
    same = oc.save(oc.fit(oc.rows(frame, columns), y, columns, trees=40), trained["folder"] / "again")
    assert same.name == trained["path"].name  # same data and seed: same bytes (no timestamps in the file)
    flipped = y.copy()
    flipped[:5] = np.where(flipped[:5] == oc.CELL, oc.NON_CELL, oc.CELL)
    other = oc.save(oc.fit(oc.rows(frame, columns), flipped, columns, trees=40), trained["folder"])
    assert other.name != trained["path"].name


def test_op_keeps_predicted_cells_in_order_relabelled(trained: dict) -> None:
    fresh, _ = candidates(200, 2)
    table = Table(dask.delayed(fresh), Geometry((20, 50, 50), (2.0, 2.0, 2.0)))
    p = trained["model"].cell_probability(fresh)
    for level in (0.5, 0.8):
        out = ops.classify_objects(table, model=str(trained["path"]), min_probability=level).compute()
        expected = fresh[p >= level].reset_index(drop=True)
        assert list(out.columns) == [*fresh.columns, "cell_probability"]
        assert out["label"].tolist() == list(range(1, len(expected) + 1))
        pd.testing.assert_frame_equal(out.drop(columns=["label", "cell_probability"]),
                                      expected.drop(columns=["label"]))  # fmt: skip
        assert np.array_equal(out["cell_probability"], p[p >= level])
    empty = ops.classify_objects(Table(dask.delayed(fresh.iloc[:0]), table.geometry), model=str(trained["path"]))
    assert len(empty.compute()) == 0


def test_a_table_without_a_model_feature_is_one_line_naming_it(trained: dict) -> None:
    fresh, _ = candidates(20, 3)
    table = Table(dask.delayed(fresh.drop(columns=["size"])), Geometry((20, 50, 50)))
    with pytest.raises(oc.FeatureError, match="lacks the model's feature column.s. size") as exc:
        ops.classify_objects(table, model=str(trained["path"])).compute()
    assert "\n" not in str(exc.value)


def test_spec_checks_and_chunk_independence(trained: dict, tmp_path: Path) -> None:
    """Behind a detector, the classified table is the same whatever the input's chunking: each row is
    judged on its own columns, and the detector keeps each blob once (its own guarantee)."""
    from cvplgraph.synth.volume import SynthParams, synth_volume

    volume, _ = synth_volume(SynthParams(shape=(16, 64, 64), chunks=(16, 64, 64), seed=2))
    image = volume.values
    scale = tuple(volume.attrs["scale"])
    tables = []
    for chunks in [(16, 64, 64), (5, 23, 40), (9, 64, 17)]:
        arr = to_dataarray(dask.array.from_array(image, chunks=chunks), "image")
        arr.attrs["scale"] = scale
        found = ops.blobs(arr, method="peaks", min_sigma=1.5, threshold=0.1)
        tables.append(found.compute())
    rng = np.random.default_rng(0)
    y = np.where(tables[0]["intensity"] + rng.normal(0, 0.05, len(tables[0])) > 0.25, oc.CELL, oc.NON_CELL)
    model = oc.save(oc.fit(oc.rows(tables[0], ["intensity"]), y, ["intensity"], trees=20), tmp_path)
    outs = [ops.classify_objects(Table(dask.delayed(t), Geometry(image.shape, scale)), model=str(model)).compute()
            for t in tables]  # fmt: skip
    assert 0 < len(outs[0]) < len(tables[0])
    for out in outs[1:]:
        pd.testing.assert_frame_equal(out, outs[0])
    head = '[input]\nurl = "v.ome.zarr"\n\n[nodes.points]\nop = "blobs"\nimage = "input"\n\n[nodes.cells]\n'
    with pytest.raises(SpecError, match="min_probability: expected a probability in"):
        parse_spec(head + f'op = "classify_objects"\npoints = "points"\nmodel = "{model}"\nmin_probability = 1.5\n')
    with pytest.raises(SpecError, match="model: expected a model file written by `cvplgraph train --objects`"):
        parse_spec(head + 'op = "classify_objects"\npoints = "points"\nmodel = "m.pkl"\n')
