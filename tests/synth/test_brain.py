"""Tests of the synthetic brain (:mod:`cvplgraph.synth.brain`) and the per-site occupancy hook of
:mod:`cvplgraph.synth.volume`.

Truth is checked against independent lookups: region ids are recomputed from
the source files in their original orientation with explicit arithmetic, and
the block-wise upsampled atlas against a whole-array lookup built from voxel
edges.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import tifffile
from scipy.spatial import cKDTree

from cvplgraph.io.stores import read_array
from cvplgraph.synth.brain import (
    ALLEN_STRUCTURE_COLUMNS,
    CELL_COLUMNS,
    BrainTruth,
    atlas_on_grid,
    procedural_atlas,
    region_occupancy,
    resolve_atlas,
    write_synthetic_brain,
)
from cvplgraph.synth.cells import grid_sites, make_cells
from cvplgraph.synth.volume import SynthParams, synth_volume
from cvplgraph.values import Geometry

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ALLEN = DATA / "atlas_ccf2017"
needs_allen = pytest.mark.skipif(
    not (ALLEN / "annotation_100um.tif").is_file(), reason=f"shared Allen atlas data not found at {ALLEN}"
)

# Small crops (µm, atlas space): both start above the atlas volume (z < -50 µm is outside it),
# cross empty space above the brain, the dorsal surface and the midline.
PROC_CROP = ((-240.0, 800.0), (4600.0, 5320.0), (2650.0, 3250.0))
ALLEN_CROP = ((-240.0, 1200.0), (5000.0, 5600.0), (5350.0, 5950.0))


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory) -> BrainTruth:
    folder = tmp_path_factory.mktemp("proc")
    return write_synthetic_brain(folder, atlas="procedural", crop_um=PROC_CROP, chunks=(16, 64, 64), say=quiet)


@pytest.fixture(scope="module")
def allen(tmp_path_factory: pytest.TempPathFactory) -> BrainTruth:
    if not (ALLEN / "annotation_100um.tif").is_file():
        pytest.skip(f"shared Allen atlas data not found at {ALLEN}")
    folder = tmp_path_factory.mktemp("allen")
    return write_synthetic_brain(folder, atlas=ALLEN, crop_um=ALLEN_CROP, chunks=(32, 64, 64), say=quiet)


def source_volumes(kind: str) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(annotation, hemispheres, resolution, file_order): Allen in file order (x, y, z), procedural in (z, y, x)."""
    if kind == "allen":
        ann = tifffile.imread(ALLEN / "annotation_100um.tif")
        hemi = tifffile.imread(ALLEN / "hemispheres_100um.tif")
        return ann, hemi, 100.0, True
    atlas = procedural_atlas()
    return atlas.annotation, atlas.hemispheres, 100.0, False


