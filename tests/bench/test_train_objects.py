"""`cvplgraph train --objects`: a candidate classifier trained from annotated points, judged against
the synthetic truth of every cell (not only the annotated ones)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

import cvplgraph
from cvplgraph import ops
from cvplgraph.bench.metrics import match
from cvplgraph.bench.run import run_node
from cvplgraph.bench.train import ObjectTrainReport, train_objects
from cvplgraph.errors import CvplError, InputError
from cvplgraph.io.stores import read_input
from cvplgraph.ops._object_classifier import FeatureError
from cvplgraph.synth.volume import SynthParams, write_synthetic

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

UM = ["z_um", "y_um", "x_um"]
TOLERANCE = 5.0  # µm, the default pairing distance (cell radii here are 4–7 µm)
# dim cells (brightness from 0.05) on a background that varies by ±0.04 with noise 0.03: a low
# detection threshold finds nearly every cell together with three times as many noise peaks
PARAMS = SynthParams(shape=(32, 160, 160), chunks=(16, 80, 80), brightness=(0.05, 0.6), noise=0.03, seed=3)
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
model = "{model}"

[outputs]
cells = "results/cells.csv"
"""


def cellcounter_xml(path: Path, cells_um: np.ndarray, non_cells_um: np.ndarray, voxel: np.ndarray) -> None:
    """A CellCounter marker file as a person clicking voxels writes it: Type 1 non-cells, Type 2 cells."""

    def markers(points: np.ndarray) -> str:
        rows = np.rint(points / voxel).astype(int)
        return "".join(
            f"<Marker><MarkerX>{x}</MarkerX><MarkerY>{y}</MarkerY><MarkerZ>{z}</MarkerZ></Marker>" for z, y, x in rows
        )

    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<CellCounter_Marker_File><Image_Properties>'
        "<Image_Filename>image.tif</Image_Filename></Image_Properties><Marker_Data><Current_Type>1</Current_Type>"
        f"<Marker_Type><Type>1</Type>{markers(non_cells_um)}</Marker_Type>"
        f"<Marker_Type><Type>2</Type>{markers(cells_um)}</Marker_Type>"
        "<Marker_Type><Type>3</Type></Marker_Type></Marker_Data></CellCounter_Marker_File>\n"
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("train_objects")
    truth = write_synthetic(str(folder / "image.ome.zarr"), PARAMS, str(folder / "cells.csv"))
    spec_path = folder / "spec.toml"
    # the model does not exist yet: train must accept the spec as it will be used
    spec_path.write_text(SPEC.format(model="models/objects-0000000000000000.npz"))
    spec = cvplgraph.load_spec(spec_path)
    table, _ = run_node(spec, "candidates")
    candidates = table.to_dataframe().reset_index(drop=True)
    rng = np.random.default_rng(0)
    # ~100 true cells, and ~100 candidates farther than the tolerance from every true cell (what a
    # person marks as non-cells among the detections)
    cells = truth.iloc[rng.choice(len(truth), 100, replace=False)]
    distance, _ = cKDTree(truth[UM].to_numpy()).query(candidates[UM].to_numpy())
    false = np.flatnonzero(distance > TOLERANCE)
    non_cells = candidates.iloc[rng.choice(false, 100, replace=False)]
    voxel = np.asarray(PARAMS.voxel_size)
    cellcounter_xml(folder / "marks.xml", cells[UM].to_numpy(), non_cells[UM].to_numpy(), voxel)
    cell_marks = np.rint(cells[UM].to_numpy() / voxel) * voxel  # where the file puts them, µm
    report = train_objects(spec, "candidates", str(folder / "marks.xml"), folder / "models",
                           voxel_size=PARAMS.voxel_size)  # fmt: skip
    spec_path.write_text(SPEC.format(model=report.model))
    return {"folder": folder, "truth": truth, "candidates": candidates, "report": report, "spec": spec_path,
            "cell_marks": cell_marks}  # fmt: skip


