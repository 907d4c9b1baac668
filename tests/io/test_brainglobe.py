"""Named atlases: found in the local BrainGlobe folder, read as BrainGlobe's own library reads them.

The 100 µm Allen CCFv3 annotation of ``../shared/data/atlas_ccf2017`` (Allen Institute terms; Wang et al.
2020) is packaged in brainglobe-atlasapi's current on-disk layout: stacks written by its own
``atlas_generation.stacks`` writers, the manifest from its own ``generate_metadata_dict``, the terminology
CSV in the columns its ``load_structures_from_csv`` reads. BrainGlobe's ``BrainGlobeAtlas`` then opens the
folder: every comparison below is against what BrainGlobe's reader returns.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile

from cvplgraph.errors import InputError
from cvplgraph.io.atlas import read_atlas
from cvplgraph.io.brainglobe import brainglobe_dir, find_atlas, installed
from cvplgraph.spec.model import AtlasSpec

pytest.importorskip("brainglobe_atlasapi", reason="the [brainglobe] extra is part of [test]")

from brainglobe_atlas import CCF, asr, configure, narrow, package, structures  # noqa: E402
from brainglobe_atlasapi import BrainGlobeAtlas  # noqa: E402

NAME = "allen_mouse_100um"


@pytest.fixture(scope="module")
def ccf_asr() -> tuple[np.ndarray, np.ndarray]:
    annotation = narrow(tifffile.imread(CCF / "annotation_100um.tif").astype(np.uint32))
    hemispheres = tifffile.imread(CCF / "hemispheres_100um.tif").astype(np.uint8)
    return asr(annotation), asr(hemispheres)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, ccf_asr: tuple[np.ndarray, np.ndarray]) -> Path:
    """A BrainGlobe folder holding the CCF at 100 µm twice (1.0 and 1.1), and a symmetric copy."""
    root = tmp_path_factory.mktemp("brainglobe")
    annotation, hemispheres = ccf_asr
    package(root, NAME, "1.0", annotation, hemispheres)
    package(root, NAME, "1.1", annotation, hemispheres)
    package(root, "symmetric_mouse_100um", "1.0", annotation, None)
    return root


@pytest.fixture
def configured(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """BrainGlobe's configuration file pointing at ``home``, found through BRAINGLOBE_CONFIG_DIR."""
    config = tmp_path / "config"
    configure(config, home)
    monkeypatch.setenv("BRAINGLOBE_CONFIG_DIR", str(config))
    return home


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: a named atlas is read from disk only."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_folder_comes_from_brainglobes_configuration(configured: Path) -> None:
    assert brainglobe_dir() == configured
    assert installed() == {NAME: ["1.0", "1.1"], "symmetric_mouse_100um": ["1.0"]}


def test_a_named_atlas_reads_as_brainglobe_reads_it(configured: Path, offline: None) -> None:
    theirs = BrainGlobeAtlas(NAME, brainglobe_dir=configured, check_latest=False)
    ours = read_atlas(AtlasSpec(url="", name=NAME))
    assert ours.geometry.scale == tuple(float(r) for r in theirs.resolution) == (100.0, 100.0, 100.0)
    assert ours.geometry.shape == tuple(theirs.shape)
    np.testing.assert_array_equal(ours.annotation.data.compute(), theirs.annotation)
    assert ours.hemispheres is not None
    np.testing.assert_array_equal(ours.hemispheres.data.compute(), theirs.hemispheres)
    listed = {s["id"]: (s["acronym"], s["name"], tuple(s["structure_id_path"])) for s in theirs.structures_list}
    table = ours.structures.set_index("id")
    assert set(table.index) == set(listed)
    for i, (acronym, name, path) in listed.items():
        assert (table.at[i, "acronym"], table.at[i, "name"], table.at[i, "path"]) == (acronym, name, path)
    assert find_atlas(NAME).version == "1.1"  # the newest installed, unless a version is named
    assert find_atlas(NAME, "1.0").version == "1.0"


def test_a_symmetric_atlas_is_split_as_brainglobe_splits_it(configured: Path, offline: None) -> None:
    theirs = BrainGlobeAtlas("symmetric_mouse_100um", brainglobe_dir=configured, check_latest=False)
    ours = read_atlas(AtlasSpec(url="", name="symmetric_mouse_100um", chunks=(32, 40, 24)))
    assert ours.hemispheres is not None
    np.testing.assert_array_equal(ours.hemispheres.data.compute(), theirs.hemispheres)


