"""Napari display of cached results, checked on a headless ``ViewerModel``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from napari.components import ViewerModel

import cvplgraph
from cvplgraph.synth.brain import busiest_plane, write_synthetic_brain
from cvplgraph.values import Geometry

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

SPEC = """\
[input]
url = "image.ome.zarr"

[inputs.atlas]
url = "atlas"

[cache]
url = "cache"

[nodes.smooth]
op = "gaussian"
image = "input"
sigma = 4.0
view = {{ layer = {{ colormap = "magenta", opacity = 0.5, visible = false }} }}

[nodes.mask]
op = "threshold"
image = "input"
level = 0.3

[nodes.cells]
op = "connected_components"
mask = "mask"
store = {{ multiscale = 3 }}

[nodes.centroids]
op = "centroids"
labels = "cells"
image = "input"

[nodes.counts]
op = "count"
objects = "centroids"
block = [32, 64, 64]

[nodes.grid_density]
op = "density"
objects = "centroids"
spacing = 200.0

[nodes.regions]
op = "region_counts"
points = "centroids"
atlas = "atlas"

[nodes.region_map]
op = "region_density_map"
regions = "regions"
atlas = "atlas"

[nodes.cell_table]
op = "cell_regions"
points = "centroids"
atlas = "atlas"

[nodes.later]
op = "gaussian"
image = "input"
sigma = 2.0
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Geometry]:
    """A small procedural brain (its edge: outside, cortex, cerebellum), every node but `later` cached."""
    folder = tmp_path_factory.mktemp("view")
    truth = write_synthetic_brain(
        folder, atlas="procedural", crop_um=((300, 940), (4500, 5268), (2600, 3368)), chunks=(40, 64, 64),
        say=lambda _: None,
    )  # fmt: skip
    spec_path = folder / "view.toml"
    spec_path.write_text(SPEC.format())
    spec = cvplgraph.load_spec(spec_path)
    cvplgraph.run(spec.__class__(**{**spec.__dict__, "nodes": tuple(n for n in spec.nodes if n.name != "later")}),
                  scheduler="threads")  # fmt: skip
    return spec_path, truth.geometry


def test_every_port_type_becomes_the_right_layer(project: tuple[Path, Geometry]) -> None:
    spec_path, geometry = project
    viewer = ViewerModel()
    found = cvplgraph.view.show(viewer, cvplgraph.load_spec(spec_path))
    kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
    assert kinds == {
        "input": "Image", "atlas": "Labels", "smooth": "Image", "mask": "Labels", "cells": "Labels",
        "centroids": "Points", "counts": "Image", "grid_density": "Image", "region_map": "Image",
        "cell_table": "Points",
    }  # fmt: skip
    assert found.missing == {}  # `later` is not cached, and not asked for: not shown, not computed
    for name in ("input", "smooth", "mask", "cells", "centroids"):
        layer = viewer.layers[name]
        np.testing.assert_allclose(layer.scale, geometry.scale)
        np.testing.assert_allclose(layer.translate, geometry.translation)
    np.testing.assert_allclose(viewer.layers["atlas"].scale, (100.0, 100.0, 100.0))
    np.testing.assert_allclose(viewer.layers["region_map"].scale, (100.0, 100.0, 100.0))


def test_points_carry_their_features_and_the_atlas_its_region_names(project: tuple[Path, Geometry]) -> None:
    viewer = ViewerModel()
    cvplgraph.view.show(viewer, cvplgraph.load_spec(project[0]), ["centroids", "cell_table"])
    cells = viewer.layers["cell_table"]
    assert {"volume_um3", "mean_intensity", "region_id", "acronym", "hemisphere"} <= set(cells.features.columns)
    assert len(cells.data) == len(cells.features) > 50
    atlas = viewer.layers["atlas"].features
    assert {"CTX1", "CB"} <= set(atlas["acronym"]) and (atlas["index"] > 2**24).any()


def test_multiscale_labels_keep_integer_ids(project: tuple[Path, Geometry]) -> None:
    viewer = ViewerModel()
    cvplgraph.view.show(viewer, cvplgraph.load_spec(project[0]), ["cells"])
    cells = viewer.layers["cells"]
    assert cells.multiscale and len(cells.data) == 3
    assert all(np.issubdtype(level.dtype, np.integer) for level in cells.data)
    top, coarse = np.asarray(cells.data[0]), np.asarray(cells.data[2])
    assert set(np.unique(coarse)) <= set(np.unique(top))  # nearest sampling: no invented ids


def test_spec_view_options_reach_the_layer(project: tuple[Path, Geometry]) -> None:
    viewer = ViewerModel()
    cvplgraph.view.show(viewer, cvplgraph.load_spec(project[0]), ["smooth"])
    smooth = viewer.layers["smooth"]
    assert smooth.colormap.name == "magenta" and smooth.opacity == 0.5 and not smooth.visible


