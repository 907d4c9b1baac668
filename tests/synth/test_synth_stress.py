"""The generator's stress options: touching pairs, dim cells, photon noise, gain/offset, uint16.

Every expectation comes from the parameters (synthetic truth) or from an independent
computation (brute-force blobs, a volume rendered without the option), never from the
implementation under test.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.spatial import cKDTree

from cvplgraph.io.stores import read_array, read_input
from cvplgraph.spec.model import InputSpec
from cvplgraph.synth.cells import make_cells
from cvplgraph.synth.params import ONE_PERCENT_SIGMAS
from cvplgraph.synth.volume import SynthParams, synth_volume, write_synthetic

pytestmark = pytest.mark.slow  # outside the core loop, like the other generator tests

OLD_COLUMNS = ["z", "y", "x", "z_um", "y_um", "x_um", "radius_um", "brightness"]


def compute(volume: xr.DataArray) -> np.ndarray:
    return np.asarray(volume.data.compute(scheduler="synchronous"))


def binomial_slack(n: int, p: float) -> float:
    """Four standard deviations of a Binomial(n, p) count: a correct generator falls outside
    with probability ≈ 6e-5, and every draw here is fixed by its seed anyway."""
    return 4.0 * math.sqrt(n * p * (1.0 - p)) + 1.0


# --------------------------------------------------------------------------- defaults unchanged


@pytest.mark.parametrize(
    ("params", "n_cells", "volume_sha", "cells_sha"),
    [
        (
            SynthParams(shape=(16, 64, 64), chunks=(8, 32, 32)),
            34,
            "5d5a5e7ee53e509112ee962f81a1c94da8f0ecd5409fdf866ed8f040918ee8a5",
            "003364558a452ecf822eb32d6bfe42c031b5ff16593acb23787b04a80d052aae",
        ),
        (
            SynthParams(
                shape=(20, 70, 50),
                chunks=(7, 33, 20),
                voxel_size=(2.5, 0.7, 1.1),
                spacing_um=24.0,
                seed=5,
                noise=0.05,
            ),
            12,
            "6004d8eb77c48a2cb6b1143c0e5893c1f98481f23a6f2116c580c059965ba36b",
            "59f7ce12450132a40c9e7e974ff34322e7bacddd84eb0cce0e27e7ecc72f55d2",
        ),
    ],
)
def test_defaults_reproduce_the_generator_before_the_stress_options(
    params: SynthParams, n_cells: int, volume_sha: str, cells_sha: str
) -> None:
    """SHA-256 of the volume's float32 bytes and of the cell table's first eight columns, as the
    generator wrote them before pairs, dim cells, photons, gain, offset and dtype existed
    (commit 5b07cb9 of this repository)."""
    volume, cells = synth_volume(params)
    a = compute(volume)
    assert a.dtype == np.float32 and len(cells) == n_cells
    assert hashlib.sha256(a.tobytes()).hexdigest() == volume_sha
    old = np.ascontiguousarray(cells[OLD_COLUMNS].to_numpy())
    assert hashlib.sha256(old.tobytes()).hexdigest() == cells_sha
    assert (cells["partner"] == -1).all()


# --------------------------------------------------------------------------- touching pairs

PAIRS = SynthParams(shape=(40, 160, 160), chunks=(40, 160, 160), pairs=0.5, pair_distance=(0.7, 0.9), seed=11)


@pytest.fixture(scope="module")
def paired() -> pd.DataFrame:
    return make_cells(PAIRS)


def test_partners_are_extra_cells_and_the_grid_cells_stay(paired: pd.DataFrame) -> None:
    alone = make_cells(SynthParams(shape=PAIRS.shape, chunks=PAIRS.chunks, seed=PAIRS.seed))
    partner = paired["partner"].to_numpy()
    has = partner >= 0
    assert np.array_equal(partner[partner[has]], np.flatnonzero(has))  # pairs are mutual
    # a partner is the row right after its grid cell; dropping partners gives the table without pairs
    second = np.flatnonzero(has & (partner < np.arange(len(paired))))
    assert np.array_equal(partner[second], second - 1)
    grid = paired.drop(index=second).reset_index(drop=True)
    pd.testing.assert_frame_equal(grid[OLD_COLUMNS], alone[OLD_COLUMNS])
    # the requested fraction of grid cells has a partner (spacing leaves room for nearly all)
    n = len(alone)
    assert abs(second.size - PAIRS.pairs * n) <= binomial_slack(n, PAIRS.pairs)
    # partners are ordinary cells: inside the volume, radius and brightness in their ranges
    part = paired.iloc[second]
    vox = part[["z", "y", "x"]].to_numpy()
    assert np.all(vox >= 0) and np.all(vox <= np.array(PAIRS.shape) - 1)
    np.testing.assert_allclose(part[["z_um", "y_um", "x_um"]].to_numpy(), vox * np.array(PAIRS.voxel_size))
    assert part["radius_um"].between(*PAIRS.cell_radius_um).all()
    assert part["brightness"].between(*PAIRS.brightness).all()


def test_partners_touch_at_the_requested_distance_and_overlap_no_one_else(paired: pd.DataFrame) -> None:
    um = paired[["z_um", "y_um", "x_um"]].to_numpy()
    radius = paired["radius_um"].to_numpy()
    partner = paired["partner"].to_numpy()
    a = np.flatnonzero(partner > np.arange(len(paired)))
    b = partner[a]
    units = np.linalg.norm(um[a] - um[b], axis=1) / (radius[a] + radius[b])
    low, high = PAIRS.pair_distance
    assert np.all((units >= low - 1e-9) & (units <= high + 1e-9))
    assert units.max() - units.min() > 0.5 * (high - low)  # drawn across the range
    # directions are 3-D: the pairs' axes have sizeable components along z, y and x
    axis = np.abs(um[b] - um[a]) / np.linalg.norm(um[b] - um[a], axis=1, keepdims=True)
    assert np.all(axis.max(axis=0) > 0.8)
    # every other two cells keep the 1 % rule
    sigma = radius / 2
    for i, j in cKDTree(um).query_pairs(2 * ONE_PERCENT_SIGMAS * PAIRS.cell_radius_um[1] / 2):
        if partner[i] != j:
            assert np.linalg.norm(um[i] - um[j]) >= ONE_PERCENT_SIGMAS * (sigma[i] + sigma[j]) - 1e-9


def brute_force(params: SynthParams, cells: pd.DataFrame) -> np.ndarray:
    """Every cell's gaussian on the whole grid, summed in float64 (no boxes, no blocks)."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in params.shape), indexing="ij")
    vs = np.array(params.voxel_size)
    expected = np.zeros(params.shape)
    for row in cells.itertuples():
        sigma = row.radius_um / 2 / vs
        r2 = ((z - row.z) / sigma[0]) ** 2 + ((y - row.y) / sigma[1]) ** 2 + ((x - row.x) / sigma[2]) ** 2
        expected += row.brightness * np.exp(-0.5 * r2)
    return expected