@pytest.mark.parametrize("orientation", ["psl", "sal", "ial"])
def test_an_orientation_turns_the_atlas_and_lookups_agree_with_brainglobe(
    configured: Path, orientation: str, ccf_asr: tuple[np.ndarray, np.ndarray]
) -> None:
    """The atlas turned to the image's axes: voxel for voxel the numpy turn of BrainGlobe's volume, and
    each point's atlas-space coordinates (``file_voxels``) land in the region BrainGlobe gives for them."""
    theirs = BrainGlobeAtlas(NAME, brainglobe_dir=configured, check_latest=False)
    ours = read_atlas(AtlasSpec(url="", name=NAME, orientation=orientation))
    pair = {"a": "ap", "p": "ap", "s": "si", "i": "si", "l": "lr", "r": "lr"}
    axes = [next(j for j, c in enumerate("asr") if c in pair[letter]) for letter in orientation]
    expected = theirs.annotation.transpose(axes)
    flips = [orientation[k] != "asr"[axes[k]] for k in range(3)]
    expected = expected[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    np.testing.assert_array_equal(ours.annotation.data.compute(), expected)
    rng = np.random.default_rng(5)
    g = ours.geometry
    um = rng.uniform(0, 1, size=(300, 3)) * (np.asarray(g.shape) - 1) * np.asarray(g.scale)
    index, _ = g.to_voxel(um)
    atlas_space = ours.file_voxels(um)
    mine = ours.annotation.data.compute()[tuple(index.T)]
    brainglobe = [theirs.structure_from_coords(np.round(p)) for p in atlas_space]
    np.testing.assert_array_equal(mine, brainglobe)


def test_a_missing_atlas_is_one_line_naming_the_install_command(configured: Path, offline: None) -> None:
    with pytest.raises(InputError) as info:
        read_atlas(AtlasSpec(url="", name="allen_mouse_25um"))
    message = str(info.value)
    assert "\n" not in message and str(configured) in message
    assert "brainglobe install -a allen_mouse_25um" in message and f"{NAME} 1.0/1.1" in message
    with pytest.raises(InputError, match="version 2.0 is not installed"):
        read_atlas(AtlasSpec(url="", name=NAME, version="2.0"))


def test_chunks_brainglobe_has_not_fetched_are_an_error_not_a_download(
    configured: Path, offline: None, tmp_path: Path, ccf_asr: tuple[np.ndarray, np.ndarray]
) -> None:
    root = tmp_path / "partial"
    package(root, NAME, "1.0", *ccf_asr)
    for level in (root / "brainglobe-atlasapi" / "annotation-sets").glob("*/*/annotations_compressed.ome.zarr/s0"):
        shutil.rmtree(level / "c")
    configure(tmp_path / "config", root)
    with pytest.raises(InputError, match="not on disk.*`brainglobe install -a allen_mouse_100um"):
        read_atlas(AtlasSpec(url="", name=NAME))


def test_a_folder_of_the_older_layout_is_found_by_name(
    configured: Path, ccf_asr: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """brainglobe-atlasapi ≤ 2 kept ``NAME_vVERSION`` folders of TIFFs and JSON: the same atlas reads the same."""
    annotation, hemispheres = ccf_asr
    root = tmp_path / "old"
    folder = root / f"{NAME}_v1.2"
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "annotation.tiff", annotation)
    tifffile.imwrite(folder / "hemispheres.tiff", hemispheres)
    (folder / "structures.json").write_text(json.dumps(structures()))
    (folder / "metadata.json").write_text(json.dumps({"name": "allen_mouse", "resolution": [100, 100, 100],
                                                      "orientation": "asr", "symmetric": False,
                                                      "shape": list(annotation.shape), "version": "1.2"}))  # fmt: skip
    configure(tmp_path / "config", root)
    old = read_atlas(AtlasSpec(url="", name=NAME, orientation="psl"))
    configure(tmp_path / "config", configured)
    new = read_atlas(AtlasSpec(url="", name=NAME, orientation="psl"))
    assert old.geometry == new.geometry
    np.testing.assert_array_equal(old.annotation.data.compute(), new.annotation.data.compute())
    assert old.hemispheres is not None and new.hemispheres is not None
    np.testing.assert_array_equal(old.hemispheres.data.compute(), new.hemispheres.data.compute())
    pd.testing.assert_frame_equal(old.structures.sort_values("id").reset_index(drop=True),
                                  new.structures.sort_values("id").reset_index(drop=True))  # fmt: skip


def test_allens_full_terminology_reads_here_though_brainglobe_atlasapi_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why a named atlas's manifest and terminology are read by cvplgraph: with Allen's whole tree (parents
    such as VISrll, 480149202, above 65535) brainglobe-atlasapi 3.0.2's constructor fails; cvplgraph reads
    every region, and the annotation's ids are all in its table."""
    annotation = asr(tifffile.imread(CCF / "annotation_100um.tif").astype(np.uint32))
    package(tmp_path, NAME, "1.0", annotation, None, narrowed=False)
    configure(tmp_path / "config", tmp_path)
    monkeypatch.setenv("BRAINGLOBE_CONFIG_DIR", str(tmp_path / "config"))
    with pytest.raises(TypeError, match="uint16"):
        BrainGlobeAtlas(NAME, brainglobe_dir=tmp_path, check_latest=False)
    atlas = read_atlas(AtlasSpec(url="", name=NAME))
    assert len(atlas.structures) == len(pd.read_csv(CCF / "structures.csv"))
    assert set(np.unique(annotation)) - {0} <= set(atlas.structures["id"])
