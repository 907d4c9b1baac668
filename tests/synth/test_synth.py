"""Tests of the synthetic volume generator :mod:`cvplgraph.synth.volume`."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import xarray as xr
from dask.callbacks import Callback
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from cvplgraph.synth.cells import make_cells
from cvplgraph.synth.params import ONE_PERCENT_SIGMAS
from cvplgraph.synth.volume import SynthParams, synth_volume

pytestmark = pytest.mark.slow  # outside the core loop (keys, spec, components, filters, counts)

SMALL = SynthParams(shape=(16, 64, 64), chunks=(8, 32, 32))
TRUTH = SynthParams(shape=(48, 192, 192), chunks=(24, 96, 96))


def compute(volume: xr.DataArray) -> np.ndarray:
    """The volume as a numpy array (Z, Y, X), computed without threads."""
    return np.asarray(volume.data.compute(scheduler="synchronous"))


def centres(cells: pd.DataFrame) -> np.ndarray:
    """(n_cells, 3) voxel coordinates (z, y, x) of the true centres."""
    return cells[["z", "y", "x"]].to_numpy()


class CountTasks(Callback):
    """Counts every dask task executed while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _pretask(self, key: Any, dask: Any, state: Any) -> None:
        self.count += 1


# --------------------------------------------------------------------------- determinism


def test_same_params_give_identical_volume_and_cells() -> None:
    v1, c1 = synth_volume(SMALL)
    v2, c2 = synth_volume(SynthParams(shape=(16, 64, 64), chunks=(8, 32, 32)))
    pd.testing.assert_frame_equal(c1, c2)
    np.testing.assert_array_equal(compute(v1), compute(v2))
    pd.testing.assert_frame_equal(make_cells(SMALL), c1)


def test_different_seed_gives_different_cells_and_volume() -> None:
    v1, c1 = synth_volume(SMALL)
    v2, c2 = synth_volume(SynthParams(shape=(16, 64, 64), chunks=(8, 32, 32), seed=1))
    assert len(c1) > 0 and len(c2) > 0
    assert len(c1) != len(c2) or not np.allclose(centres(c1), centres(c2))
    assert not np.array_equal(compute(v1), compute(v2))


def test_noise_differs_between_blocks() -> None:
    params = SynthParams(shape=(8, 64, 64), chunks=(8, 32, 32), occupancy=0.0, background_amplitude=0.0)
    a = compute(synth_volume(params)[0])
    blocks = [a[:, :32, :32], a[:, :32, 32:], a[:, 32:, :32], a[:, 32:, 32:]]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(blocks[i], blocks[j])


# --------------------------------------------------------------------------- chunking


def test_cell_table_does_not_depend_on_chunks() -> None:
    a = make_cells(SynthParams(shape=(40, 150, 130), chunks=(8, 32, 32)))
    b = make_cells(SynthParams(shape=(40, 150, 130), chunks=(40, 150, 130)))
    pd.testing.assert_frame_equal(a, b)


def test_noise_free_signal_does_not_depend_on_chunks() -> None:
    shape = (40, 150, 130)
    a = compute(synth_volume(SynthParams(shape=shape, chunks=(40, 150, 130), noise=0.0))[0])
    b = compute(synth_volume(SynthParams(shape=shape, chunks=(7, 33, 50), noise=0.0))[0])
    c = compute(synth_volume(SynthParams(shape=shape, chunks=(13, 16, 129), noise=0.0))[0])
    assert a.max() > 0.4  # there are cells in there
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 24), st.integers(1, 70), st.integers(1, 70)),
    chunks=st.tuples(st.integers(1, 24), st.integers(1, 70), st.integers(1, 70)),
    seed=st.integers(0, 2**32),
)
def test_property_chunking_and_centres(shape: tuple[int, int, int], chunks: tuple[int, int, int], seed: int) -> None:
    params = SynthParams(shape=shape, chunks=chunks, noise=0.0, seed=seed)
    volume, cells = synth_volume(params)
    whole = compute(synth_volume(SynthParams(shape=shape, chunks=shape, noise=0.0, seed=seed))[0])
    got = compute(volume)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6)
    c = centres(cells)
    assert np.all(c >= 0) and np.all(c <= np.array(shape) - 1)


# --------------------------------------------------------------------------- laziness