def test_partners_are_rendered_whatever_the_chunks() -> None:
    base = {"shape": (14, 60, 52), "voxel_size": (2.5, 0.9, 1.1), "spacing_um": 24.0, "pairs": 1.0,
            "noise": 0.0, "background": 0.0, "background_amplitude": 0.0, "seed": 2}  # fmt: skip
    whole_params = SynthParams(chunks=(14, 60, 52), **base)
    whole, cells = synth_volume(whole_params)
    assert (cells["partner"] >= 0).sum() >= 6  # pairs are there, some cut by the chunk faces below
    expected = np.clip(brute_force(whole_params, cells), 0, 1)
    a = compute(whole)
    np.testing.assert_allclose(a, expected, rtol=0, atol=1e-3)  # boxes cut at ±4 sigma: ≤ 3e-4 per blob
    for chunks in ((5, 20, 16), (3, 7, 50), (14, 13, 9)):
        volume, again = synth_volume(SynthParams(chunks=chunks, **base))
        pd.testing.assert_frame_equal(again, cells)
        np.testing.assert_array_equal(compute(volume), a)


# --------------------------------------------------------------------------- dim cells


def test_dim_fraction_is_honoured() -> None:
    params = SynthParams(shape=(48, 256, 256), brightness=(0.5, 0.9), dim_fraction=0.3, dim_brightness=(0.1, 0.2),
                         pairs=0.3, seed=6)  # fmt: skip
    cells = make_cells(params)
    bright = cells["brightness"]
    dim = bright.between(*params.dim_brightness)
    assert (dim | bright.between(*params.brightness)).all()
    assert abs(dim.sum() - params.dim_fraction * len(cells)) <= binomial_slack(len(cells), params.dim_fraction)
    # partners are dimmed too, so dim cells sit beside bright ones
    partner = cells["partner"].to_numpy()
    mixed = [(dim[i] != dim[j]) for i, j in enumerate(partner) if j > i]
    assert sum(mixed) > 0
    # positions and radii are those of the volume without dim cells
    plain = make_cells(SynthParams(shape=params.shape, brightness=params.brightness, pairs=0.3, seed=6))
    pd.testing.assert_frame_equal(cells.drop(columns="brightness"), plain.drop(columns="brightness"))
    assert (cells["brightness"][~dim] == plain["brightness"][~dim]).all()


