"""Ground-truth readers and detection scoring: hand-computed cases, brute force, the shipped CellCounter file."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvplgraph.bench.metrics import Matching, default_tolerance_um, match, region_errors
from cvplgraph.bench.truth import read_marked_points, read_points, read_region_truth
from cvplgraph.errors import InputError
from cvplgraph.synth.cells import make_cells
from cvplgraph.synth.volume import SynthParams

pytestmark = pytest.mark.slow  # outside the core loop (keys, spec, components, filters, counts)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CELLCOUNTER = SHARED_DATA / "brainmapper_output_example" / "points" / "cell_classification.xml"
needs_cellcounter = pytest.mark.skipif(
    not CELLCOUNTER.exists(), reason=f"the BrainGlobe CellCounter example is not at {CELLCOUNTER} (../shared/data)"
)


def on_x(*xs: float) -> np.ndarray:
    """Points on the x axis, (n, 3) µm."""
    return np.array([[0.0, 0.0, x] for x in xs]).reshape(-1, 3)


def greedy(found: np.ndarray, truth: np.ndarray, tolerance: float) -> int:
    """Pairs made by greedy matching: shortest remaining candidate pair first."""
    d = np.linalg.norm(found[:, None] - truth[None], axis=2)
    used_f: set[int] = set()
    used_t: set[int] = set()
    for f, t in sorted(np.ndindex(d.shape), key=lambda ft: d[ft]):
        if d[f, t] <= tolerance and f not in used_f and t not in used_t:
            used_f.add(f)
            used_t.add(t)
    return len(used_f)


def brute_force(found: np.ndarray, truth: np.ndarray, tolerance: float) -> tuple[int, float]:
    """(most pairs, least total distance among them) over every one-to-one partial assignment."""
    d = np.linalg.norm(found[:, None] - truth[None], axis=2)
    best = (0, 0.0)
    for choice in itertools.product([None, *range(len(truth))], repeat=len(found)):
        taken = [t for t in choice if t is not None]
        if len(set(taken)) < len(taken) or any(t is not None and d[f, t] > tolerance for f, t in enumerate(choice)):
            continue
        total = float(sum(d[f, t] for f, t in enumerate(choice) if t is not None))
        if len(taken) > best[0] or (len(taken) == best[0] and total < best[1]):
            best = (len(taken), total)
    return best


def check_valid(m: Matching, found: np.ndarray, truth: np.ndarray) -> None:
    """One-to-one, within tolerance, and distances that are the real distances."""
    assert len(set(m.pairs[:, 0])) == len(m.pairs) == len(set(m.pairs[:, 1]))
    real = np.linalg.norm(found[m.pairs[:, 0]] - truth[m.pairs[:, 1]], axis=1)
    np.testing.assert_allclose(m.distances, real)
    assert (m.distances <= m.tolerance_um).all()


# --------------------------------------------------------------------------- matching


def test_tie_matches_exactly_one() -> None:
    """Two detections equally near one true cell: one is paired, the other is a false positive."""
    m = match(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]), np.zeros((1, 3)), 2.0)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.pairs[0, 1] == 0 and m.distances.tolist() == [1.0]
    assert m.precision == 0.5 and m.recall == 1.0 and m.f1 == pytest.approx(2 / 3)
    assert m.count_error == 1 and m.count_error_pct == 100.0


def test_chain_where_greedy_loses_a_match() -> None:
    """Truth at 0 and 2.1, detections at 1.2 and 3.4, tolerance 1.5: greedy pairs 1.2 with 2.1 (0.9 µm) and
    strands 3.4; the optimum pairs 1.2-0 and 3.4-2.1."""
    found, truth = on_x(1.2, 3.4), on_x(0.0, 2.1)
    assert greedy(found, truth, 1.5) == 1
    m = match(found, truth, 1.5)
    assert m.pairs.tolist() == [[0, 0], [1, 1]]
    np.testing.assert_allclose(m.distances, [1.2, 1.3])
    assert (m.tp, m.fp, m.fn) == (2, 0, 0) and m.f1 == 1.0


def test_least_total_distance_among_maximal_matchings() -> None:
    """Both detections can take both cells; the crossed pairing (2.0 µm) loses to the straight one (0.8 µm)."""
    m = match(on_x(0.0, 1.0), on_x(0.4, 1.4), 1.5)
    assert m.pairs.tolist() == [[0, 0], [1, 1]]
    assert m.distances.sum() == pytest.approx(0.8)


def test_tolerance_is_inclusive_and_farther_points_do_not_match() -> None:
    """A pair exactly at the tolerance matches; one just beyond it does not."""
    assert match(on_x(2.0), on_x(0.0), 2.0).tp == 1
    m = match(on_x(2.001, 10.0), on_x(0.0, 5.0), 2.0)
    assert (m.tp, m.fp, m.fn) == (0, 2, 2) and m.pairs.shape == (0, 2)
    assert m.precision == m.recall == m.f1 == 0.0


@pytest.mark.parametrize(
    ("n_found", "n_true", "precision", "recall", "f1", "error", "pct"),
    [
        (0, 3, 0.0, 0.0, 0.0, -3, -100.0),  # nothing found, truth exists
        (2, 0, 0.0, 0.0, 0.0, 2, None),  # detections, no truth
        (0, 0, 1.0, 1.0, 1.0, 0, None),  # both empty: a perfect result
    ],
)
def test_empty_sides(
    n_found: int, n_true: int, precision: float, recall: float, f1: float, error: int, pct: float | None
) -> None:
    """The documented scores when a denominator is zero."""
    m = match(on_x(*range(n_found)), on_x(*range(n_true)), 1.0)
    assert (m.tp, m.fp, m.fn) == (0, n_found, n_true)
    assert (m.precision, m.recall, m.f1) == (precision, recall, f1)
    assert m.count_error == error and m.count_error_pct == pct
    assert m.pairs.shape == (0, 2) and m.distances.shape == (0,)


def test_random_cases_equal_brute_force() -> None:
    """Clustered random points (components of every size): same cardinality and total distance as brute force."""
    rng = np.random.default_rng(7)
    for _ in range(60):
        found = rng.uniform(0, 6, size=(int(rng.integers(0, 6)), 3))
        truth = rng.uniform(0, 6, size=(int(rng.integers(0, 6)), 3))
        tolerance = float(rng.uniform(1.0, 5.0))
        m = match(found, truth, tolerance)
        check_valid(m, found, truth)
        pairs, total = brute_force(found, truth, tolerance)
        assert m.tp == pairs
        assert m.distances.sum() == pytest.approx(total, abs=1e-9)


def test_many_points_all_found() -> None:
    """50 000 jittered cells, each detected within 1 µm: every one matched to its own detection."""
    rng = np.random.default_rng(3)
    truth = np.stack(np.meshgrid(*[np.arange(0, 370, 10.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)[:50_000]
    found = truth + rng.uniform(-0.5, 0.5, size=truth.shape)
    m = match(found[::-1], truth, 5.0)
    assert m.tp == len(truth) and m.fp == m.fn == 0
    np.testing.assert_array_equal(m.pairs[:, 1], len(truth) - 1 - m.pairs[:, 0])


def brute_force_ellipsoid(found: np.ndarray, truth: np.ndarray, axes: np.ndarray) -> tuple[int, float]:
    """(most pairs, least total normalised distance) when a pair needs Σ (Δ/axis)² ≤ 1: every
    partial assignment tried, distances computed directly from the definition."""
    d = np.sqrt((((found[:, None] - truth[None]) / axes) ** 2).sum(axis=2))
    best = (0, 0.0)
    for choice in itertools.product([None, *range(len(truth))], repeat=len(found)):
        taken = [t for t in choice if t is not None]
        if len(set(taken)) < len(taken) or any(t is not None and d[f, t] > 1.0 for f, t in enumerate(choice)):
            continue
        total = float(sum(d[f, t] for f, t in enumerate(choice) if t is not None))
        if len(taken) > best[0] or (len(taken) == best[0] and total < best[1]):
            best = (len(taken), total)
    return best


def test_anisotropic_tolerance_equals_brute_force_on_random_points() -> None:
    """An ellipsoidal tolerance (z twice as long as x): same number of pairs and same total
    normalised distance as trying every assignment; pairs inside the ellipsoid, distances in µm."""
    rng = np.random.default_rng(17)
    for _ in range(60):
        found = rng.uniform(0, [12, 6, 6], size=(int(rng.integers(0, 6)), 3))
        truth = rng.uniform(0, [12, 6, 6], size=(int(rng.integers(0, 6)), 3))
        axes = rng.uniform(1.0, 3.0, size=3) * np.array([2.0, 1.0, 1.0])
        m = match(found, truth, axes)
        assert m.tolerance_um == tuple(axes)
        pairs, total = brute_force_ellipsoid(found, truth, axes)
        assert m.tp == pairs
        delta = found[m.pairs[:, 0]] - truth[m.pairs[:, 1]]
        np.testing.assert_allclose(m.distances, np.linalg.norm(delta, axis=1))
        normalised = np.sqrt(((delta / axes) ** 2).sum(axis=1))
        assert (normalised <= 1 + 1e-12).all() and normalised.sum() == pytest.approx(total, abs=1e-9)
        assert len(set(m.pairs[:, 0])) == len(m.pairs) == len(set(m.pairs[:, 1]))


def test_anisotropic_tolerance_is_an_ellipsoid() -> None:
    """8 µm along z pairs with a (10, 4, 4) tolerance, 8 µm along x does not; three equal numbers are
    the isotropic tolerance."""
    truth = np.zeros((1, 3))
    assert match(np.array([[8.0, 0.0, 0.0]]), truth, (10, 4, 4)).tp == 1
    assert match(np.array([[0.0, 0.0, 8.0]]), truth, (10, 4, 4)).tp == 0
    assert match(np.array([[6.0, 0.0, 3.0]]), truth, (10, 4, 4)).tp == 1  # 0.36 + 0.5625 ≤ 1
    assert match(np.array([[0.0, 3.0, 3.0]]), truth, (10, 4, 4)).tp == 0  # 0.5625 + 0.5625 > 1, though 4.2 µm
    iso = match(on_x(2.0), on_x(0.0), [2.0, 2.0, 2.0])
    assert iso.tp == 1 and iso.tolerance_um == 2.0
    with pytest.raises(InputError, match=r"tolerance_um \[1.0, 2.0\]: expected"):
        match(truth, truth, [1.0, 2.0])


@pytest.mark.parametrize(
    ("found", "truth", "tolerance", "message"),
    [
        (np.zeros((2, 2)), np.zeros((1, 3)), 1.0, r"found_um has shape \(2, 2\)"),
        (np.zeros((1, 3)), [[0.0, np.nan, 0.0]], 1.0, r"truth_um row 0 .*finite"),
        (np.zeros((1, 3)), np.zeros((1, 3)), 0.0, r"tolerance_um 0.0: expected a finite distance > 0"),
    ],
)
def test_match_rejects_bad_input(found: np.ndarray, truth: np.ndarray, tolerance: float, message: str) -> None:
    with pytest.raises(InputError, match=message):
        match(found, truth, tolerance)


def test_default_tolerance_is_the_radius() -> None:
    """One radius; the median of an array of radii; no radius is an error."""
    assert default_tolerance_um(7.5) == 7.5
    assert default_tolerance_um(pd.Series([6.0, 8.0, 100.0])) == 8.0
    with pytest.raises(InputError, match="radius_um"):
        default_tolerance_um(0.0)


# --------------------------------------------------------------------------- CellCounter XML


@needs_cellcounter
def test_cellcounter_example_counts_and_coordinates() -> None:
    """103 cells (Type 2) and 22 non-cells (Type 1); markers read by hand from the file, X = x, Y = y, Z = z."""
    cells = read_points(CELLCOUNTER, voxel_size=(5.0, 2.0, 2.0))
    assert len(cells) == 103 and list(cells.columns) == ["z_um", "y_um", "x_um", "z", "y", "x"]
    assert cells.dtypes.eq(np.float64).all()
    assert cells.loc[0, ["z", "y", "x"]].tolist() == [20, 2441, 1674]  # first Type-2 marker
    assert cells.loc[1, ["z", "y", "x"]].tolist() == [120, 2810, 2194]
    assert cells.loc[102, ["z", "y", "x"]].tolist() == [2529, 3220, 1996]  # last marker of the file
    assert cells.loc[0, ["z_um", "y_um", "x_um"]].tolist() == [100.0, 4882.0, 3348.0]
    non_cells = read_points(CELLCOUNTER, voxel_size=(5.0, 2.0, 2.0), cell_type=1)
    assert len(non_cells) == 22 and non_cells.loc[0, ["z", "y", "x"]].tolist() == [11, 2089, 3422]


@needs_cellcounter
def test_cellcounter_example_errors() -> None:
    """Voxels without a voxel size, and an absent type (the message lists the types present)."""
    with pytest.raises(InputError, match=r"cell_classification.xml: .*voxel_size") as info:
        read_points(CELLCOUNTER)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"no marker Type 3; types present: 1 \(22 markers\), 2 \(103 markers\)"):
        read_points(CELLCOUNTER, voxel_size=(1.0, 1.0, 1.0), cell_type=3)


@needs_cellcounter
def test_marked_points_of_the_example_are_its_cells_then_its_non_cells(tmp_path: Path) -> None:
    """Training annotations: both types of the cellfinder file with their class; a CSV is all cells."""
    marked = read_marked_points(CELLCOUNTER, voxel_size=(5.0, 2.0, 2.0))
    assert list(marked.columns) == ["z_um", "y_um", "x_um", "z", "y", "x", "cell"]
    assert marked["cell"].tolist() == [True] * 103 + [False] * 22
    cells = read_points(CELLCOUNTER, voxel_size=(5.0, 2.0, 2.0))
    non_cells = read_points(CELLCOUNTER, voxel_size=(5.0, 2.0, 2.0), cell_type=1)
    pd.testing.assert_frame_equal(marked.iloc[:103, :6], cells)
    pd.testing.assert_frame_equal(marked.iloc[103:, :6].reset_index(drop=True), non_cells)
    with pytest.raises(InputError, match=r"no marker Type 7 \(cells\) or 8 \(non-cells\); types present: 1 \(22"):
        read_marked_points(CELLCOUNTER, voxel_size=(1.0, 1.0, 1.0), cell_type=7, non_cell_type=8)
    cells_only = read_marked_points(CELLCOUNTER, voxel_size=(1.0, 1.0, 1.0), non_cell_type=8)
    assert len(cells_only) == 103 and cells_only["cell"].all()
    cells[["z_um", "y_um", "x_um"]].to_csv(tmp_path / "cells.csv", index=False)
    from_csv = read_marked_points(tmp_path / "cells.csv")
    assert len(from_csv) == 103 and from_csv["cell"].all()

def cellcounter_xml(markers: str, type_: int = 2) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<CellCounter_Marker_File><Marker_Data><Marker_Type>'
        f"<Type>{type_}</Type>{markers}</Marker_Type></Marker_Data></CellCounter_Marker_File>"
    )


def test_cellcounter_recognised_by_content_and_empty_type(tmp_path: Path) -> None:
    """A CellCounter file without the .xml suffix is still read; a type with no markers gives no rows."""
    path = tmp_path / "markers.txt"
    path.write_text(cellcounter_xml("<Marker><MarkerX>4</MarkerX><MarkerY>3</MarkerY><MarkerZ>2</MarkerZ></Marker>"))
    np.testing.assert_array_equal(read_points(path, voxel_size=(2.0, 1.0, 0.5)).to_numpy(), [[4, 3, 2, 2, 3, 4]])
    (tmp_path / "empty.xml").write_text(cellcounter_xml(""))
    assert read_points(tmp_path / "empty.xml", voxel_size=(1.0, 1.0, 1.0)).shape == (0, 6)


# --------------------------------------------------------------------------- CSV


def test_um_csv_from_synth(tmp_path: Path) -> None:
    """The truth CSV cvplgraph synth writes: µm and voxel columns read back unchanged, extra columns dropped."""
    cells = make_cells(SynthParams(shape=(20, 60, 60), voxel_size=(4.0, 1.0, 1.0), spacing_um=25.0, seed=1))
    cells.to_csv(tmp_path / "cells.csv", index=False)
    points = read_points(tmp_path / "cells.csv")
    assert len(points) == len(cells) > 0
    np.testing.assert_array_equal(points.to_numpy(), cells[["z_um", "y_um", "x_um", "z", "y", "x"]].to_numpy())


def test_um_only_csv_gains_voxels_with_voxel_size(tmp_path: Path) -> None:
    pd.DataFrame({"x_um": [8.0], "y_um": [6.0], "z_um": [10.0]}).to_csv(tmp_path / "p.csv", index=False)
    assert list(read_points(tmp_path / "p.csv").columns) == ["z_um", "y_um", "x_um"]
    points = read_points(tmp_path / "p.csv", voxel_size=(5.0, 2.0, 2.0))
    assert points.iloc[0].tolist() == [10.0, 6.0, 8.0, 2.0, 3.0, 4.0]


def test_voxel_csv(tmp_path: Path) -> None:
    """Voxels times the voxel size; without one, an error that says to pass it."""
    path = tmp_path / "voxels.csv"
    pd.DataFrame({"z": [1, 2], "y": [10, 20], "x": [3, 4]}).to_csv(path, index=False)
    points = read_points(path, voxel_size=(5.0, 2.0, 0.5))
    np.testing.assert_array_equal(points[["z_um", "y_um", "x_um"]].to_numpy(), [[5, 20, 1.5], [10, 40, 2]])
    np.testing.assert_array_equal(points[["z", "y", "x"]].to_numpy(), [[1, 10, 3], [2, 20, 4]])
    with pytest.raises(InputError, match=r"voxels.csv: its z, y, x columns are voxels; pass voxel_size"):
        read_points(path)


def napari_csv(path: Path, data: np.ndarray, features: dict[str, list[float]] | None = None) -> None:
    """The layout of napari's built-in points writer: index, axis-0 … axis-(D-1), then feature columns."""
    table = pd.DataFrame(data, columns=[f"axis-{n}" for n in range(data.shape[1])])
    table.insert(0, "index", np.arange(len(data)))
    for name, values in (features or {}).items():
        table[name] = values
    table.to_csv(path, index=False)