def test_classified_candidates_are_far_more_precise_and_keep_recall(data: dict) -> None:
    """Against every true cell of the volume. The references: the raw candidates, and the best
    threshold on the candidates' intensity chosen with the full truth (an oracle one-feature rule,
    the only informative column a peak detector gives). The classifier saw 200 points."""
    truth = data["truth"][UM].to_numpy()
    candidates = data["candidates"]
    raw = match(candidates[UM].to_numpy(), truth, TOLERANCE)
    assert raw.precision < 0.5 and raw.recall > 0.9  # the setting: many false candidates, few cells missed
    found = cvplgraph.run(cvplgraph.load_spec(data["spec"]), scheduler="threads")["cells"].to_dataframe()
    kept = match(found[UM].to_numpy(), truth, TOLERANCE)
    oracle = max(
        match(candidates.loc[candidates.intensity >= t, UM].to_numpy(), truth, TOLERANCE).f1
        for t in np.unique(candidates.intensity)
    )
    # at least half of the gap between the raw candidates' precision and a perfect one is closed …
    assert kept.precision >= raw.precision + 0.5 * (1 - raw.precision), (raw.precision, kept.precision)
    # … losing at most a tenth of the cells the detector found …
    assert kept.recall >= 0.9 * raw.recall, (raw.recall, kept.recall)
    # … and within 0.1 F1 of the best threshold anyone could pick knowing every cell
    assert kept.f1 >= oracle - 0.1, (kept.f1, oracle)


def test_the_report_counts_what_was_trained_on(data: dict) -> None:
    report: ObjectTrainReport = data["report"]
    assert report.candidates == len(data["candidates"])
    assert (report.cells_marked, report.non_cells_marked) == (100, 100)
    assert report.unmatched == "ignore"  # the file marks non-cells: unpaired candidates are not judged
    assert report.negatives == 100  # each non-cell mark sits on its candidate
    # a marked cell is a positive when the detector found it: as many as the cell marks with a candidate
    # within the tolerance (the cells are far apart, so no two marks want the same candidate)
    distance, _ = cKDTree(data["candidates"][UM].to_numpy()).query(data["cell_marks"])
    assert report.positives == int((distance <= TOLERANCE).sum()) >= 85
    assert report.features == ("volume_voxels", "volume_um3", "sigma_um", "intensity")
    assert report.cv_f1 is not None and report.cv_f1 > 0.8 and report.folds == 5
    assert report.tolerance_um == TOLERANCE


def test_cells_only_csv_of_a_crop_makes_every_other_candidate_a_negative(data: dict) -> None:
    """A CSV of every true cell inside a crop: unpaired candidates of the crop are non-cells."""
    folder, truth = data["folder"], data["truth"]
    crop = (0, 32, 0, 80, 0, 160)
    inside = truth[truth.y < 79.5]  # voxel rows 0..79 (a centre at 79.5 rounds into row 80)
    inside[UM].to_csv(folder / "crop_cells.csv", index=False)
    report = train_objects(cvplgraph.load_spec(data["spec"]), "candidates", str(folder / "crop_cells.csv"),
                           folder / "crop-models", crop=crop, trees=50)  # fmt: skip
    # the detector on the cropped image itself (its border is an image border now), called directly
    image = read_input(cvplgraph.load_spec(data["spec"]).input)[:, :80, :]
    in_crop = ops.blobs(image, method="peaks", min_sigma=1.5, threshold=0.12).compute()
    pairs = match(in_crop[UM].to_numpy(), inside[UM].to_numpy(), TOLERANCE)
    assert report.unmatched == "negative" and report.non_cells_marked == 0
    assert report.candidates == len(in_crop)
    assert (report.positives, report.negatives) == (pairs.tp, len(in_crop) - pairs.tp)