# --------------------------------------------------------------------------- photon noise


FLAT = {"shape": (32, 128, 128), "chunks": (16, 64, 64), "occupancy": 0.0, "background": 0.2,
        "background_amplitude": 0.0}  # fmt: skip


@pytest.mark.parametrize(("photons", "read_noise"), [(50.0, 0.0), (200.0, 0.01)])
def test_poisson_noise_has_variance_mean_over_photons(photons: float, read_noise: float) -> None:
    """A flat background of 0.2 (no cells): mean 0.2, variance 0.2 / photons (+ read noise²).

    Tolerances, for N = 524 288 voxels and λ = photons × 0.2 ≥ 10 counts: the mean's standard
    error is below 0.05 % of it and the variance's below 0.3 % ((μ4 − σ⁴) / N for a Poisson);
    1 % and 3 % are ≥ 10 standard errors, yet a variance from the wrong model (mean itself, or
    mean / photons²) is off by a factor ≥ 50.
    """
    params = SynthParams(**FLAT, photons=photons, noise=read_noise, seed=7)  # type: ignore[arg-type]
    a = compute(synth_volume(params)[0]).astype(np.float64)
    assert a.dtype == np.float64 and a.min() >= 0.0
    assert abs(a.mean() - 0.2) <= 0.01 * 0.2
    expected = 0.2 / photons + read_noise**2
    assert abs(a.var() - expected) <= 0.03 * expected
    if read_noise == 0:  # photon counts: every value is a whole number of photons
        counts = a * photons
        assert np.abs(counts - np.round(counts)).max() < 1e-3
    # blocks draw their own noise, and the same seed draws it again
    assert not np.array_equal(a[:16, :64, :64], a[:16, :64, 64:])
    np.testing.assert_array_equal(compute(synth_volume(params)[0]), a.astype(np.float32))


def test_photon_noise_follows_the_cells() -> None:
    """Poisson noise is larger where the signal is: bright voxels vary more than background ones."""
    base: dict[str, Any] = {"shape": (24, 96, 96), "chunks": (12, 48, 48), "noise": 0.0, "background": 0.05,
                            "background_amplitude": 0.0, "seed": 8}  # fmt: skip
    clean = compute(synth_volume(SynthParams(**base))[0])
    noisy = compute(synth_volume(SynthParams(**base, photons=100.0))[0])
    residual = (noisy - clean).astype(np.float64)
    background, bright = clean < 0.06, clean > 0.5
    assert background.sum() > 1000 and bright.sum() > 100
    np.testing.assert_allclose(residual[background].var(), 0.05 / 100, rtol=0.1)
    assert residual[bright].var() > 5 * residual[background].var()


# --------------------------------------------------------------------------- gain, offset, dtype


def test_gain_and_offset_map_the_clipped_image_exactly() -> None:
    base: dict[str, Any] = {"shape": (16, 64, 64), "chunks": (8, 32, 32), "photons": 30.0, "brightness": (0.8, 1.0),
                            "seed": 9}  # fmt: skip
    plain, cells = synth_volume(SynthParams(**base))
    a = compute(plain)
    assert a.min() == 0.0 and a.max() == 1.0  # the clip is reached on both sides
    for gain, offset in ((0.1, 0.0), (10.0, 0.0), (1.0, 0.5), (3.0, -0.25)):
        volume, again = synth_volume(SynthParams(**base, gain=gain, offset=offset))
        pd.testing.assert_frame_equal(again, cells)
        expected = a * np.float32(gain) + np.float32(offset)
        np.testing.assert_array_equal(compute(volume), expected)


