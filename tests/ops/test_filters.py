"""Preprocessing and mask ops equal the same computation on the whole numpy array."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from cvplgraph import ops
from cvplgraph.values import Geometry, wrap

#: the small-block chunking runs with the full suite, not in the core loop
CHUNKINGS = [(24, 40, 48), pytest.param((7, 11, 13), marks=pytest.mark.slow), (10, 17, 48), (3, 40, 9)]
SCALE = (4.0, 1.5, 1.0)  # anisotropic voxels, µm


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """Blobs on a gradient with noise: something for every filter to act on."""
    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[0:24, 0:40, 0:48]
    image = 0.1 + 0.2 * x / 48 + ndimage.gaussian_filter(rng.random((24, 40, 48)), 1.5) * 0.8
    return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)


def chunked(volume: np.ndarray, chunks: tuple[int, int, int]):
    return wrap(da.from_array(volume, chunks=chunks), Geometry(volume.shape, SCALE, (0.0, 0.0, 0.0)))


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_gaussian(volume: np.ndarray, chunks: tuple[int, int, int]) -> None:
    out = ops.gaussian(chunked(volume, chunks), sigma=3.0).values
    expected = ndimage.gaussian_filter(volume, (3.0 / 4, 3.0 / 1.5, 3.0), mode="reflect", truncate=4.0)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_background_subtract(volume: np.ndarray, chunks: tuple[int, int, int]) -> None:
    out = ops.background_subtract(chunked(volume, chunks), radius=4.0).values
    size = (3, 7, 9)  # 2 * round(4 µm / voxel) + 1 per axis
    expected = np.maximum(volume - ndimage.grey_opening(volume, size=size, mode="reflect"), 0)
    np.testing.assert_array_equal(out, expected)
    assert (out >= 0).all() and out.mean() < volume.mean()  # the gradient is gone


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_normalize_uses_whole_volume_percentiles(volume: np.ndarray, chunks: tuple[int, int, int]) -> None:
    out = ops.normalize(chunked(volume, chunks), low=2.0, high=98.0).values
    lo, hi = np.percentile(volume, [2.0, 98.0])
    expected = np.clip((volume - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=2**-16 / (hi - lo) * 2)
    assert np.isclose((out == 0).mean(), 0.02, atol=0.002) and np.isclose((out == 1).mean(), 0.02, atol=0.002)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_downsample(volume: np.ndarray, chunks: tuple[int, int, int]) -> None:
    out = ops.downsample(chunked(volume, chunks), factor=[2, 3, 5])
    expected = volume[:24, :39, :45].reshape(12, 2, 13, 3, 9, 5).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    assert out.attrs["scale"] == [8.0, 4.5, 5.0]
    assert out.attrs["translation"] == [2.0, 1.5, 2.0]  # centre of the first box


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_otsu_equals_skimage_on_the_whole_histogram(volume: np.ndarray, chunks: tuple[int, int, int]) -> None:
    out = ops.otsu(chunked(volume, chunks), bins=1024).values
    counts, edges = np.histogram(volume, bins=1024, range=(0, 1))
    level = threshold_otsu(hist=(counts, (edges[:-1] + edges[1:]) / 2))
    np.testing.assert_array_equal(out, (volume > np.float32(level)).astype(np.uint8))
    # and agrees with skimage's own default within one bin
    assert abs(level - threshold_otsu(volume)) < 2 / 1024


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_local_threshold(volume: np.ndarray, chunks: tuple[int, int, int]) -> None:
    out = ops.local_threshold(chunked(volume, chunks), sigma=6.0, offset=0.02).values
    mean = ndimage.gaussian_filter(volume, (6.0 / 4, 6.0 / 1.5, 6.0), mode="reflect", truncate=4.0)
    np.testing.assert_array_equal(out, (volume > mean + np.float32(0.02)).astype(np.uint8))


@pytest.mark.parametrize(
    ("op", "port", "params", "param"),
    [
        ("gaussian", "image", {"sigma": 1e6}, "sigma"),
        ("local_threshold", "image", {"sigma": 1e6}, "sigma"),
        ("background_subtract", "image", {"radius": 1e6}, "radius"),
        ("blobs", "image", {"max_sigma": 1e6}, "max_sigma"),
        ("blobs", "image", {"min_sigma": 1e6, "max_sigma": 2e6}, "min_sigma"),
        ("detect_cells", "image", {"diameter": 1e6}, "diameter"),
        ("watershed", "mask", {"max_radius": 1e6}, "max_radius"),
        ("watershed", "mask", {"min_distance": 1e6}, "min_distance"),
    ],
)
def test_a_halo_wider_than_the_volume_names_the_parameter_and_what_fits(
    volume: np.ndarray, op: str, port: str, params: dict, param: str
) -> None:
    """``sigma = 1e6`` used to end in dask's overlap error (or kernels no block can hold); the op now says
    which parameter, and the largest value that fits builds."""
    from cvplgraph.errors import HaloTooLarge
    from cvplgraph.registry import get_op

    value = chunked(volume if port == "image" else (volume > 0.5).astype(np.uint8), (24, 40, 48))
    func = get_op(op).func
    with pytest.raises(HaloTooLarge) as info:
        func(value, **params)
    assert info.value.param == param and info.value.largest is not None
    assert str(info.value).startswith(f"{params[param]:g} needs a halo of ")
    fits = f"more than the volume's 24; expected at most {info.value.largest:g} for this volume"
    assert str(info.value).endswith(fits)
    func(value, **{name: info.value.largest for name in params})  # the largest value that fits builds its graph