def test_huge_volume_is_lazy() -> None:
    # 4096³ float32 is 256 GiB. The cell table is eager (one row per cell), so the
    # spacing is widened to keep it small; the volume itself must cost nothing.
    params = SynthParams(shape=(4096, 4096, 4096), spacing_um=200.0)
    counter = CountTasks()
    tracemalloc.start()
    try:
        with counter:
            volume, cells = synth_volume(params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counter.count == 0
    assert peak < 64 * 2**20
    assert isinstance(volume, xr.DataArray)
    assert isinstance(volume.data, da.Array)
    assert volume.shape == (4096, 4096, 4096)
    assert volume.dtype == np.float32
    assert volume.data.chunksize == params.chunks
    assert volume.data.numblocks == (128, 32, 32)
    assert len(cells) > 10_000
    # One block can be computed on its own, from global information only.
    block = volume.data.blocks[64, 17, 3].compute(scheduler="synchronous")
    assert block.shape == params.chunks and block.dtype == np.float32
    assert 0.0 <= block.min() and block.max() <= 1.0


# --------------------------------------------------------------------------- truth


@pytest.fixture(scope="module")
def truth() -> tuple[np.ndarray, pd.DataFrame]:
    volume, cells = synth_volume(TRUTH)
    return compute(volume), cells


def test_centres_inside_volume(truth: tuple[np.ndarray, pd.DataFrame]) -> None:
    _, cells = truth
    c = centres(cells)
    assert len(c) > 300
    assert np.all(c >= 0)
    assert np.all(c <= np.array(TRUTH.shape) - 1)
    np.testing.assert_allclose(cells[["z_um", "y_um", "x_um"]].to_numpy(), c * np.array(TRUTH.voxel_size))
    assert cells["radius_um"].between(*TRUTH.cell_radius_um).all()
    assert cells["brightness"].between(*TRUTH.brightness).all()


def test_cells_far_enough_apart_not_to_overlap(truth: tuple[np.ndarray, pd.DataFrame]) -> None:
    _, cells = truth
    um = cells[["z_um", "y_um", "x_um"]].to_numpy()
    distance, _ = cKDTree(um).query(um, k=2)
    sigma_max = TRUTH.cell_radius_um[1] / 2
    # Each blob is below 1 % of its peak at half the distance to its nearest neighbour.
    assert distance[:, 1].min() >= 2 * ONE_PERCENT_SIGMAS * sigma_max
    assert distance[:, 1].min() >= TRUTH.spacing_um - 2 * TRUTH.max_jitter_um - 1e-9


def test_threshold_and_label_count_cells(truth: tuple[np.ndarray, pd.DataFrame]) -> None:
    volume, cells = truth
    _, n = ndi.label(volume > 0.3)
    assert abs(n - len(cells)) <= 0.02 * len(cells)


def test_components_sit_on_true_centres(truth: tuple[np.ndarray, pd.DataFrame]) -> None:
    volume, cells = truth
    labels, n = ndi.label(volume > 0.3)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    com = np.array(ndi.center_of_mass(volume, labels, np.arange(1, n + 1)))
    c = centres(cells)
    vs = np.array(TRUTH.voxel_size)
    _, nearest = cKDTree(c * vs).query(com * vs)
    reach = 4 * (cells["radius_um"].to_numpy()[:, None] / 2) / vs
    interior = np.all((c - reach >= 0) & (c + reach <= np.array(TRUTH.shape) - 1), axis=1)
    assert interior.sum() > 50
    # Single voxels are noise fragments at a blob's edge; there must be very few.
    real = sizes > 1
    assert (~real).sum() <= 0.01 * len(cells)
    # Every real component next to an interior cell is within one voxel of its centre ...
    judged = real & interior[nearest]
    error = np.linalg.norm(com[judged] - c[nearest[judged]], axis=1)
    assert error.max() <= 1.0
    # ... and every interior cell has exactly one such component.
    hits = np.bincount(nearest[real], minlength=len(c))
    assert np.all(hits[interior] == 1)


@pytest.mark.parametrize(
    ("shape", "voxel_size", "spacing_um"),
    [
        ((12, 48, 40), (4.0, 1.5, 1.5), 30.0),
        ((30, 30, 30), (1.0, 1.0, 1.0), 25.0),
        ((14, 50, 36), (2.5, 0.7, 1.1), 24.0),
    ],
)
def test_blobs_match_the_cell_table(
    shape: tuple[int, int, int], voxel_size: tuple[float, float, float], spacing_um: float
) -> None:
    params = SynthParams(
        shape=shape,
        chunks=(5, 20, 16),
        voxel_size=voxel_size,
        spacing_um=spacing_um,
        noise=0.0,
        background=0.0,
        background_amplitude=0.0,
        seed=3,
    )
    volume, cells = synth_volume(params)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in params.shape), indexing="ij")
    vs = np.array(params.voxel_size)
    expected = np.zeros(params.shape)
    for row in cells.itertuples():
        sigma = row.radius_um / 2 / vs
        r2 = ((z - row.z) / sigma[0]) ** 2 + ((y - row.y) / sigma[1]) ** 2 + ((x - row.x) / sigma[2]) ** 2
        expected += row.brightness * np.exp(-0.5 * r2)
    assert len(cells) >= 3
    # Blobs are cut at ±4 sigma per axis: exp(-8) ≈ 3e-4 of the peak at most.
    np.testing.assert_allclose(compute(volume), np.clip(expected, 0, 1), rtol=0, atol=1e-3)


