"""cvplgraph as a napari plugin: its npe2 manifest, and its reader through napari's own plugin manager on a
headless ``ViewerModel`` (specs and cache folders open as layers named after their nodes, in micrometres,
where their grids lie)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SPEC as CONFTEST_SPEC
from napari.components import ViewerModel

from cvplgraph.synth.volume import SynthParams, write_synthetic

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

#: The shared spec (threshold → components → centroids → count, with outputs) over a crop of the volume.
SPEC = CONFTEST_SPEC.format(url="image.ome.zarr", level=0.3).replace(
    'url = "image.ome.zarr"\n', 'url = "image.ome.zarr"\ncrop = { z = [8, 40], y = [16, 64], x = [0, 48] }\n', 1
)
#: A node added to the spec after the run: not cached, so not shown.
LATER = """
[nodes.later]
op = "gaussian"
image = "input"
sigma = 2.0
"""

SCALE = (4.0, 1.5, 1.5)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cropped spec run by the command line (which keeps a run record), then given a node not computed."""
    folder = tmp_path_factory.mktemp("napari")
    write_synthetic(str(folder / "image.ome.zarr"), SynthParams(shape=(48, 64, 64), chunks=(16, 32, 32), seed=2))
    (folder / "spec.toml").write_text(SPEC)
    run = subprocess.run([sys.executable, "-m", "cvplgraph.cli", "run", "spec.toml", "--quiet", "--scheduler",
                          "threads"], cwd=folder, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    (folder / "spec.toml").write_text(SPEC + LATER)
    return folder


@pytest.fixture(scope="module")
def plugins() -> None:
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # what napari does at start-up: discover the installed plugins' manifests


def test_the_manifest_is_valid_and_installed(plugins: None) -> None:
    import npe2

    manifest = npe2.PluginManager.instance().get_manifest("cvplgraph")
    manifest.validate_imports()  # every command's python_name imports
    assert [r.command for r in manifest.contributions.readers or []] == ["cvplgraph.get_reader"]
    listed = subprocess.run([sys.executable, "-m", "npe2", "list"], capture_output=True, text=True)
    assert "cvplgraph" in listed.stdout, listed.stdout + listed.stderr


@pytest.mark.parametrize("target", ["spec.toml", "cache"])
def test_a_spec_or_its_cache_opens_as_placed_layers(project: Path, plugins: None, target: str) -> None:
    viewer = ViewerModel()
    viewer.open(str(project / target), plugin="cvplgraph")
    layers = {layer.name: layer for layer in viewer.layers}
    assert list(layers) == ["input", "mask", "cells", "centroids", "counts"]  # `later` is not cached: not shown
    assert "crop" in (project / "spec.toml").read_text()
    origin = np.array([8, 16, 0]) * np.array(SCALE)  # the crop's first voxel, in µm
    for name in ("input", "mask", "cells"):
        np.testing.assert_allclose(layers[name].scale, SCALE)
        np.testing.assert_allclose(layers[name].translate, origin)
        np.testing.assert_allclose(layers[name].extent.world[0], origin, err_msg=name)  # where napari puts it
        assert [str(u) for u in layers[name].units] == ["micrometer"] * 3
    assert type(layers["cells"]).__name__ == "Labels" and type(layers["input"]).__name__ == "Image"
    # the points sit on the objects: each centroid's voxel is labelled in the cells layer
    voxels = np.round(layers["centroids"].data).astype(int)
    labels = np.asarray(layers["cells"].data)
    assert len(voxels) > 10 and (labels[tuple(voxels.T)] > 0).mean() > 0.95


def test_what_is_not_cvplgraphs_is_left_to_other_readers(tmp_path: Path) -> None:
    from cvplgraph.inspect.napari_reader import get_reader

    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "CACHEDIR.TAG").write_text("")
    (tmp_path / "cache" / "manifest").mkdir()  # a cache without a run record names no spec
    for path in ("pyproject.toml", "empty", "cache", "missing.toml"):
        assert get_reader(str(tmp_path / path)) is None, path
    assert get_reader([str(tmp_path / "empty"), str(tmp_path / "cache")]) is None