def independent_lookup(
    ann: np.ndarray, hemi: np.ndarray, res: float, file_order: bool, um: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Region id and hemisphere at the nearest atlas voxel of each point (µm z, y, x); -1 / 0 outside."""
    idx = np.floor(um / res + 0.5).astype(np.int64)  # (N, 3) z, y, x
    shape = np.array(ann.shape[::-1] if file_order else ann.shape)  # (z, y, x) sizes
    inside = np.all((idx >= 0) & (idx < shape), axis=1)
    iz, iy, ix = np.where(inside[:, None], idx, 0).T
    if file_order:  # the Allen files are indexed [x, y, z]
        region = ann[ix, iy, iz].astype(np.int64)
        hemisphere = hemi[ix, iy, iz].astype(np.int64)
    else:
        region = ann[iz, iy, ix].astype(np.int64)
        hemisphere = hemi[iz, iy, ix].astype(np.int64)
    return np.where(inside, region, -1), np.where(inside, hemisphere, 0)


def truth_for(kind: str, request: pytest.FixtureRequest) -> BrainTruth:
    if kind == "allen" and not (ALLEN / "annotation_100um.tif").is_file():
        pytest.skip(f"shared Allen atlas data not found at {ALLEN}")
    return request.getfixturevalue(kind)


KINDS = ["proc", pytest.param("allen", marks=needs_allen)]


# --------------------------------------------------------------------------- atlas folder


@pytest.mark.parametrize("kind", KINDS)
def test_atlas_folder_matches_source(kind: str, request: pytest.FixtureRequest) -> None:
    truth = truth_for(kind, request)
    ann, hemi, res, file_order = source_volumes(kind)
    written = tifffile.imread(truth.atlas / "annotation.tiff")
    written_hemi = tifffile.imread(truth.atlas / "hemispheres.tiff")
    assert written.dtype == np.uint32
    assert written_hemi.dtype == np.uint8
    expected = np.transpose(ann, (2, 1, 0)) if file_order else ann
    expected_hemi = np.transpose(hemi, (2, 1, 0)) if file_order else hemi
    np.testing.assert_array_equal(written, expected)
    np.testing.assert_array_equal(written_hemi, expected_hemi)
    assert int(written.max()) > 2**24  # ids need 32 bits
    assert set(np.unique(written_hemi).tolist()) == {1, 2}
    meta = json.loads((truth.atlas / "metadata.json").read_text())
    assert meta["resolution"] == [res, res, res]
    assert meta["shape"] == list(written.shape)
    assert meta["orientation"] == "sal"
    assert meta["symmetric"] is False
    assert meta["name"] and meta["citation"]
    structures = pd.read_csv(truth.atlas / "structures.csv")
    assert list(structures.columns[: len(ALLEN_STRUCTURE_COLUMNS)]) == list(ALLEN_STRUCTURE_COLUMNS)
    if file_order:
        pd.testing.assert_frame_equal(structures, pd.read_csv(ALLEN / "structures.csv"))
    # every annotated id is described; some parent (Isocortex, 315) owns no voxels
    assert set(np.unique(written).tolist()) - {0} <= set(structures["id"])
    assert 315 in set(structures["id"]) and not (written == 315).any()


def test_allen_hemisphere_1_is_low_x(request: pytest.FixtureRequest) -> None:
    """The README: hemisphere 1 is file axis-0 indices 0-56 at 100 µm, i.e. low x in sample orientation."""
    if not (ALLEN / "annotation_100um.tif").is_file():
        pytest.skip(f"shared Allen atlas data not found at {ALLEN}")
    atlas = resolve_atlas(ALLEN)
    assert (atlas.hemispheres[:, :, :57] == 1).all() and (atlas.hemispheres[:, :, 57:] == 2).all()


def test_procedural_structures_are_a_tree() -> None:
    atlas = procedural_atlas()
    s = atlas.structures.set_index("id")
    for sid, row in s.iterrows():
        path = [int(p) for p in row["structure_id_path"].strip("/").split("/")]
        assert path[-1] == sid and len(path) == row["depth"] + 1
        if len(path) > 1:
            assert path[-2] == row["parent_structure_id"]
    assert atlas.annotation.dtype == np.uint32
    assert set(np.unique(atlas.annotation).tolist()) - {0} <= set(s.index)
    # the brain is an ellipsoid of 4 x 6 x 5 mm: its extent along each axis, in voxels of 100 µm
    brain = np.nonzero(atlas.annotation)
    extents = [int(b.max() - b.min() + 1) for b in brain]
    assert extents == pytest.approx([40, 60, 50], abs=1)


def test_resolve_atlas() -> None:
    assert resolve_atlas("procedural").source == "procedural"
    found = resolve_atlas(None)
    if (ALLEN / "annotation_100um.tif").is_file():
        assert Path(found.source) == ALLEN.resolve()
    else:
        assert found.source == "procedural"
    with pytest.raises(FileNotFoundError):
        resolve_atlas(DATA / "no-such-atlas")


# --------------------------------------------------------------------------- cells and truth


@pytest.mark.parametrize("kind", KINDS)
def test_cells_regions_equal_independent_lookup(kind: str, request: pytest.FixtureRequest) -> None:
    truth = truth_for(kind, request)
    cells = pd.read_csv(truth.cells_csv)
    assert list(cells.columns) == list(CELL_COLUMNS)
    assert cells["region_id"].dtype == np.int64
    g = truth.geometry
    for k, axis in enumerate("zyx"):
        np.testing.assert_allclose(cells[f"{axis}_um"], g.translation[k] + cells[axis] * g.scale[k])
        assert cells[axis].between(0, g.shape[k] - 1).all()
    um = cells[["z_um", "y_um", "x_um"]].to_numpy()
    region, hemisphere = independent_lookup(*source_volumes(kind), um)
    np.testing.assert_array_equal(cells["region_id"].to_numpy(), region)
    np.testing.assert_array_equal(cells["hemisphere"].to_numpy(), hemisphere)
    ids = set(cells["region_id"])
    assert {0, -1} <= ids
    assert len(ids - {0, -1}) >= 2
    pd.testing.assert_frame_equal(cells, truth.cells.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("kind", KINDS)
def test_regions_truth_matches_cells(kind: str, request: pytest.FixtureRequest) -> None:
    truth = truth_for(kind, request)
    cells = pd.read_csv(truth.cells_csv)
    regions = pd.read_csv(truth.regions_csv)
    assert list(regions.columns) == ["id", "hemisphere", "cells"]
    assert regions["cells"].sum() == len(cells)
    names = {0: "none", 1: "left", 2: "right"}
    expected = {
        (int(r), names[int(h)]): int(n) for (r, h), n in cells.groupby(["region_id", "hemisphere"]).size().items()
    }
    got = {(int(r), str(h)): int(n) for r, h, n in regions.itertuples(index=False)}
    assert got == expected
    assert (regions.loc[regions["id"] == -1, "hemisphere"] == "none").all()
    assert {0, -1} <= set(regions["id"])


def test_brain_json_records_parameters(proc: BrainTruth) -> None:
    used = json.loads(proc.params_json.read_text())
    assert used["atlas"] == "procedural"
    assert used["crop_um"] == [list(p) for p in PROC_CROP]
    assert used["translation"] == [p[0] for p in PROC_CROP]
    assert used["shape"] == [130, 120, 100]
    assert used["cells"] == len(proc.cells)
    assert used["voxel_size"] == [8.0, 6.0, 6.0]


def test_same_seed_same_truth_other_seed_differs(proc: BrainTruth, tmp_path: Path) -> None:
    again = write_synthetic_brain(tmp_path / "a", atlas="procedural", crop_um=PROC_CROP, say=quiet)
    pd.testing.assert_frame_equal(again.cells, proc.cells)
    other = write_synthetic_brain(tmp_path / "b", atlas="procedural", crop_um=PROC_CROP, seed=1, say=quiet)
    assert len(other.cells) != len(proc.cells) or not other.cells.equals(proc.cells)


def test_region_occupancy_is_per_region_and_deterministic() -> None:
    ids = np.array([[5, 5, 0], [-1, 7, 2**24 + 100]])
    occ = region_occupancy(ids, seed=3, occupancy_range=(0.2, 0.9), outside_occupancy=0.05)
    assert occ.shape == ids.shape
    assert occ[0, 0] == occ[0, 1]
    assert occ[0, 2] == occ[1, 0] == 0.05
    inside = occ[ids > 0]
    assert ((inside >= 0.2) & (inside <= 0.9)).all()
    assert len(set(inside.tolist())) == 3
    np.testing.assert_array_equal(occ, region_occupancy(ids, seed=3))
    assert not np.array_equal(occ, region_occupancy(ids, seed=4))


# --------------------------------------------------------------------------- image


def read_image(truth: BrainTruth) -> np.ndarray:
    image = read_array(str(truth.image))
    assert image.attrs["scale"] == list(truth.geometry.scale)
    assert image.attrs["translation"] == list(truth.geometry.translation)
    assert image.dtype == np.float32
    return np.asarray(image.data.compute(scheduler="synchronous"))


@pytest.mark.parametrize("kind", KINDS)
def test_tissue_is_brighter_than_outside(kind: str, request: pytest.FixtureRequest) -> None:
    truth = truth_for(kind, request)
    volume = read_image(truth)
    assert 0.0 <= volume.min() and volume.max() <= 1.0
    g = truth.geometry
    rng = np.random.default_rng(0)
    voxels = np.stack([rng.integers(0, n, 20_000) for n in g.shape], axis=1)
    um = np.asarray(g.translation) + voxels * np.asarray(g.scale)
    # far from every cell: more than 4 sigma of the largest cell (radius 18 µm → sigma 9 µm)
    distance, _ = cKDTree(truth.cells[["z_um", "y_um", "x_um"]].to_numpy()).query(um)
    region, _ = independent_lookup(*source_volumes(kind), um)
    values = volume[tuple(voxels.T)]
    far = distance > 40.0
    inside, outside = values[far & (region > 0)][:300], values[far & (region <= 0)][:300]
    assert len(inside) == 300 and len(outside) == 300
    assert inside.mean() > outside.mean() + 0.03
    assert max(inside.max(), outside.max()) < 0.3  # the background never reaches the threshold


def test_threshold_finds_every_cell(proc: BrainTruth) -> None:
    """As in specs/demo.toml: threshold 0.3 then 6-connected components, one per true cell."""
    volume = read_image(proc)
    labels, n = ndi.label(volume > 0.3)
    centre = np.minimum(np.floor(proc.cells[["z", "y", "x"]].to_numpy() + 0.5).astype(int), np.array(volume.shape) - 1)
    hit = labels[tuple(centre.T)]
    assert (hit > 0).all()
    assert n == len(proc.cells) == len(np.unique(hit))


def whole_array_nearest(values: np.ndarray, res: float, geometry: Geometry, fill: int) -> np.ndarray:
    """Nearest upsampling of the whole array via the atlas voxel edges ((k - 1/2) res, (k + 1/2) res]."""
    index = []
    for k in range(3):
        um = geometry.translation[k] + np.arange(geometry.shape[k]) * geometry.scale[k]
        edges = (np.arange(values.shape[k] + 1) - 0.5) * res
        index.append(np.searchsorted(edges, um, side="right"))  # 0 below the atlas, n + 1 above
    padded = np.pad(values.astype(np.int64), 1, constant_values=fill)
    return padded[np.ix_(*index)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunks", [(7, 13, 64), (40, 50, 60)])
def test_blockwise_upsampling_equals_whole_array(kind: str, chunks: tuple[int, int, int]) -> None:
    ann, _, res, file_order = source_volumes(kind)
    zyx = np.transpose(ann, (2, 1, 0)) if file_order else ann
    # odd voxel sizes, a start outside the atlas on z and past its end on x
    x_end = zyx.shape[2] * res
    geometry = Geometry((40, 50, 60), (97.0, 23.0, 29.0), (-310.0, 4404.0, x_end - 1303.0))
    blockwise = atlas_on_grid(zyx.astype(np.int64), (res, res, res), geometry, chunks, fill=-1)
    assert blockwise.chunks[0][0] == chunks[0]
    got = blockwise.compute(scheduler="synchronous")
    expected = whole_array_nearest(zyx, res, geometry, fill=-1)
    np.testing.assert_array_equal(got, expected)
    assert (got == -1).any() and (got > 0).any() and (got == 0).any()


# --------------------------------------------------------------------------- default crops


@pytest.mark.parametrize("kind", KINDS)
def test_default_crop(kind: str, tmp_path: Path) -> None:
    truth = write_synthetic_brain(tmp_path, atlas=ALLEN if kind == "allen" else "procedural", say=quiet)
    assert truth.geometry.shape == (250, 250, 320)
    assert truth.geometry.translation[0] < 0
    inside = truth.regions[truth.regions["id"] > 0].groupby("id")["cells"].sum()
    assert (inside >= 200).sum() >= 3
    ids = set(truth.regions["id"])
    assert {0, -1} <= ids


# --------------------------------------------------------------------------- synth hook


SMALL = SynthParams(shape=(16, 64, 64), chunks=(8, 32, 32), occupancy=0.4, seed=5)


def test_occupancy_of_ones_equals_full_occupancy() -> None:
    shape = tuple(s.size for s in grid_sites(SMALL))
    ones = np.ones(shape)
    full = replace(SMALL, occupancy=1.0)
    pd.testing.assert_frame_equal(make_cells(SMALL, ones), make_cells(full))
    volume, cells = synth_volume(SMALL, ones)
    volume_full, cells_full = synth_volume(full)
    pd.testing.assert_frame_equal(cells, cells_full)
    np.testing.assert_array_equal(volume.values, volume_full.values)


def test_sites_with_zero_occupancy_hold_no_cell() -> None:
    sz, sy, sx = grid_sites(SMALL)
    occupancy = np.ones((sz.size, sy.size, sx.size))
    occupancy[:, :, ::2] = 0.0
    cells = make_cells(SMALL, occupancy)
    assert len(cells) > 0
    # a cell lies within spacing / 4 of its site, so its nearest site is its own
    kx = np.abs(cells["x_um"].to_numpy()[:, None] - sx[None, :]).argmin(axis=1)
    assert (kx % 2 == 1).all()
    assert len(cells) == sz.size * sy.size * (sx.size // 2)


def test_occupancy_enters_the_graph_name() -> None:
    shape = tuple(s.size for s in grid_sites(SMALL))
    a, _ = synth_volume(SMALL, np.ones(shape))
    b, _ = synth_volume(SMALL, np.zeros(shape))
    assert a.data.name != b.data.name
    assert not np.array_equal(a.values, b.values)


@pytest.mark.parametrize("bad", [np.ones((2, 2, 2)), np.full((1, 3, 3), 1.5), np.full((1, 3, 3), np.nan)])
def test_bad_occupancy_raises(bad: np.ndarray) -> None:
    params = SynthParams(shape=(4, 16, 16), chunks=(4, 16, 16), voxel_size=(4.0, 1.5, 1.5))
    shape = tuple(s.size for s in grid_sites(params))
    if bad.shape != (2, 2, 2):
        bad = np.broadcast_to(bad.reshape(-1)[0], shape)
    with pytest.raises(ValueError, match="occupancy"):
        make_cells(params, bad)