def test_retraining_on_other_annotations_gives_another_model_name(data: dict) -> None:
    folder = data["folder"]
    again = train_objects(cvplgraph.load_spec(data["spec"]), "candidates", str(folder / "marks.xml"),
                          folder / "models", voxel_size=PARAMS.voxel_size)  # fmt: skip
    assert again.model == data["report"].model  # same annotations, same seed: the same file
    text = (folder / "marks.xml").read_text()
    fewer = re.sub(r"(<Type>1</Type>)((?:<Marker>.*?</Marker>){10})", r"\1", text, count=1)  # drop 10 non-cells
    (folder / "fewer.xml").write_text(fewer)
    other = train_objects(cvplgraph.load_spec(data["spec"]), "candidates", str(folder / "fewer.xml"),
                          folder / "models", voxel_size=PARAMS.voxel_size)  # fmt: skip
    assert other.negatives == 90 and other.model != data["report"].model


def test_one_line_errors(data: dict) -> None:
    folder, spec = data["folder"], cvplgraph.load_spec(data["spec"])
    marks = str(folder / "marks.xml")

    def one_line(exc: pytest.ExceptionInfo) -> str:
        assert "\n" not in str(exc.value)
        return str(exc.value)

    with pytest.raises(CvplError) as exc:
        train_objects(spec, "smooth", marks, folder / "m", voxel_size=PARAMS.voxel_size)
    assert "--objects smooth" in one_line(exc) and "Points nodes of the spec: candidates, cells" in str(exc.value)
    with pytest.raises(CvplError) as exc:
        train_objects(spec, "nope", marks, folder / "m", voxel_size=PARAMS.voxel_size)
    assert "no such node" in one_line(exc)
    with pytest.raises(InputError) as exc:
        train_objects(spec, "candidates", marks, folder / "m")
    assert "--voxel-size" in one_line(exc)
    with pytest.raises(FeatureError) as exc:
        train_objects(spec, "candidates", marks, folder / "m", voxel_size=PARAMS.voxel_size, features=["contrast"])
    assert "contrast" in one_line(exc) and "intensity" in str(exc.value)
    # cells only, unpaired candidates left out: one class
    data["truth"].iloc[:50][UM].to_csv(folder / "some_cells.csv", index=False)
    with pytest.raises(CvplError) as exc:
        train_objects(spec, "candidates", str(folder / "some_cells.csv"), folder / "m", unmatched="ignore")
    assert "no candidate of node candidates is a non-cell" in one_line(exc) and "--unmatched negative" in str(exc.value)
    # marks half a voxel off every candidate (peaks sit on whole voxels) and a tolerance below that: no pairs
    off = data["candidates"][UM].iloc[:20].to_numpy() + [0.0, 0.0, 0.75]
    pd.DataFrame(off, columns=UM).to_csv(folder / "off.csv", index=False)
    with pytest.raises(CvplError) as exc:
        train_objects(spec, "candidates", str(folder / "off.csv"), folder / "m", tolerance_um=0.5)
    assert "within 0.5 µm" in one_line(exc)
    with pytest.raises(CvplError) as exc:
        train_objects(spec, "candidates", marks, folder / "m", voxel_size=PARAMS.voxel_size, crop=(0, 5, 9, 3, 0, 9))
    assert "--crop" in one_line(exc)


def test_running_a_spec_whose_model_is_missing_names_the_file(data: dict, tmp_path: Path) -> None:
    spec_path = data["folder"] / "missing.toml"
    text = SPEC.format(model="models/objects-ffffffffffffffff.npz")
    spec_path.write_text(text.replace('"results/cells.csv"', '"results/missing_cells.csv"'))  # its own output
    with pytest.raises(CvplError, match=r"objects-ffffffffffffffff\.npz: cannot read the model") as exc:
        cvplgraph.run(cvplgraph.load_spec(spec_path), scheduler="threads")
    assert "\n" not in str(exc.value)