def test_a_node_not_cached_is_reported_not_computed(project: tuple[Path, Geometry]) -> None:
    spec = cvplgraph.load_spec(project[0])
    viewer = ViewerModel()
    found = cvplgraph.view.show(viewer, spec, ["later", "mask"])
    assert "later" in found.missing and "cvplgraph run" in found.missing["later"]
    assert "later" not in [layer.name for layer in viewer.layers]
    assert cvplgraph.plan(spec).nodes["later"].status == "compute"  # still not cached
    out = subprocess.run([sys.executable, "-m", "cvplgraph.cli", "view", str(project[0]), "later", "--no-window"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 1 and "later: not cached yet; run `cvplgraph run" in out.stderr


def test_run_with_a_viewer_adds_the_layers(tmp_path: Path, project: tuple[Path, Geometry]) -> None:
    copy = tmp_path / "project"
    shutil.copytree(project[0].parent, copy)  # this run caches `later`: keep the shared project as it is
    viewer = ViewerModel()
    cvplgraph.run(cvplgraph.load_spec(copy / project[0].name), scheduler="threads", viewer=viewer)
    assert "later" in [layer.name for layer in viewer.layers]  # computed by this run, then shown


@pytest.mark.parametrize("node, layer_type", [("smooth", "image"), ("cells", "labels")])
def test_stores_open_with_the_napari_ome_zarr_plugin(project: tuple[Path, Geometry], node: str,
                                                     layer_type: str) -> None:  # fmt: skip
    """Not only cvplgraph reads its stores: napari's OME-Zarr reader plugin opens them with their pyramid."""
    from napari_ome_zarr import napari_get_reader

    plan = cvplgraph.plan(cvplgraph.load_spec(project[0]))
    url = plan.manifest.store_url(plan.entries[node].store)
    reader = napari_get_reader(url)
    assert reader is not None, f"napari-ome-zarr does not recognise {url}"
    (data, kwargs, kind), *_ = reader(url)
    assert kind == layer_type
    np.testing.assert_allclose(kwargs["scale"], project[1].scale)
    levels = data if isinstance(data, list) else [data]
    assert len(levels) == (3 if node == "cells" else 1)
    assert np.asarray(levels[-1]).dtype == (np.int32 if node == "cells" else np.float32)


def test_layers_that_cover_the_field_start_hidden_unless_named(project: tuple[Path, Geometry]) -> None:
    """Atlas, densities and block counts would hide the cells: shown at first only when asked for by name."""
    spec = cvplgraph.load_spec(project[0])
    everything = ViewerModel()
    cvplgraph.view.show(everything, spec)
    visible = {layer.name for layer in everything.layers if layer.visible}
    assert visible == {"input", "mask", "cells", "centroids", "cell_table"}  # smooth: hidden by its spec options
    named = ViewerModel()
    cvplgraph.view.show(named, spec, ["region_map", "counts"])
    assert named.layers["region_map"].visible and named.layers["counts"].visible
    assert not named.layers["atlas"].visible


def test_density_contrast_spans_the_values_not_the_first_plane(project: tuple[Path, Geometry]) -> None:
    viewer = ViewerModel()
    cvplgraph.view.show(viewer, cvplgraph.load_spec(project[0]), ["region_map"])
    layer = viewer.layers["region_map"]
    values = np.asarray(layer.data)
    values = values[values > 0]
    low, high = layer.contrast_limits
    assert low == 0.0 and np.percentile(values, 99) <= high <= values.max()


def test_point_markers_are_as_wide_as_the_cells(project: tuple[Path, Geometry]) -> None:
    viewer = ViewerModel()
    cvplgraph.view.show(viewer, cvplgraph.load_spec(project[0]), ["centroids"])
    layer = viewer.layers["centroids"]
    diameter_um = 2 * np.cbrt(3 * layer.features["volume_um3"].to_numpy() / (4 * np.pi))
    pixel_um = float(np.mean(layer.scale[-2:]))
    np.testing.assert_allclose(layer.size * pixel_um, 1.3 * np.maximum(diameter_um, pixel_um))


# --- a real napari window (Qt) on a virtual screen (the `display` fixture: tests/conftest.py) -----


def _colourful(picture: np.ndarray) -> float:
    """Fraction of pixels that are clearly not grey (labels colours, yellow rings)."""
    rgb = picture[..., :3].astype(int)
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 60).mean())


def test_napari_window_renders_the_steps(display: list[str], project: tuple[Path, Geometry], tmp_path: Path) -> None:
    """`cvplgraph view --screenshot` in a real Qt napari window: the picture shows the image and the overlays."""
    import matplotlib.image

    spec, geometry = project
    plane = busiest_plane(pd.read_csv(spec.parent / "cells.csv"), geometry.scale[0])
    pictures = {}
    for name, nodes in {"raw": ["input"], "steps": ["cells", "centroids"]}.items():
        png = tmp_path / f"{name}.png"
        out = subprocess.run(
            [*display, sys.executable, "-m", "cvplgraph.cli", "view", str(spec), *nodes,
             "--screenshot", str(png), "--size", "640x480", "--z", str(plane)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        pictures[name] = (matplotlib.image.imread(png) * 255).astype(np.uint8)
    raw, steps = pictures["raw"], pictures["steps"]
    assert raw.shape[:2] == steps.shape[:2] == (480, 640)
    assert raw[..., :3].std() > 5, "the image layer rendered blank"
    assert len(np.unique(raw[..., :3].reshape(-1, 3), axis=0)) > 50, "the image layer rendered flat"
    # the raw image is grey; the labels and the point rings add colour over it
    assert _colourful(raw) < 0.001 < 0.01 < _colourful(steps)