def test_uint16_is_the_rounded_clipped_float() -> None:
    base: dict[str, Any] = {"shape": (16, 64, 64), "chunks": (8, 32, 32), "photons": 80.0, "seed": 10}
    for gain, offset in ((1000.0, 100.0), (1e5, 0.0), (1000.0, -50.0)):
        floats = compute(synth_volume(SynthParams(**base, gain=gain, offset=offset))[0])
        volume, _ = synth_volume(SynthParams(**base, gain=gain, offset=offset, dtype="uint16"))
        assert volume.dtype == np.uint16
        got = compute(volume)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, np.rint(np.clip(floats.astype(np.float64), 0, 65535)).astype(np.uint16))
    assert got.min() == 0  # the negative offset is clipped to 0 …
    big = compute(synth_volume(SynthParams(**base, gain=1e5, dtype="uint16"))[0])
    assert big.max() == 65535  # … and a gain beyond the range to 65535


def test_written_stores_keep_values_and_dtype(tmp_path: Path) -> None:
    """Float values beyond [0, 1] are stored and read back as they are; uint16 is stored as
    uint16, and the input reader maps it to [0, 1] by the dtype's range (divides by 65535)."""
    base: dict[str, Any] = {"shape": (8, 48, 48), "chunks": (8, 24, 24), "seed": 12}
    scaled = SynthParams(**base, gain=10.0, offset=0.5)
    cells = write_synthetic(str(tmp_path / "f.ome.zarr"), scaled, str(tmp_path / "f.csv"))
    expected = compute(synth_volume(scaled)[0])
    assert expected.max() > 1.0
    np.testing.assert_array_equal(compute(read_array(str(tmp_path / "f.ome.zarr"))), expected)
    np.testing.assert_array_equal(compute(read_input(InputSpec(url=str(tmp_path / "f.ome.zarr")))), expected)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "f.csv"), cells, check_exact=False, rtol=1e-12)

    counts = SynthParams(**base, gain=1000.0, offset=100.0, dtype="uint16")
    write_synthetic(str(tmp_path / "u.ome.zarr"), counts)
    stored = compute(read_array(str(tmp_path / "u.ome.zarr")))
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, compute(synth_volume(counts)[0]))
    read = compute(read_input(InputSpec(url=str(tmp_path / "u.ome.zarr"))))
    np.testing.assert_allclose(read, stored / 65535.0, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pairs": 1.5}, "pairs must be in"),
        ({"pairs": -0.1}, "pairs must be in"),
        ({"pairs": True}, "pairs must be in"),
        ({"pair_distance": (1.0, 0.8)}, "pair_distance must be a range"),
        ({"pair_distance": (0.0, 0.8)}, "pair_distance must be a range"),
        ({"pair_distance": (0.8, 2.5)}, "pair_distance must be a range"),
        ({"pair_distance": 0.9}, "pair_distance must be a range"),
        ({"dim_fraction": 2}, "dim_fraction must be in"),
        ({"dim_brightness": (0.2, 1.2)}, "dim_brightness must be a range"),
        ({"dim_brightness": (0.2, math.nan)}, "dim_brightness must be a range"),
        ({"photons": -1.0}, "photons must be a finite number >= 0"),
        ({"photons": math.inf}, "photons must be a finite number >= 0"),
        ({"gain": 0.0}, "gain must be a finite number > 0"),
        ({"gain": "2"}, "gain must be a finite number > 0"),
        ({"offset": math.nan}, "offset must be a finite number"),
        ({"dtype": "uint8"}, "dtype must be one of float32, uint16, got 'uint8'"),
    ],
)
def test_invalid_stress_params_raise(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthParams(**changes)


def test_stress_params_are_normalised() -> None:
    params = SynthParams(pairs=1, pair_distance=[1, 1], dim_brightness=[0.1, 0.3], photons=np.int64(20),  # type: ignore[arg-type]
                         gain=2, offset=-1, dtype=np.dtype("uint16"))  # type: ignore[arg-type]  # fmt: skip
    assert params.pairs == 1.0 and type(params.pairs) is float
    assert params.pair_distance == (1.0, 1.0) and params.dim_brightness == (0.1, 0.3)
    assert params.photons == 20.0 and type(params.photons) is float
    assert (params.gain, params.offset, params.dtype) == (2.0, -1.0, "uint16")
    assert hash(params) == hash(SynthParams(pairs=1.0, pair_distance=(1.0, 1.0), dim_brightness=(0.1, 0.3),
                                            photons=20.0, gain=2.0, offset=-1.0, dtype="uint16"))  # fmt: skip