def test_napari_csv_voxels_um_and_leading_axis(tmp_path: Path) -> None:
    """napari saves data coordinates: voxels by default, µm when asked; a fourth, leading axis is dropped."""
    path = tmp_path / "points.csv"
    napari_csv(path, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), {"volume_um3": [10.0, 20.0]})
    voxels = read_points(path, voxel_size=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(voxels[["z_um", "y_um", "x_um"]].to_numpy(), [[2, 2, 3], [8, 5, 6]])
    um = read_points(path, napari_units="um")
    np.testing.assert_array_equal(um.to_numpy(), [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(InputError, match=r"points.csv: its napari coordinates are voxels .*voxel_size"):
        read_points(path)
    napari_csv(path, np.array([[0.0, 1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(read_points(path, napari_units="um").to_numpy(), [[1, 2, 3]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b,c\n1,2,3\n", r"no coordinate columns; found \['a', 'b', 'c'\], expected z_um, y_um, x_um"),
        ("z,y,x\n1,2,3\n4,nan,6\n", r"y = nan in data row 2; expected a finite number"),
        ("z_um,y_um,x_um\n1,2,oops\n", r"x_um = 'oops' in data row 1; expected a finite number"),
        ("index,axis-0,axis-1\n0,1,2\n", r"napari axis columns \['axis-0', 'axis-1'\]"),
        ("", r"unreadable CSV"),
        ("<CellCounter_Marker_File><Marker_Data>", r"unreadable XML"),
        ("<Other/>", r"root element <Other>; expected <CellCounter_Marker_File>"),
        (
            cellcounter_xml("<Marker><MarkerX>1</MarkerX><MarkerY>2</MarkerY></Marker>"),
            r"marker 1 of Type 2 has MarkerZ",
        ),
        (cellcounter_xml("", type_=1), r"no marker Type 2; types present: 1 \(0 markers\)"),
    ],
)
def test_read_points_errors_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    """Every bad file gives one line that starts with the file's path and says what was expected."""
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        read_points(path, voxel_size=(1.0, 1.0, 1.0))
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_read_points_missing_file_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nowhere.csv: no such file"):
        read_points(tmp_path / "nowhere.csv")
    with pytest.raises(InputError, match=r"voxel_size \(1.0, 0.0, 1.0\): expected three positive"):
        read_points(tmp_path / "nowhere.csv", voxel_size=(1.0, 0.0, 1.0))
    with pytest.raises(InputError, match=r"napari_units 'mm'"):
        read_points(tmp_path / "nowhere.csv", napari_units="mm")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- regions


def test_read_region_truth(tmp_path: Path) -> None:
    """ids (whole floats accepted), acronyms with ``count``, and hemisphere rows summed or selected."""
    path = tmp_path / "regions.csv"
    path.write_text("id,acronym,cells\n315,Isocortex,2.0\n1089,HPF,5\n")
    truth = read_region_truth(path)
    assert truth.to_dict() == {315: 2, 1089: 5} and truth.index.name == "id" and truth.dtype == np.int64
    assert read_region_truth(path, key="acronym").to_dict() == {"Isocortex": 2, "HPF": 5}
    path.write_text("acronym,count\nCA1,3\n")
    assert read_region_truth(path).to_dict() == {"CA1": 3}
    path.write_text("id,hemisphere,cells\n1,left,2\n1,right,3\n7,right,4\n")  # synthetic brain's regions_truth.csv
    assert read_region_truth(path).to_dict() == {1: 5, 7: 4}
    assert read_region_truth(path, hemisphere="right").to_dict() == {1: 3, 7: 4}
    path.write_text("id,hemisphere,cells\n1,both,5\n1,left,2\n1,right,3\n")  # a cvplgraph region table
    assert read_region_truth(path).to_dict() == {1: 5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,cells\nCA1,3\n", r"found columns \['name', 'cells'\], expected id or acronym and cells \(or count\)"),
        ("id,cells\n1,3\n1,4\n", r"region 1 appears more than once"),
        ("id,hemisphere,cells\n1,left,3\n1,left,4\n", r"\(region, hemisphere\) \(1, 'left'\) appears more than once"),
        ("id,cells\n1,-3\n", r"cells = -3 in data row 1; expected a whole number ≥ 0"),
        ("id,cells\n1,2.5\n", r"cells = 2.5 in data row 1"),
        ("acronym,cells\nCA1,1\n,2\n", r"acronym is empty in data row 2"),
    ],
)
def test_read_region_truth_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "regions.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        read_region_truth(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"absent.csv: no such file"):
        read_region_truth(tmp_path / "absent.csv")


def test_region_errors_on_the_union_of_regions() -> None:
    """Regions missing on one side count 0; error_pct is NaN where nothing is true."""
    found = pd.Series({"CA1": 12, "HPF": 3, "MO": 4})
    truth = pd.Series({"CA1": 10, "HPF": 4, "SS": 5})
    out = region_errors(found, truth)
    assert out.columns.tolist() == ["region", "found", "true", "error", "error_pct"]
    assert out["region"].tolist() == ["CA1", "HPF", "MO", "SS"]
    assert out["found"].tolist() == [12, 3, 4, 0] and out["true"].tolist() == [10, 4, 0, 5]
    assert out["error"].tolist() == [2, -1, 4, -5]
    np.testing.assert_allclose(out["error_pct"], [20.0, -25.0, np.nan, -100.0])
    with pytest.raises(InputError, match="expected region ids in both or acronyms in both"):
        region_errors(pd.Series({315: 1}), truth)


def test_too_large_group_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tolerance that links more detection × cell pairs than the limit raises, naming the group's size."""
    monkeypatch.setattr("cvplgraph.bench.metrics.MAX_COMPONENT", 3)
    with pytest.raises(InputError, match=r"tolerance_um 1.5: links 2 detections and 2 true cells into one group"):
        match(on_x(1.2, 3.4), on_x(0.0, 2.1), 1.5)
    assert match(on_x(0.0, 10.0), on_x(0.5, 10.5), 1.5).tp == 2  # groups of one pair need no solver
