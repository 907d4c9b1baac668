"""detect_cells: the block kernel equals its definition on the whole array, chunk-exact, and holds on
synthetic truth whatever the brightness, offset or noise."""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

from cvplgraph import ops
from cvplgraph.bench.metrics import Matching, match
from cvplgraph.ops._tiles import MAD_TO_SD, NOISE_FLOOR, SUBSAMPLE_FROM
from cvplgraph.ops.cells import (
    DECIMATE_SIGMA,
    KAPPA,
    KERNEL_TRUNCATE,
    MAX_DECIMATION,
    SIGMA_PER_DIAMETER,
    SPLIT,
    SPLIT_THRESHOLD,
    SURROUND_TRUNCATE,
)
from cvplgraph.synth.volume import SynthParams, synth_volume
from cvplgraph.values import Geometry, wrap

pytestmark = pytest.mark.slow  # whole-volume references on several volumes; see pyproject.toml's markers

UM = ["z_um", "y_um", "x_um"]


def detect(image: np.ndarray, scale: tuple[float, ...], chunks: tuple[int, ...] | None = None, **params: float):
    geometry = Geometry(image.shape, tuple(map(float, scale)))  # type: ignore[arg-type]
    data = da.from_array(image, chunks=chunks or image.shape)
    return ops.detect_cells(wrap(data, geometry), **params).compute(scheduler="threads")


def footprint(semi: np.ndarray, half: np.ndarray) -> np.ndarray:
    """The ellipsoid of semi-axes ``semi`` (voxels) and the 26 neighbours, inside a box of half-size ``half``."""
    grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), axis=-1)
    return (((grid / semi) ** 2).sum(-1) <= 1 + 1e-9) | (np.abs(grid).max(-1) <= 1)


