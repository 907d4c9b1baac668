"""Virtual volumes: blocks rendered from the seed alone, the same at every read, equal to a stored copy,
with a truth that does not need the voxels."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import SPEC as CONFTEST_SPEC

from cvplgraph.io.virtual import VirtualVolume, block_truth, truth_count

SMALL = VirtualVolume(shape=(40, 150, 130), chunks=(16, 64, 48), seed=7)


def _whole(volume: VirtualVolume) -> np.ndarray:
    out = np.empty(volume.shape, dtype=volume.dtype)
    for block in volume.blocks():
        out[tuple(slice(a, b) for a, b in volume.block_location(block))] = volume.render(block)
    return out


def test_a_block_is_the_same_at_every_read_and_from_every_instance() -> None:
    block = (1, 2, 2)
    first = SMALL.render(block)
    again = VirtualVolume(**{**SMALL.__dict__}).render(block)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.uint16 and first.shape == (16, 22, 34)  # an edge block along y and x
    assert not np.array_equal(first, VirtualVolume(**{**SMALL.__dict__, "seed": 8}).render(block))


def test_blocks_equal_a_materialised_copy_read_back_with_zarr(tmp_path: Path) -> None:
    """Stored through dask into a real zarr array, then read back whole and chunk by chunk."""

    def lazy_block(block: tuple[int, int, int]) -> da.Array:
        shape = tuple(b - a for a, b in SMALL.block_location(block))
        return da.from_delayed(dask.delayed(SMALL.render)(block), shape=shape, dtype=SMALL.dtype)

    grid = [range(n) for n in SMALL.grid]
    blocks = [[[lazy_block((i, j, k)) for k in grid[2]] for j in grid[1]] for i in grid[0]]
    lazy = da.block(blocks)
    target = zarr.create_array(str(tmp_path / "copy.zarr"), shape=SMALL.shape, chunks=SMALL.chunks, dtype=SMALL.dtype)
    da.store(lazy, target, scheduler="threads")
    stored = zarr.open_array(str(tmp_path / "copy.zarr"), mode="r")
    np.testing.assert_array_equal(stored[:], _whole(SMALL))
    for block in SMALL.blocks():
        where = tuple(slice(a, b) for a, b in SMALL.block_location(block))
        np.testing.assert_array_equal(stored[where], SMALL.render(block))


def test_without_noise_the_voxels_do_not_depend_on_the_chunking() -> None:
    quiet = VirtualVolume(shape=(30, 100, 90), chunks=(30, 100, 90), noise=0.0, seed=3, dtype="float32")
    other = VirtualVolume(**{**quiet.__dict__, "chunks": (7, 33, 40)})
    np.testing.assert_allclose(_whole(other), _whole(quiet), atol=1e-6)


@pytest.mark.parametrize("chunks", [(16, 64, 48), (40, 150, 130), (9, 31, 77)])
def test_the_truth_is_every_cell_once_whatever_the_chunking(chunks: tuple[int, int, int]) -> None:
    volume = VirtualVolume(**{**SMALL.__dict__, "chunks": chunks})
    counts = block_truth(volume)
    assert counts.shape == volume.grid
    assert counts.sum() == truth_count(volume) == truth_count(SMALL) > 50
    cells = np.concatenate([volume.block_cells(b) for b in volume.blocks()])
    assert len(np.unique(cells[:, :3], axis=0)) == len(cells)  # no cell in two blocks
    voxel = np.floor(cells[:, :3] / np.asarray(volume.voxel_size) + 0.5)
    assert (voxel >= 0).all() and (voxel < np.asarray(volume.shape)).all()


def test_cells_are_where_the_image_is_bright_and_the_truth_counts_them() -> None:
    """An independent look at the voxels: scipy's labelling of the whole rendered volume finds one object
    per true cell, each holding its true centre's voxel."""
    volume = VirtualVolume(**{**SMALL.__dict__, "noise": 0.0})
    image = _whole(volume).astype(np.float32) / 4095
    labels, n = ndi.label(image > 0.3)
    cells = volume.cells_in(*volume.extent_um())
    centre = np.floor(cells[:, :3] / np.asarray(volume.voxel_size) + 0.5).astype(int)
    under = labels[tuple(centre.T)]
    assert (under > 0).all()
    # a cell cut by the volume's face may leave a fragment whose centre lies outside: only those are extra
    assert len(np.unique(under)) == len(cells) and n >= len(cells)


def test_a_whole_brain_sized_volume_answers_without_its_voxels() -> None:
    """2,000 × 8,000 × 11,000 voxels (≈ 350 GB as uint16): a block, its truth and a region's truth come
    from the seed alone."""
    brain = VirtualVolume(shape=(2000, 8000, 11000), chunks=(64, 256, 256), seed=1)
    assert brain.grid == (32, 32, 43)
    middle = (16, 16, 21)
    block = brain.render(middle)
    assert block.shape == (64, 256, 256) and block.max() > 1000
    truth = brain.block_cells(middle)
    extent = np.asarray(brain.chunks) * np.asarray(brain.voxel_size)
    expected = np.prod(extent) / brain.spacing_um**3 * brain.occupancy
    assert 0.8 * expected < len(truth) < 1.2 * expected


