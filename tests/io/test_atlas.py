"""Atlas inputs and per-region counts, against the real Allen CCFv3 annotation and independent references."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

import cvplgraph
from cvplgraph import ops
from cvplgraph.errors import InputError
from cvplgraph.io.atlas import read_atlas
from cvplgraph.io.outputs import BRAINGLOBE_COLUMNS, brainglobe_summary
from cvplgraph.io.stores import write_array
from cvplgraph.spec.model import AtlasSpec, StoreSpec
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, Table, wrap

CCF = SHARED_DATA / "atlas_ccf2017"
pytestmark = [
    pytest.mark.slow,  # whole runs and subprocesses; see pyproject.toml's markers
    pytest.mark.skipif(not CCF.exists(), reason=f"the real atlas is not at {CCF} (../shared/data)"),
]
ENV_CLI = [sys.executable, "-m", "cvplgraph.cli"]


def ccf_spec(resolution: int = 100, **changes: object) -> AtlasSpec:
    base = AtlasSpec(
        url=str(CCF / f"annotation_{resolution}um.tif"),
        structures=str(CCF / "structures.csv"),
        hemispheres=str(CCF / f"hemispheres_{resolution}um.tif"),
        scale=(float(resolution),) * 3,
        transpose=(2, 1, 0),
    )
    return AtlasSpec(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def points_table(um: np.ndarray) -> Table:
    """Points at ``um`` on a 1 µm image grid that holds them all (a real image holds its cells)."""
    frame = pd.DataFrame(um, columns=["z_um", "y_um", "x_um"])
    low = um.min(axis=0) if len(um) else np.zeros(3)
    shape = np.ceil(um.max(axis=0) - low).astype(int) + 1 if len(um) else np.ones(3, int)
    return Table(dask.delayed(frame), Geometry(tuple(int(n) for n in shape), (1.0, 1.0, 1.0),  # type: ignore[arg-type]
                                               tuple(float(v) for v in low)))  # type: ignore[arg-type]  # fmt: skip


def regions(um: np.ndarray, spec: AtlasSpec) -> pd.DataFrame:
    """The region table of points at ``um``, with whole-region volumes."""
    return ops.region_counts(points_table(um), read_atlas(spec), volume="atlas").compute(scheduler="threads")


@pytest.fixture(scope="module")
def ccf100() -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The annotation and hemispheres in sample (z, y, x) order, and the structure table, read whole."""
    annotation = np.transpose(tifffile.imread(CCF / "annotation_100um.tif"), (2, 1, 0))
    hemispheres = np.transpose(tifffile.imread(CCF / "hemispheres_100um.tif"), (2, 1, 0))
    return annotation, hemispheres, pd.read_csv(CCF / "structures.csv")