def decimated_gaussian(a: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The surround on every f-th voxel (f the largest of 1, 2, 4… up to MAX_DECIMATION leaving σ / f ≥
    DECIMATE_SIGMA), interpolated back with np.interp (which holds the end values beyond the samples)."""
    step = [max([f for f in (1, 2, 4, 8, 16) if f <= MAX_DECIMATION and s / f >= DECIMATE_SIGMA] or [1])
            for s in sigma]  # fmt: skip
    out = ndimage.gaussian_filter(a[tuple(slice(None, None, f) for f in step)], np.asarray(sigma) / step,
                                  mode="reflect", truncate=SURROUND_TRUNCATE)  # fmt: skip
    for axis, f in enumerate(step):
        if f > 1:
            n = a.shape[axis]
            out = np.apply_along_axis(lambda v, n=n, f=f: np.interp(np.arange(n), np.arange(0, n, f), v), axis, out)
    return out.astype(np.float32)


def tile_grids(response: np.ndarray, image: np.ndarray, tile: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """Median and noise of ``response`` per tile of the global grid, looping over tiles."""
    n_tiles = [-(-n // t) for n, t in zip(image.shape, tile)]
    median, noise = np.empty(n_tiles), np.empty(n_tiles)
    for index in np.ndindex(*n_tiles):
        box = tuple(slice(i * t, min((i + 1) * t, n)) for i, t, n in zip(index, tile, image.shape))
        step = tuple(slice(None, None, 1 + sum(b.stop - b.start >= w for w in SUBSAMPLE_FROM)) for b in box)
        r = response[box][step]
        median[index] = np.median(r)
        level = np.abs(image[box][step]).mean()
        noise[index] = max(MAD_TO_SD * np.median(np.abs(r - np.float32(median[index]))), NOISE_FLOOR * level)
    centres = [np.array([i * t + (min(t, n - i * t) - 1) / 2 for i in range(k)])
               for t, n, k in zip(tile, image.shape, n_tiles)]  # fmt: skip
    return centres, median, noise


def contrast_at(response: np.ndarray, grids: tuple, at: np.ndarray) -> np.ndarray:
    centres, median, noise = grids
    clamped = np.column_stack([np.clip(at[:, a], centres[a][0], centres[a][-1]) for a in range(3)])
    value = response[tuple(at.T)]
    return (value - RegularGridInterpolator(centres, median)(clamped)) / RegularGridInterpolator(centres, noise)(
        clamped
    )


def dense_definition(image: np.ndarray, scale: tuple[float, ...], diameter: float = 12.0, threshold: float = 6.0,
                     window: float = 3.0, separation: float = 0.5) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The method written on the whole array with scipy, loops over the tile grid and scipy's own
    interpolator: (n, 3) peak voxels and their cell-scale contrast."""
    s = np.asarray(scale, dtype=float)
    sigma = diameter * SIGMA_PER_DIAMETER / s
    image = image.astype(np.float32)
    small_centre = ndimage.gaussian_filter(image, SPLIT * sigma, mode="reflect", truncate=KERNEL_TRUNCATE)
    centre = ndimage.gaussian_filter(
        small_centre, sigma * math.sqrt(1 - SPLIT**2), mode="reflect", truncate=KERNEL_TRUNCATE
    )
    response = centre - decimated_gaussian(centre, sigma * math.sqrt(KAPPA**2 - 1))
    small = small_centre - centre
    tile = np.maximum(1, np.rint(window * diameter / s)).astype(int)
    grids, s_grids = tile_grids(response, image, tile), tile_grids(small, image, tile)
    semi = separation * diameter / s
    half = np.minimum(np.maximum(1, np.ceil(semi - 1e-9)), np.maximum(1, (tile - 1) // 6)).astype(int)
    s_half = np.minimum(np.maximum(1, np.ceil(SPLIT * semi - 1e-9)).astype(int), half)

    def maxima(r: np.ndarray, foot: np.ndarray, g: tuple, level: float) -> np.ndarray:
        at = np.argwhere((r == ndimage.maximum_filter(r, footprint=foot, mode="nearest")) & (r > 0))
        return at[contrast_at(r, g, at) >= level]

    main = maxima(response, footprint(semi, half), grids, threshold)
    split = maxima(small, footprint(SPLIT * semi, s_half), s_grids, SPLIT_THRESHOLD * threshold)
    split = split[contrast_at(response, grids, split) >= threshold]
    # a cell-scale maximum with two or more split maxima within the separation is a merged pair: its
    # split maxima are the cells; split maxima near any other cell-scale maximum are that cell again
    within = (((main[:, None, :] - split[None, :, :]) * s / (separation * diameter)) ** 2).sum(-1) <= 1 + 1e-9
    merged = within.sum(axis=1) >= 2
    kept = ~(within & ~merged[:, None]).any(axis=0)
    at = np.concatenate([main[~merged], split[kept]])
    return at, contrast_at(response, grids, at)


def noisy_volume(
    seed: int, shape: tuple[int, int, int] = (40, 150, 170), **kw: Any
) -> tuple[np.ndarray, SynthParams, pd.DataFrame]:
    params = SynthParams(shape=shape, chunks=shape, voxel_size=(4.0, 1.5, 1.5), seed=seed, **kw)
    image, cells = synth_volume(params)
    return np.asarray(image.data.compute()), params, cells


@pytest.mark.parametrize(("scale", "window", "seed"), [((4.0, 1.5, 1.5), 3.0, 1), ((2.0, 2.0, 2.0), 2.0, 2),
                                                       ((6.0, 1.0, 1.0), 4.0, 3)])  # fmt: skip
def test_block_kernel_equals_dense_definition(scale: tuple[float, ...], window: float, seed: int) -> None:
    """Touching pairs and dim cells in the volume, so the split scale and its rules are exercised."""
    image, _, _ = noisy_volume(seed, background_amplitude=0.06, noise=0.03, pairs=0.5, pair_distance=(0.75, 0.9),
                               dim_fraction=0.3)  # fmt: skip
    at, contrast = dense_definition(image, scale, window=window)
    found = detect(image, scale, chunks=(13, 64, 50), window=window)
    assert len(at) > 50 and len(found) == len(at)
    assert found["split"].sum() >= 3  # cells found at the split scale are part of the comparison
    voxels = found[["z", "y", "x"]].to_numpy()
    order = np.lexsort(at.T[::-1])
    # the op refines each peak by at most half a voxel per axis; pair them by position
    pairs = match(voxels, at[order].astype(float), 0.87)
    assert pairs.tp == len(at)
    np.testing.assert_allclose(found["contrast"].to_numpy()[pairs.pairs[:, 0]], contrast[order][pairs.pairs[:, 1]],
                               rtol=1e-5)  # fmt: skip  # np.interp works in float64, the op in float32


@pytest.mark.parametrize("chunks", [(20, 75, 85), (13, 64, 50), (10, 40, 45), (40, 9, 170)])
def test_chunked_equals_whole_array(chunks: tuple[int, int, int]) -> None:
    """Chunks smaller than the noise tiles and the maxima box included: the same rows, bit for bit."""
    image, params, _ = noisy_volume(5, background_amplitude=0.05, pairs=0.5, pair_distance=(0.75, 0.9))
    whole = detect(image, params.voxel_size)
    chunked = detect(image, params.voxel_size, chunks=chunks)
    assert len(whole) > 100 and whole["split"].sum() >= 10  # split-scale cells and merged pairs included
    assert list(chunked.columns) == list(whole.columns)
    np.testing.assert_array_equal(chunked.to_numpy(), whole.to_numpy())


def score(found: pd.DataFrame, params: SynthParams, cells: pd.DataFrame) -> Matching:
    return match(found[UM].to_numpy(), cells[UM].to_numpy(), float(np.mean(params.cell_radius_um)))


@pytest.mark.parametrize(
    "kw",
    [{},  # the default synthetic volume
     # dim cells (0.15–0.35) on a background varying by ±0.3: where a global level fails
     {"brightness": (0.15, 0.35), "background": 0.35, "background_amplitude": 0.3, "noise": 0.03},
     # cells packed as tightly as the generator allows
     {"cell_radius_um": (5.0, 6.0), "spacing_um": 18.5, "occupancy": 1.0, "noise": 0.03}],
)  # fmt: skip
def test_finds_the_synthetic_cells_with_its_defaults(kw: dict) -> None:
    image, params, cells = noisy_volume(7, shape=(48, 192, 192), **kw)
    m = score(detect(image, params.voxel_size, chunks=(24, 96, 96)), params, cells)
    # measured 1.000 on all three; 0.97 leaves room for a few cells at the volume border
    assert m.recall >= 0.97 and m.precision >= 0.97, (m.recall, m.precision)


@pytest.mark.parametrize(("gain", "offset"), [(0.1, 0.0), (10.0, 0.0), (1.0, 0.5), (10.0, 3.0)])
def test_the_same_cells_at_any_brightness_and_offset(gain: float, offset: float) -> None:
    image, params, cells = noisy_volume(11, background_amplitude=0.05, noise=0.03)
    base = detect(image, params.voxel_size, chunks=(20, 75, 85))
    other = detect(image * np.float32(gain) + np.float32(offset), params.voxel_size, chunks=(20, 75, 85))
    m = match(other[UM].to_numpy(), base[UM].to_numpy(), 0.5)
    assert len(base) > 200
    assert m.tp >= 0.99 * max(len(base), len(other)), (m.tp, len(base), len(other))
    matched = other["contrast"].to_numpy()[m.pairs[:, 0]], base["contrast"].to_numpy()[m.pairs[:, 1]]
    np.testing.assert_allclose(*matched, rtol=1e-3)  # contrast is in noise units: unchanged


def test_touching_pairs_are_two_cells() -> None:
    """Pairs of cells (radius 6 µm, profile σ = 3 µm) whose centres are one diameter apart, in random
    directions: each cell found once, near its centre."""
    rng = np.random.default_rng(3)
    scale = np.array([2.0, 1.0, 1.0])
    shape = (40, 160, 160)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, scale)], indexing="ij"), axis=-1)
    image = rng.normal(0.1, 0.02, size=shape).astype(np.float32)
    truth = []
    for cz in (25.0, 55.0):
        for cy in (25.0, 65.0, 105.0, 145.0):
            for cx in (25.0, 65.0, 105.0, 145.0):
                d = rng.normal(size=3)
                d /= np.linalg.norm(d)
                for c in (np.array([cz, cy, cx]) - 6 * d, np.array([cz, cy, cx]) + 6 * d):
                    image += rng.uniform(0.4, 0.8) * np.exp(-((grid - c) ** 2).sum(-1) / (2 * 3.0**2)).astype(
                        np.float32
                    )
                    truth.append(c)
    found = detect(image, tuple(scale), chunks=(20, 80, 80))
    m = match(found[UM].to_numpy(), np.array(truth), 3.0)
    assert m.recall >= 0.95 and m.precision >= 0.95, (m.recall, m.precision, len(found), len(truth))