def test_zarr_reads_the_virtual_store_as_the_rendered_blocks() -> None:
    from cvplgraph.io.virtual import VirtualStore

    array = zarr.open_array(store=VirtualStore(SMALL), path="0", mode="r")
    assert (array.shape, array.chunks, array.dtype) == (SMALL.shape, SMALL.chunks, np.dtype(SMALL.dtype))
    np.testing.assert_array_equal(array[:], _whole(SMALL))
    np.testing.assert_array_equal(array[3:20, 70:90, 100:130], _whole(SMALL)[3:20, 70:90, 100:130])


#: The shared spec (threshold → components → centroids → count per 32 × 128 × 128 block) over a virtual input.
SPEC = CONFTEST_SPEC.format(url="virtual.ome.zarr", level=0.3).replace(
    'url = "virtual.ome.zarr"\n', 'url = "virtual.ome.zarr"\nintensity_range = [0, 4095]\n{chunks}\n'
)


def test_synth_virtual_writes_metadata_only_and_a_run_finds_exactly_the_truth(tmp_path: Path) -> None:
    """`cvplgraph synth --virtual`: a few KB on disk, a valid OME-Zarr image; `cvplgraph run` reads its chunks
    as rendered and counts every true cell, over two working chunkings, each in its block (up to the cells a
    voxel from a block's face)."""
    import json
    import subprocess
    import sys

    import pandas as pd
    from ome_zarr_models.v05 import Image

    import cvplgraph
    from cvplgraph.io.virtual import VirtualVolume, block_truth

    cli = [sys.executable, "-m", "cvplgraph.cli"]
    store = tmp_path / "virtual.ome.zarr"
    command = [*cli, "synth", "--virtual", str(store), "--shape", "96", "300", "260", "--chunks", "32", "128", "128"]
    made = subprocess.run([*command, "--seed", "4"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    files = [p for p in store.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"zarr.json"} and sum(p.stat().st_size for p in files) < 16_000
    Image.from_zarr(zarr.open_group(str(store), mode="r"))  # the metadata is a valid OME-Zarr 0.5 image
    params = json.loads((store / "zarr.json").read_text())["attributes"]["cvplgraph"]["virtual"]
    volume = VirtualVolume.from_dict(params)
    truth = block_truth(volume)
    for chunks in ("", "chunks = [40, 128, 100]"):
        folder = tmp_path / (chunks and "rechunked" or "plain")
        folder.mkdir()
        (folder / "virtual.ome.zarr").symlink_to(store)
        (folder / "spec.toml").write_text(SPEC.format(chunks=chunks))
        results = cvplgraph.run(cvplgraph.load_spec(folder / "spec.toml"), scheduler="threads")
        found = pd.read_csv(folder / "results" / "centroids.csv")
        assert len(found) == truth.sum() == truth_count(volume)
        # per block: a found centre may sit a voxel from the true one, so a cell within a voxel of a block's
        # face may be counted on either side; every other cell is counted in its own block
        counts = results["counts"].values
        assert counts.shape == truth.shape
        centre = volume.cells_in(*volume.extent_um())[:, :3] / np.asarray(volume.voxel_size)
        for block in volume.blocks():
            low = np.array([a for a, _ in volume.block_location(block)]) - 0.5
            high = np.array([b for _, b in volume.block_location(block)]) - 0.5
            surely = np.all((centre >= low + 1) & (centre < high - 1), axis=1).sum()
            maybe = np.all((centre >= low - 1) & (centre < high + 1), axis=1).sum()
            assert surely <= counts[block] <= maybe, (block, surely, counts[block], maybe)
        assert np.abs(counts - truth).sum() <= 0.01 * truth.sum()


def test_a_virtual_input_is_planned_without_absent_chunks_and_keyed_by_its_parameters(tmp_path: Path) -> None:
    from cvplgraph.cache.fingerprint import survey_input
    from cvplgraph.io.virtual import write_virtual
    from cvplgraph.spec.model import InputSpec

    keys = []
    for seed in (1, 1, 2):
        url = tmp_path / f"v{len(keys)}.ome.zarr"
        write_virtual(str(url), VirtualVolume(**{**SMALL.__dict__, "seed": seed}))
        survey = survey_input(InputSpec(url=str(url)))
        assert survey.absent == 0 and survey.total == np.prod(SMALL.grid)
        keys.append(survey.key)
    assert keys[0] == keys[1] != keys[2]


def test_metadata_that_is_not_the_volume_of_its_parameters_is_one_line(tmp_path: Path) -> None:
    import json

    from cvplgraph.errors import InputError
    from cvplgraph.io.stores import read_input
    from cvplgraph.io.virtual import write_virtual
    from cvplgraph.spec.model import InputSpec

    url = tmp_path / "v.ome.zarr"
    write_virtual(str(url), SMALL)
    group = json.loads((url / "zarr.json").read_text())
    group["attributes"]["cvplgraph"]["virtual"]["shape"] = [40, 150, 131]
    (url / "zarr.json").write_text(json.dumps(group))
    with pytest.raises(InputError, match=r"v.ome.zarr: the stored level 0 .* is not the virtual volume"):
        read_input(InputSpec(url=str(url)))
    group["attributes"]["cvplgraph"]["virtual"]["colour"] = "red"
    (url / "zarr.json").write_text(json.dumps(group))
    with pytest.raises(InputError, match="unknown parameter.s. colour"):
        read_input(InputSpec(url=str(url)))