# --------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("resolution", [100, 50])
def test_volumes_per_region_and_hemisphere_reproduce_the_golden_table(resolution: int) -> None:
    table = regions(np.empty((0, 3)), ccf_spec(resolution))
    golden = pd.read_csv(CCF / f"leaf_volumes_{resolution}um.csv")
    golden["hemisphere"] = golden["hemisphere"].map({"hemi1": "left", "hemi2": "right"})
    voxel_mm3 = (resolution / 1000) ** 3
    ours = table[(table["id"] > 0) & (table["volume_mm3"] > 0) & table["hemisphere"].isin(["left", "right"])]
    ours = ours.assign(voxels=np.rint(ours["volume_mm3"] / voxel_mm3).astype(int))
    merged = golden.merge(ours, on=["id", "hemisphere"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()
    np.testing.assert_array_equal(merged["voxels_x"], merged["voxels_y"])
    np.testing.assert_allclose(merged["volume_mm3_x"], merged["volume_mm3_y"], rtol=1e-12)


def test_isocortex_owns_no_voxels_but_rolls_up_to_123_mm3() -> None:
    table = regions(np.empty((0, 3)), ccf_spec()).set_index(["acronym", "hemisphere"])
    iso = table.loc[("Isocortex", "both")]
    assert iso["volume_mm3"] == 0 and np.isnan(iso["density_per_mm3"])
    assert iso["volume_mm3_inclusive"] == pytest.approx(123, abs=1)
    root = table.loc[("root", "both")]
    assert root["volume_mm3_inclusive"] == pytest.approx(json.loads((CCF / "metadata.json").read_text())["100um"]
                                                         ["brain_volume_mm3"])  # fmt: skip


@pytest.mark.parametrize("chunks", [(64, 64, 64), (17, 40, 33)])
def test_imaged_volumes_count_the_atlas_voxels_inside_the_image(ccf100, chunks) -> None:  # type: ignore[no-untyped-def]
    """A crop of the brain: volumes (hence densities) cover only the imaged part of each region."""
    annotation, hemi, _ = ccf100
    image = Geometry((120, 300, 250), (8.0, 6.0, 6.0), (-400.0, 4512.0, 4690.0))
    atlas = read_atlas(ccf_spec(chunks=chunks))
    table = ops.region_counts(Table(dask.delayed(pd.DataFrame(columns=["z_um", "y_um", "x_um"])), image), atlas)
    got = table.compute(scheduler="threads")
    axes = []
    for a in range(3):
        centres = 100.0 * np.arange(annotation.shape[a])
        low = image.translation[a] - image.scale[a] / 2
        axes.append((centres >= low) & (centres < low + image.scale[a] * image.shape[a]))
    inside = axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]
    expected = pd.Series(annotation[inside]).value_counts() * 1e-3
    both = got[(got["hemisphere"] == "both")].set_index("id")["volume_mm3"]
    np.testing.assert_allclose(both.reindex(expected.index).to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert both.drop(expected.index, errors="ignore").fillna(0).eq(0).all()
    assert 0 < both[expected.index].sum() < 5  # a crop: a few mm³, not the whole brain


# --------------------------------------------------------------------------- counts


def reference_counts(um: np.ndarray, annotation: np.ndarray, hemi: np.ndarray, structures: pd.DataFrame,
                     scale: float, translation: np.ndarray) -> pd.DataFrame:  # fmt: skip
    """Per (id, side) exclusive and inclusive counts, computed directly with numpy and string paths."""
    index = np.floor((um - translation) / scale + 0.5).astype(int)
    inside = np.all((index >= 0) & (index < np.array(annotation.shape)), axis=1)
    ids = np.full(len(um), -1)
    sides = np.zeros(len(um), int)
    ids[inside] = annotation[tuple(index[inside].T)]
    sides[inside] = hemi[tuple(index[inside].T)]
    rows = []
    for side, code in (("left", 1), ("right", 2), ("both", None)):
        pick = ids if code is None else ids[sides == code]
        counted = pd.Series(pick).value_counts()
        for rid in structures["id"]:
            members = structures["id"][structures["structure_id_path"].str.contains(f"/{rid}/", regex=False)]
            rows.append((rid, side, int(counted.get(rid, 0)), int(counted.reindex(members).fillna(0).sum())))
        for special in (0, -1):
            rows.append((special, side, int(counted.get(special, 0)), int(counted.get(special, 0))))
    return pd.DataFrame(rows, columns=["id", "hemisphere", "cells", "cells_inclusive"])


def test_counts_equal_a_direct_lookup_with_explicit_outside_rows(ccf100) -> None:  # type: ignore[no-untyped-def]
    annotation, hemi, structures = ccf100
    rng = np.random.default_rng(1)
    translation = np.array([-300.0, 250.0, 40.0])
    extent = np.array(annotation.shape) * 100.0
    um = rng.uniform(translation - 500, translation + extent + 500, size=(20000, 3))
    table = regions(um, ccf_spec(translation=tuple(translation)))
    expected = reference_counts(um, annotation, hemi, structures, 100.0, translation)
    got = table[["id", "hemisphere", "cells", "cells_inclusive"]]
    merged = expected.merge(got, on=["id", "hemisphere"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    np.testing.assert_array_equal(merged["cells_x"], merged["cells_y"])
    np.testing.assert_array_equal(merged["cells_inclusive_x"], merged["cells_inclusive_y"])
    both = table[table["hemisphere"] == "both"].set_index("id")
    assert both.loc[-1, "cells"] > 0 and both.loc[0, "cells"] > 0  # reported, never dropped
    assert both.loc[[i for i in both.index if i > 0], "cells"].sum() + both.loc[[0, -1], "cells"].sum() == len(um)
    assert (both["cells"] == 0).sum() > 100  # regions without cells appear with 0
    assert len(both) == len(structures) + 2


@settings(max_examples=60, deadline=None)
@given(
    image_scale=st.tuples(*[st.floats(0.3, 20.0)] * 3),
    image_translation=st.tuples(*[st.floats(-2000, 2000)] * 3),
    atlas_scale=st.tuples(*[st.sampled_from([10.0, 25.0, 40.0, 100.0])] * 3),
    atlas_translation=st.tuples(*[st.floats(-500, 500)] * 3),
    voxel=st.tuples(st.integers(0, 7), st.integers(0, 9), st.integers(0, 5)),
    offset=st.tuples(*[st.floats(-0.49, 0.49)] * 3),
)
def test_a_point_maps_to_the_atlas_voxel_that_holds_it(  # type: ignore[no-untyped-def]
    image_scale, image_translation, atlas_scale, atlas_translation, voxel, offset
) -> None:
    """A cell at image voxel v lands in atlas voxel u when its µm position lies in u's box, whatever the grids."""
    atlas_geometry = Geometry((8, 10, 6), atlas_scale, atlas_translation)
    ids = np.arange(1, 8 * 10 * 6 + 1, dtype=np.uint32).reshape(8, 10, 6)
    structures = pd.DataFrame({"id": ids.ravel().astype(np.int64), "acronym": "r", "name": "r", "parent_id": -1,
                               "depth": 0, "path": [(int(i),) for i in ids.ravel()]})  # fmt: skip
    atlas = read_atlas_from_arrays(ids, atlas_geometry, structures)
    # the point: the centre of atlas voxel `voxel`, moved within its box, expressed in image voxels
    um = np.asarray(atlas_translation) + (np.asarray(voxel) + np.asarray(offset)) * np.asarray(atlas_scale)
    # the image grid (scale, translation moved by whole voxels) reaches over the point, as a real image
    # holds its cells; the mapping does not depend on the grid's extent
    before = np.ceil(np.maximum(0.0, (np.asarray(image_translation) - um) / np.asarray(image_scale)))
    origin = np.asarray(image_translation) - before * np.asarray(image_scale)
    image_voxel = (um - origin) / np.asarray(image_scale)
    shape = tuple(int(n) for n in np.ceil(image_voxel) + 2)
    image = Geometry(shape, image_scale, tuple(float(o) for o in origin))  # type: ignore[arg-type]
    frame = pd.DataFrame([[*image_voxel, *image.to_um(image_voxel[None])[0]]], columns=["z", "y", "x", "z_um", "y_um",
                                                                                          "x_um"])  # fmt: skip
    cells = ops.cell_regions(Table(dask.delayed(frame), image), atlas).compute(scheduler="sync")
    assert cells["region_id"].iloc[0] == ids[voxel]


def read_atlas_from_arrays(ids: np.ndarray, geometry: Geometry, structures: pd.DataFrame) -> cvplgraph.io.atlas.Atlas:
    import dask.array as da

    from cvplgraph.values import Atlas

    return Atlas(wrap(da.from_array(ids, chunks=(3, 4, 5)), geometry), None, structures, "<arrays>", "<table>")


# --------------------------------------------------------------------------- formats and outputs


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory, ccf100) -> dict[str, AtlasSpec]:  # type: ignore[no-untyped-def]
    """The same 100 µm atlas as TIFF, as a BrainGlobe folder and as OME-Zarr labels."""
    annotation, hemi, _ = ccf100
    folder = tmp_path_factory.mktemp("atlases")
    brainglobe = folder / "brainglobe"
    brainglobe.mkdir()
    tifffile.imwrite(brainglobe / "annotation.tiff", annotation)
    tifffile.imwrite(brainglobe / "hemispheres.tiff", hemi)
    shutil.copy(CCF / "structures.csv", brainglobe / "structures.csv")
    (brainglobe / "metadata.json").write_text(json.dumps({"name": "ccf", "resolution": [100, 100, 100]}))
    geometry = Geometry(annotation.shape, (100.0, 100.0, 100.0))
    for name, values in (("annotation", annotation), ("hemispheres", hemi)):
        import dask.array as da

        data = wrap(da.from_array(values, chunks=(40, 64, 64)), geometry)
        dask.compute(*write_array(str(folder / f"{name}.ome.zarr"), data, PortType.Labels, StoreSpec(), name))
    return {
        "tiff": ccf_spec(),
        "brainglobe": AtlasSpec(url=str(brainglobe)),
        "ome-zarr": AtlasSpec(
            url=str(folder / "annotation.ome.zarr"),
            structures=str(CCF / "structures.csv"),
            hemispheres=str(folder / "hemispheres.ome.zarr"),
        ),  # fmt: skip
    }


def test_tiff_brainglobe_folder_and_ome_zarr_give_the_same_table(formats: dict[str, AtlasSpec]) -> None:
    um = np.random.default_rng(2).uniform(0, 11000, size=(5000, 3))
    tables = {name: regions(um, spec) for name, spec in formats.items()}
    assert read_atlas(formats["brainglobe"]).annotation.dtype == np.uint32
    for name, table in tables.items():
        pd.testing.assert_frame_equal(table, tables["tiff"], obj=name)


def test_brainglobe_summary_has_the_reference_columns() -> None:
    reference = SHARED_DATA / "brainmapper_output_example" / "brainglobe_utils_reference" / "region_totals.csv"
    um = np.random.default_rng(3).uniform(0, 11000, size=(3000, 3))
    summary = brainglobe_summary(regions(um, ccf_spec()))
    # the reference was written by an older brainglobe-utils (pandas < 2.2): the same columns, in another order;
    # tests/io/test_brainmapper.py compares whole tables with what brainglobe-utils writes today
    assert sorted(summary.columns) == sorted(pd.read_csv(reference, nrows=0).columns) == sorted(BRAINGLOBE_COLUMNS)
    assert (summary["left_cell_count"] + summary["right_cell_count"] == summary["total_cells"]).all()
    assert summary["total_volume_mm3"].sum() == pytest.approx(505.359)


@pytest.mark.parametrize("seed", [6, 7])
def test_the_brainglobe_summary_keeps_every_in_brain_cell_of_a_crop(ccf100, seed: int) -> None:  # type: ignore[no-untyped-def]
    """A crop that cuts regions, imaged volumes: cells near the crop's faces lie in atlas voxels whose
    centres fall outside it, so some regions hold cells but no imaged volume. The summary keeps them
    (empty density) and its total is the number of cells in the brain, looked up with numpy."""
    annotation, hemi, _ = ccf100
    image = Geometry((120, 300, 250), (8.0, 6.0, 6.0), (-400.0, 4512.0, 4690.0))
    low = np.asarray(image.translation) - np.asarray(image.scale) / 2
    extent = np.asarray(image.scale) * image.shape
    rng = np.random.default_rng(seed)
    um = low + rng.uniform(0, 1, (6000, 3)) * extent
    um[:3000, 1] = low[1] + rng.choice([0.0, extent[1] - 50.0], 3000) + rng.uniform(0, 50.0, 3000)  # by y faces
    table = ops.region_counts(Table(dask.delayed(pd.DataFrame(um, columns=["z_um", "y_um", "x_um"])), image),
                              read_atlas(ccf_spec()))  # fmt: skip
    frame = table.compute(scheduler="threads")
    both = frame[(frame["hemisphere"] == "both") & (frame["id"] > 0)]
    assert ((both["cells"] > 0) & (both["volume_mm3"] == 0)).any()  # the case this test is about
    index = np.floor(um / 100.0 + 0.5).astype(int)
    inside = np.all((index >= 0) & (index < np.array(annotation.shape)), axis=1)
    in_brain = int((annotation[tuple(index[inside].T)] > 0).sum())
    summary = brainglobe_summary(frame)
    assert summary["total_cells"].sum() == in_brain > 0
    empty = summary[summary["total_volume_mm3"] == 0]
    assert len(empty) and (empty["total_cells"] > 0).all()
    assert empty[["left_cells_per_mm3", "right_cells_per_mm3"]].isna().all().all()


def test_density_map_paints_each_voxel_with_its_regions_density(ccf100) -> None:  # type: ignore[no-untyped-def]
    annotation, hemi, _ = ccf100
    atlas = read_atlas(ccf_spec())
    um = np.random.default_rng(4).uniform(0, 11000, size=(20000, 3))
    table = ops.region_counts(points_table(um), atlas, volume="atlas")
    painted = ops.region_density_map(table, atlas).data.compute(scheduler="threads")
    frame = table.compute(scheduler="threads")
    lut = frame[frame["hemisphere"] != "both"].set_index(["id", "hemisphere"])["density_per_mm3"].fillna(0)
    keys = pd.MultiIndex.from_arrays([annotation.ravel().astype(np.int64),
                                      pd.Series(hemi.ravel()).map({1: "left", 2: "right"})])  # fmt: skip
    expected = np.where(annotation.ravel() > 0, lut.reindex(keys).fillna(0).to_numpy(), 0).reshape(annotation.shape)
    np.testing.assert_allclose(painted, expected.astype(np.float32), rtol=1e-6)


# --------------------------------------------------------------------------- bad inputs


def test_float_atlas_is_rejected_naming_the_file(tmp_path: Path, ccf100) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "annotation_float.tif"
    tifffile.imwrite(path, ccf100[0].astype(np.float32))
    with pytest.raises(InputError, match=r"annotation_float\.tif: region ids are stored as float32"):
        read_atlas(ccf_spec(url=str(path), hemispheres=""))


def test_hemisphere_volume_of_the_wrong_shape_is_rejected(tmp_path: Path, ccf100) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hemi_small.tif"
    tifffile.imwrite(path, ccf100[1][:, :, :-3].transpose(2, 1, 0).copy())
    with pytest.raises(InputError, match=r"hemi_small\.tif: hemisphere volume has shape"):
        read_atlas(ccf_spec(hemispheres=str(path)))


def test_structure_table_missing_ids_is_an_error_naming_it(tmp_path: Path) -> None:
    table = pd.read_csv(CCF / "structures.csv")
    path = tmp_path / "structures_short.csv"
    table[table["acronym"] != "CA1"].to_csv(path, index=False)
    with pytest.raises(InputError, match=r"structures_short\.csv: 1 region id\(s\) in the atlas volume are missing"):
        regions(np.zeros((1, 3)), ccf_spec(structures=str(path)))


ATLAS_SPEC = """\
[input]
url = "{image}"

[inputs.atlas]
url = "{ccf}/annotation_100um.tif"
structures = "{structures}"
hemispheres = "{ccf}/hemispheres_100um.tif"
scale = [100, 100, 100]
transpose = [2, 1, 0]

[cache]
url = "cache"

[nodes.mask]
op = "threshold"
image = "input"
level = 0.3

[nodes.cells]
op = "connected_components"
mask = "mask"

[nodes.centroids]
op = "centroids"
labels = "cells"

[nodes.regions]
op = "region_counts"
points = "centroids"
atlas = "atlas"

[nodes.cell_table]
op = "cell_regions"
points = "centroids"
atlas = "atlas"

[nodes.density_map]
op = "region_density_map"
regions = "regions"
atlas = "atlas"

[outputs]
regions = ["results/regions.csv", {{ path = "results/summary.csv", format = "brainglobe" }}, "results/regions.zarr",
           "results/regions.png"]
cell_table = "results/cells.csv"
density_map = "results/density.ome.zarr"
"""


def test_a_spec_with_an_atlas_runs_end_to_end(tmp_path: Path, synthetic) -> None:  # type: ignore[no-untyped-def]
    image, truth = synthetic
    path = tmp_path / "atlas.toml"
    path.write_text(ATLAS_SPEC.format(image=image, ccf=CCF, structures=CCF / "structures.csv"))
    results = cvplgraph.run(cvplgraph.load_spec(path), scheduler="threads")
    table = pd.read_csv(tmp_path / "results" / "regions.csv")
    cells = pd.read_csv(tmp_path / "results" / "cells.csv")
    assert table[table["hemisphere"] == "both"]["cells"].sum() == len(cells) > 0.95 * len(truth)
    # the image sits at the atlas origin: its cells lie where the annotation is 0 or in the brain's corner
    assert set(cells["region_id"]) <= set(table["id"])
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert list(summary.columns) == BRAINGLOBE_COLUMNS
    assert (tmp_path / "results" / "regions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ds = results["regions"]
    assert set(ds.dims) == {"region", "hemisphere"} and "acronym" in ds.coords
    import xarray as xr

    stored = xr.open_zarr(tmp_path / "results" / "regions.zarr")
    assert int(stored["cells"].sel(hemisphere="both").sum()) == len(cells)
    from cvplgraph.inspect.runlog import run_warnings

    assert run_warnings(results.plan, results.report, results) == []  # a well-placed atlas: nothing to say
    # a second run reads everything from the cache
    again = cvplgraph.run(cvplgraph.load_spec(path), scheduler="threads")
    assert again.report.computed == []


def test_cli_reports_a_bad_atlas_in_one_line(tmp_path: Path, synthetic) -> None:  # type: ignore[no-untyped-def]
    table = pd.read_csv(CCF / "structures.csv")
    short = tmp_path / "structures_short.csv"
    table[table["acronym"] != "CA1"].to_csv(short, index=False)
    path = tmp_path / "atlas.toml"
    # whole-region volumes: the check covers every atlas voxel, not only the imaged corner
    text = ATLAS_SPEC.format(image=synthetic[0], ccf=CCF, structures=short)
    path.write_text(text.replace('atlas = "atlas"\n', 'atlas = "atlas"\nvolume = "atlas"\n', 1))
    done = subprocess.run([*ENV_CLI, "run", str(path), "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "structures_short.csv" in lines[0] and "missing from the structure table" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results" / "regions.csv").exists()


def test_clearmap_style_hemisphere_codes_are_mapped(tmp_path: Path, ccf100) -> None:  # type: ignore[no-untyped-def]
    """A 0 / 255 hemisphere volume with the mapping spelled out gives the same table as the 1 / 2 one."""
    hemi = ccf100[1]
    recoded = np.where(hemi == 1, 255, 0).astype(np.uint8).transpose(2, 1, 0).copy()
    path = tmp_path / "hemispheres_0_255.tif"
    tifffile.imwrite(path, recoded)
    um = np.random.default_rng(5).uniform(0, 11000, size=(4000, 3))
    mapped = regions(um, ccf_spec(hemispheres=str(path), hemisphere_values=(255, 0)))
    pd.testing.assert_frame_equal(mapped, regions(um, ccf_spec()))


def test_a_cell_in_a_region_missing_from_the_table_is_an_error(tmp_path: Path, ccf100) -> None:  # type: ignore[no-untyped-def]
    """Even where the region's voxels are not counted (a tiny image), its cells are never dropped silently."""
    annotation = ccf100[0]
    ca1 = pd.read_csv(CCF / "structures.csv").set_index("acronym").loc["CA1", "id"]
    voxel = np.argwhere(annotation == ca1)[0]
    table = pd.read_csv(CCF / "structures.csv")
    path = tmp_path / "structures_no_ca1.csv"
    table[table["acronym"] != "CA1"].to_csv(path, index=False)
    atlas = read_atlas(ccf_spec(structures=str(path)))
    counts = ops.region_counts(points_table(voxel[None] * 100.0), atlas)  # imaged volume: one µm³ at the origin
    with pytest.raises(InputError, match=r"structures_no_ca1\.csv: 1 region id\(s\).*: 382"):
        counts.compute(scheduler="sync")


def test_an_atlas_placed_away_from_the_image_is_one_line_before_any_compute(tmp_path: Path, synthetic) -> None:  # type: ignore[no-untyped-def]
    """A translation that puts the atlas 1 m from the image: every cell would be outside_atlas. The run
    stops while the graph is built — one line giving both extents, exit 1, no entry committed, no output."""
    path = tmp_path / "atlas.toml"
    text = ATLAS_SPEC.format(image=synthetic[0], ccf=CCF, structures=CCF / "structures.csv")
    path.write_text(text.replace("transpose = [2, 1, 0]\n", "transpose = [2, 1, 0]\ntranslation = [1e6, 0, 0]\n", 1))
    done = subprocess.run([*ENV_CLI, "run", str(path), "--quiet", "--scheduler", "threads"], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "do not overlap" in lines[0] and "z 999950" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache" / "manifest").exists() and not (tmp_path / "results").exists()  # nothing committed


def test_ids_missing_from_the_table_stop_plan_and_run_before_any_compute(tmp_path: Path, synthetic) -> None:  # type: ignore[no-untyped-def]
    """CA1 (382) is left out of the table. It lies far from the imaged corner, so no cell and no imaged voxel
    is in it (the compute-time check never saw it); the annotation holds it, which plan and run check
    first: one line, exit 1, nothing computed. The ids are kept in the cache by the atlas's fingerprint."""
    table = pd.read_csv(CCF / "structures.csv")
    short = tmp_path / "structures_short.csv"
    table[table["acronym"] != "CA1"].to_csv(short, index=False)
    path = tmp_path / "atlas.toml"
    path.write_text(ATLAS_SPEC.format(image=synthetic[0], ccf=CCF, structures=short))
    expected = (
        f"cvplgraph: error: {CCF / 'annotation_100um.tif'} with {short}: 1 region id(s) in the atlas volume "
        "are missing from the structure table: 382; expected a table with every id of the annotation"
    )
    for command in ("plan", "run"):
        done = subprocess.run([*ENV_CLI, command, str(path), *(["--quiet"] if command == "run" else [])],
                              capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), done.stderr
    assert not (tmp_path / "cache" / "manifest").exists() and not (tmp_path / "results").exists()
    written = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and "atlas" not in p.parts]
    assert set(written) <= {"zarr.json", "layout.json", "CACHEDIR.TAG"}  # stores laid out, no chunk computed
    kept = list((tmp_path / "cache" / "atlas").glob("*.json"))
    assert len(kept) == 1
    reference = np.unique(tifffile.imread(CCF / "annotation_100um.tif"))
    np.testing.assert_array_equal(json.loads(kept[0].read_text())["ids"], reference)


def test_atlas_ids_are_remembered_and_an_unwritable_cache_costs_only_time(tmp_path: Path) -> None:
    from cvplgraph.cache.atlas_ids import atlas_ids

    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.array([0, 7, 614454277], dtype=np.uint32)

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # the cache "folder" is a file: nothing can be written under it
    ids = atlas_ids(str(blocked), "fingerprint-unwritable", compute)
    np.testing.assert_array_equal(ids, [0, 7, 614454277])
    assert calls == [1]
    atlas_ids(str(tmp_path / "cache"), "fingerprint-kept", compute)
    assert (tmp_path / "cache" / "atlas" / "fingerprint-kept.json").exists() and calls == [1, 1]
    from cvplgraph.cache import atlas_ids as module

    module._known.clear()  # a new process: the file answers
    again = atlas_ids(str(tmp_path / "cache"), "fingerprint-kept", lambda: np.array([1]))
    np.testing.assert_array_equal(again, [0, 7, 614454277])


def test_a_misplaced_atlas_is_said_at_plan_time_and_after_the_run(tmp_path: Path, synthetic) -> None:  # type: ignore[no-untyped-def]
    """The atlas moved 200 µm along z: it covers z ≥ 150 µm of an image 192 µm deep, 21 % of it. The run
    says so while its graph is built, then names each region node and its share of cells outside the
    atlas (counted here from the cell positions alone), on stderr and in the run record."""
    path = tmp_path / "atlas.toml"
    text = ATLAS_SPEC.format(image=synthetic[0], ccf=CCF, structures=CCF / "structures.csv")
    moved = text.replace("transpose = [2, 1, 0]\n", "transpose = [2, 1, 0]\ntranslation = [200, 0, 0]\n", 1)
    path.write_text(moved)
    done = subprocess.run([*ENV_CLI, "run", str(path), "--quiet", "--scheduler", "threads"], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    coverage = [line for line in lines if "the atlas covers only" in line]
    assert len(coverage) == 1 and "covers only 21% of the image" in coverage[0] and "translation" in coverage[0]
    cells = pd.read_csv(tmp_path / "results" / "cells.csv")
    outside = int((cells["z_um"] < 150).sum())  # the atlas's first voxel is centred at 200 µm, 100 µm wide
    assert outside >= len(cells) / 2
    share = f"{outside} of {len(cells)} cells ({outside / len(cells):.0%}) lie outside the atlas volume"
    assert len([line for line in lines if line.startswith("warning:")]) == 2
    for node in ("cell_table", "regions"):
        start = f"warning: {node}: {share} (row -1 outside_atlas); the atlas is probably misplaced"
        assert any(line.startswith(start) for line in lines), lines
    record = json.loads(next((tmp_path / "cache" / "runs").glob("*.json")).read_text())
    assert sorted(w.split(":")[0] for w in record["warnings"]) == ["cell_table", "regions"]
    assert all("[inputs.atlas]" in w and "scale" in w for w in record["warnings"])


def test_coverage_is_the_share_of_the_image_the_atlas_covers() -> None:
    from cvplgraph.ops.regions import coverage

    image = Geometry((10, 10, 10), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))  # the box 0–10 µm along each axis
    assert coverage(image, Geometry((5, 20, 20), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))) == pytest.approx(0.5)
    assert coverage(image, Geometry((4, 4, 20), (2.0, 2.0, 1.0), (6.0, 6.0, -4.5))) == pytest.approx(0.25)
    assert coverage(image, Geometry((3, 3, 3), (1.0, 1.0, 1.0), (100.0, 0.5, 0.5))) == 0.0


@pytest.mark.parametrize("n_parts", [2, 5, 11])
def test_region_ops_on_partitions_equal_them_on_the_whole_table(ccf100, n_parts: int) -> None:  # type: ignore[no-untyped-def]
    """region_counts adds per-partition counts in a tree, cell_regions looks each partition up alone: the
    region table is the one of the whole table, the per-cell rows the same rows in the same order."""
    atlas = read_atlas(ccf_spec())
    image = Geometry((120, 110, 130), (100.0, 100.0, 100.0))
    um = np.random.default_rng(n_parts).uniform(-300, 12000, size=(9000, 3))
    frame = pd.DataFrame(um, columns=["z_um", "y_um", "x_um"])
    whole = Table(dask.delayed(frame), image)
    bounds = np.linspace(0, len(frame), n_parts + 1).astype(int)
    split = Table(tuple(dask.delayed(frame.iloc[a:b].reset_index(drop=True)) for a, b in zip(bounds, bounds[1:])),
                  image)  # fmt: skip
    assert len(split.parts) == n_parts
    for volume in ("imaged", "atlas"):
        expected = ops.region_counts(whole, atlas, volume=volume).compute(scheduler="threads")  # type: ignore[arg-type]
        got = ops.region_counts(split, atlas, volume=volume).compute(scheduler="threads")  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(got, expected)
        assert expected["cells"].sum() > 0
    expected = ops.cell_regions(whole, atlas).compute(scheduler="threads")
    got = ops.cell_regions(split, atlas)
    assert len(got.parts) == n_parts
    pd.testing.assert_frame_equal(got.compute(scheduler="threads"), expected)