def test_pure_noise_and_empty_volumes_give_no_cells() -> None:
    """No flooding: 1.3 M voxels of gaussian noise have no maximum six robust sigmas above their median
    (a tail probability of 1e-9 per independent voxel), and an all-zero volume has none at all."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0.2, 0.05, size=(40, 180, 180)).astype(np.float32)
    assert len(detect(noise, (4.0, 1.5, 1.5), chunks=(20, 90, 90))) <= 2
    assert len(detect(np.zeros((20, 60, 60), np.float32), (4.0, 1.5, 1.5))) == 0


@pytest.mark.parametrize(("param", "value"), [("threshold", math.nan), ("threshold", math.inf), ("threshold", -5.0),
                                              ("diameter", 0.0), ("window", 0.5), ("separation", 2.0)])  # fmt: skip
def test_bad_parameters_are_refused_at_load(tmp_path, param: str, value: float) -> None:  # type: ignore[no-untyped-def]
    from cvplgraph.errors import CvplError
    from cvplgraph.spec.parse import load_spec

    text = {math.nan: "nan", math.inf: "inf"}.get(value, repr(value))
    spec = tmp_path / "s.toml"
    spec.write_text(f'[input]\nurl = "x.zarr"\n[nodes.cells]\nop = "detect_cells"\nimage = "input"\n{param} = {text}\n'
                    '[outputs]\ncells = "c.csv"\n')  # fmt: skip
    with pytest.raises(CvplError, match=param) as info:
        load_spec(spec)
    assert "\n" not in str(info.value)
