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

from brainglobe_atlasapi import BrainGlobeAtlas  # noqa: E402
from brainglobe_atlasapi.atlas_generation import stacks  # noqa: E402
from brainglobe_atlasapi.atlas_generation.atlas_packaging_data import (  # noqa: E402
    AnnotationInfo,
    CoordinateSpaceInfo,
    TemplateInfo,
    TerminologyInfo,
)
from brainglobe_atlasapi.atlas_generation.metadata_utils import generate_metadata_dict  # noqa: E402

CCF = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "atlas_ccf2017"
NAME = "allen_mouse_100um"


def _asr(volume: np.ndarray) -> np.ndarray:
    """The shared files' axes (left→right, anterior→posterior, dorsal→ventral) → BrainGlobe's "asr"
    (anterior→posterior, superior→inferior, right→left)."""
    return np.ascontiguousarray(volume.transpose(1, 2, 0)[:, :, ::-1])


def _structures(narrow: bool = True) -> list[dict[str, Any]]:
    """The CCF structures; ``narrow``: without the 62 regions whose parent id exceeds 65535 (brainglobe-atlasapi
    3.0.2 reads parent ids as 16-bit integers and cannot open them; their voxels go to the parent, see
    :func:`_narrow`)."""
    table = pd.read_csv(CCF / "structures.csv")
    if narrow:
        table = table[~(table["parent_structure_id"] > 65535)]
    return [
        {"id": int(r.id), "acronym": str(r.acronym), "name": str(r.name),
         "structure_id_path": [int(i) for i in str(r.structure_id_path).strip("/").split("/")],
         "rgb_triplet": [int(str(r.color_hex_triplet)[i : i + 2], 16) for i in (0, 2, 4)]}
        for r in table.itertuples()
    ]  # fmt: skip


def package(
    root: Path, name: str, version: str, annotation: np.ndarray, hemispheres: np.ndarray | None, narrow: bool = True
) -> Path:
    """An atlas in brainglobe-atlasapi's layout under ``root`` (the BrainGlobe folder); its manifest."""
    work = root / "brainglobe-atlasapi"
    prefix = name.rsplit("_", 1)[0].replace("_", "-")
    template = TemplateInfo(name=f"{prefix}-template", version=version)
    terminology = TerminologyInfo(name=f"{prefix}-terminology", version=version)
    annotation_info = AnnotationInfo(name=f"{prefix}-annotation", version=version, template=template,
                                     terminology=terminology)  # fmt: skip
    space = CoordinateSpaceInfo(name=f"{prefix}-space", version=version, template=template)
    scale = [[{"type": "scale", "scale": [0.1, 0.1, 0.1]}]]  # BrainGlobe stores millimetres
    stacks.save_template([(annotation > 0).astype(np.uint16) * 300], work / Path(template.stub).parent, scale)
    annotation_dir = work / Path(annotation_info.stub).parent
    stacks.save_annotation([annotation], annotation_dir, scale)
    if hemispheres is not None:
        stacks.save_hemispheres([hemispheres], annotation_dir, scale)
    structures = _structures(narrow)
    terms = pd.DataFrame(
        {
            "identifier": [s["id"] for s in structures],
            "parent_identifier": pd.array(
                [s["structure_id_path"][-2] if len(s["structure_id_path"]) > 1 else None for s in structures],
                dtype="UInt32",
            ),  # fmt: skip
            "annotation_value": [s["id"] for s in structures],
            "name": [s["name"] for s in structures],
            "abbreviation": [s["acronym"] for s in structures],
            "color_hex_triplet": ["#" + "".join(f"{c:02X}" for c in s["rgb_triplet"]) for s in structures],
            "root_identifier_path": [s["structure_id_path"] for s in structures],
        }
    )
    (work / terminology.stub).parent.mkdir(parents=True, exist_ok=True)
    terms.to_csv(work / terminology.stub, index=False)
    location = f"/atlases/{name}/{version.replace('.', '_')}"
    meta = generate_metadata_dict(
        name=name.rsplit("_", 1)[0], location=location, citation="unpublished", atlas_link="http://localhost",
        species="Mus musculus", symmetric=hemispheres is None, resolution=(100, 100, 100), orientation="asr",
        version=version, shape=annotation.shape, additional_references=[], atlas_packager="cvplgraph tests",
        coordinate_space=space, terminology=terminology, annotation_set=annotation_info, template=template,
    )  # fmt: skip
    manifest = work / location.lstrip("/") / "manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(meta, indent=1))
    return manifest


def _narrow(annotation: np.ndarray) -> np.ndarray:
    """Voxels of the regions :func:`_structures` leaves out, given to their parents."""
    table = pd.read_csv(CCF / "structures.csv")
    moved = table[table["parent_structure_id"] > 65535]
    out = annotation.copy()
    for child, parent in zip(moved["id"], moved["parent_structure_id"].astype(np.int64)):
        out[annotation == child] = parent
    return out


@pytest.fixture(scope="module")
def ccf_asr() -> tuple[np.ndarray, np.ndarray]:
    annotation = _narrow(tifffile.imread(CCF / "annotation_100um.tif").astype(np.uint32))
    hemispheres = tifffile.imread(CCF / "hemispheres_100um.tif").astype(np.uint8)
    return _asr(annotation), _asr(hemispheres)


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
    config.mkdir()
    (config / "bg_config.conf").write_text(f"[default_dirs]\nbrainglobe_dir = {home}\ninterm_download_dir = {home}\n")
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
    (tmp_path / "config" / "bg_config.conf").write_text(f"[default_dirs]\nbrainglobe_dir = {root}\n")
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
    (folder / "structures.json").write_text(json.dumps(_structures()))
    (folder / "metadata.json").write_text(json.dumps({"name": "allen_mouse", "resolution": [100, 100, 100],
                                                      "orientation": "asr", "symmetric": False,
                                                      "shape": list(annotation.shape), "version": "1.2"}))  # fmt: skip
    (tmp_path / "config" / "bg_config.conf").write_text(f"[default_dirs]\nbrainglobe_dir = {root}\n")
    old = read_atlas(AtlasSpec(url="", name=NAME, orientation="psl"))
    (tmp_path / "config" / "bg_config.conf").write_text(f"[default_dirs]\nbrainglobe_dir = {configured}\n")
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
    annotation = _asr(tifffile.imread(CCF / "annotation_100um.tif").astype(np.uint32))
    package(tmp_path, NAME, "1.0", annotation, None, narrow=False)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bg_config.conf").write_text(f"[default_dirs]\nbrainglobe_dir = {tmp_path}\n")
    monkeypatch.setenv("BRAINGLOBE_CONFIG_DIR", str(tmp_path / "config"))
    with pytest.raises(TypeError, match="uint16"):
        BrainGlobeAtlas(NAME, brainglobe_dir=tmp_path, check_latest=False)
    atlas = read_atlas(AtlasSpec(url="", name=NAME))
    assert len(atlas.structures) == len(pd.read_csv(CCF / "structures.csv"))
    assert set(np.unique(annotation)) - {0} <= set(atlas.structures["id"])