def test_editing_returned_cells_does_not_change_the_volume() -> None:
    volume, cells = synth_volume(SMALL)
    before = compute(volume)
    cells["z"] += 3.0
    cells["brightness"] = 0.0
    np.testing.assert_array_equal(compute(volume), before)
    pd.testing.assert_frame_equal(synth_volume(SMALL)[1], make_cells(SMALL))


def test_background_and_noise_levels() -> None:
    params = SynthParams(shape=(32, 128, 128), occupancy=0.0, background_amplitude=0.0, noise=0.02)
    volume, cells = synth_volume(params)
    a = compute(volume)
    assert len(cells) == 0
    assert abs(a.mean() - 0.08) < 1e-3
    assert abs(a.std() - 0.02) < 1e-3
    smooth = compute(synth_volume(SynthParams(shape=(32, 128, 128), occupancy=0.0, noise=0.0))[0])
    assert smooth.min() >= 0.08 - 0.04 - 1e-6 and smooth.max() <= 0.08 + 0.04 + 1e-6
    assert smooth.max() - smooth.min() > 0.01  # it does vary, slowly
    assert np.abs(np.diff(smooth, axis=2)).max() < 0.01


# --------------------------------------------------------------------------- metadata


def test_values_dtype_dims_coords_attrs(truth: tuple[np.ndarray, pd.DataFrame]) -> None:
    volume, _ = truth
    assert volume.dtype == np.float32
    assert volume.min() >= 0.0 and volume.max() <= 1.0
    lazy, _ = synth_volume(TRUTH)
    assert lazy.dims == ("z", "y", "x")
    assert lazy.dtype == np.float32
    assert lazy.data.chunksize == TRUTH.chunks
    for dim, n, size in zip(("z", "y", "x"), TRUTH.shape, TRUTH.voxel_size, strict=True):
        np.testing.assert_allclose(lazy.coords[dim].to_numpy(), np.arange(n) * size)
    assert lazy.attrs == {"scale": [4.0, 1.5, 1.5], "translation": [0.0, 0.0, 0.0], "units": "micrometer"}
    columns = ["z", "y", "x", "z_um", "y_um", "x_um", "radius_um", "brightness", "partner"]
    assert list(make_cells(TRUTH).columns) == columns


def test_clipped_to_unit_range() -> None:
    params = SynthParams(shape=(16, 64, 64), brightness=(1.0, 1.0), background=0.5, background_amplitude=0.5, noise=0.3)
    a = compute(synth_volume(params)[0])
    assert a.dtype == np.float32
    assert a.min() == 0.0 and a.max() == 1.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shape": (0, 10, 10)}, "shape must be three positive integers, got"),
        ({"shape": (10, 10)}, "shape must be three positive integers, got"),
        ({"shape": (10.0, 10, 10)}, "shape must be three positive integers, got"),
        ({"shape": (True, 10, 10)}, "shape must be three positive integers, got"),
        ({"chunks": (4, -1, 4)}, "chunks must be three positive integers, got"),
        ({"voxel_size": (1.0, 0.0, 1.0)}, "voxel_size must be three positive finite numbers"),
        ({"voxel_size": (1.0, math.nan, 1.0)}, "voxel_size must be three positive finite numbers"),
        ({"cell_radius_um": (7.0, 4.0)}, "cell_radius_um must be a range"),
        ({"brightness": (0.5, 1.5)}, "brightness must be a range"),
        ({"spacing_um": 20.0}, "spacing_um must be greater than"),
        ({"occupancy": 1.5}, "occupancy must be in"),
        ({"background": -0.1}, "background must be in"),
        ({"background_amplitude": 0.1}, "background_amplitude must be"),
        ({"noise": -0.01}, "noise must be"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": 1.5}, "seed must be a non-negative integer"),
    ],
)
def test_invalid_params_raise(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthParams(**changes)


def test_params_are_normalised() -> None:
    params = SynthParams(shape=[np.int64(8), 16, 16], voxel_size=[2, 1, 1])  # type: ignore[arg-type]
    assert params.shape == (8, 16, 16) and type(params.shape[0]) is int
    assert params.voxel_size == (2.0, 1.0, 1.0)
    assert hash(params) == hash(SynthParams(shape=(8, 16, 16), voxel_size=(2.0, 1.0, 1.0)))
