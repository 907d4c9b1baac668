"""Watershed and blob detection: chunked equals the whole array, and both find synthetic truth."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import blob_log
from skimage.segmentation import watershed as skimage_watershed

from cvplgraph import ops
from cvplgraph.ops.watershed import ball, seeds_and_flood
from cvplgraph.synth.volume import SynthParams, synth_volume
from cvplgraph.values import Geometry, wrap

pytestmark = pytest.mark.slow  # whole runs, subprocesses or every op's conformance; see pyproject.toml's markers

SCALE = (2.0, 1.0, 1.0)


def touching_pairs(seed: int, n_pairs: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Balls of radius 6 µm in overlapping pairs (centres 9 µm apart) on anisotropic voxels."""
    rng = np.random.default_rng(seed)
    shape = (30, 96, 128)
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float32)
    z *= SCALE[0]
    mask = np.zeros(shape, np.uint8)
    centres = []
    sites = [(zz, yy, xx) for zz in (15.0, 42.0) for yy in range(12, 96, 28) for xx in range(14, 128, 34)]
    for i in rng.permutation(len(sites))[:n_pairs]:
        c0 = np.array(sites[i], dtype=np.float32)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        for c in (c0 - 4.5 * direction, c0 + 4.5 * direction):
            mask |= ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 36).astype(np.uint8)
            centres.append(c)
    return mask, np.array(centres)


def partition_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)


def dense_seeds_and_flood(mask: np.ndarray, scale: tuple[float, ...], min_distance: float) -> np.ndarray:
    """The watershed's definition written densely on the whole array, with scipy and scikit-image:
    smoothed EDT plus the position tie-break, seeds = maxima over the ball, flood of -distance.
    Returns the same ids as the op (1 + linear index of each seed's first voxel)."""
    fg = mask > 0
    distance = ndimage.distance_transform_edt(fg, sampling=scale)
    distance = ndimage.gaussian_filter(distance, sigma=[0.5 / s * min(scale) for s in scale], mode="nearest")
    index = np.arange(mask.size).reshape(mask.shape)
    distance += 1e-6 * ((index * 0.6180339887498949) % 1.0)
    peaks = fg & (distance == ndimage.maximum_filter(distance, footprint=ball(min_distance, scale), mode="nearest"))
    regions, n = ndimage.label(peaks, structure=np.ones((3, 3, 3)))
    first = ndimage.minimum(index, regions, np.arange(1, n + 1)).astype(np.int64)
    ids = np.concatenate([[0], first + 1])
    return ids[skimage_watershed(-distance, regions, mask=fg)]


@pytest.mark.parametrize(
    "seed, scale, min_distance", [(0, SCALE, 6.0), (2, (1.0, 1.0, 1.0), 4.0), (3, (3.0, 0.7, 0.7), 5.0)]
)
def test_sparse_kernel_equals_dense_definition(seed: int, scale: tuple[float, ...], min_distance: float) -> None:
    mask, _ = touching_pairs(seed)
    got = seeds_and_flood(mask, scale, min_distance, (0, 0, 0), mask.shape)
    np.testing.assert_array_equal(got, dense_seeds_and_flood(mask, scale, min_distance))


@pytest.mark.parametrize("chunks", [(30, 96, 128), (10, 32, 40), (7, 50, 33)])
def test_watershed_chunked_equals_whole_and_splits_pairs(chunks: tuple[int, int, int]) -> None:
    mask, centres = touching_pairs(0)
    whole = dense_seeds_and_flood(mask, SCALE, 6.0)
    labels = ops.watershed(wrap(da.from_array(mask, chunks=chunks), Geometry(mask.shape, SCALE)),
                           min_distance=6.0, max_radius=7.0).compute(scheduler="threads").values  # fmt: skip
    # the same objects as the whole-array computation: a bijection between ids
    pairs = partition_pairs(whole, labels)
    assert len(pairs) == len(np.unique(whole)) == len(np.unique(labels))
    assert labels.max() == len(np.unique(labels)) - 1  # renumbered 1..N
    # without renumbering: one pass, and the ids are the whole-array ids themselves
    positions = (
        ops.watershed(
            wrap(da.from_array(mask, chunks=chunks), Geometry(mask.shape, SCALE)),
            min_distance=6.0,
            max_radius=7.0,
            renumber=False,
        )
        .compute(scheduler="threads")
        .values
    )
    assert positions.dtype == np.int64
    np.testing.assert_array_equal(positions, whole)
    # connected components merges every touching pair; watershed splits them
    assert ndimage.label(mask)[1] == len(centres) // 2
    assert labels.max() == len(centres)


def test_watershed_objects_hold_their_true_centres() -> None:
    mask, centres = touching_pairs(1)
    geometry = Geometry(mask.shape, SCALE)
    labels = ops.watershed(wrap(da.from_array(mask, chunks=(15, 48, 64)), geometry), min_distance=6.0,
                           max_radius=7.0)  # fmt: skip
    table = ops.centroids(labels).compute(scheduler="threads")
    got = table[["z_um", "y_um", "x_um"]].to_numpy()
    distances = np.linalg.norm(got[:, None, :] - centres[None, :, :], axis=2)
    assert (distances.min(axis=0) < 2.0).all()  # every true cell has a detection within 2 µm
    assert len(set(distances.argmin(axis=1))) == len(centres)  # and no two share one


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, Geometry, int]:
    volume, cells = synth_volume(SynthParams(shape=(32, 128, 160), chunks=(32, 128, 160), seed=5))
    return volume.values, Geometry(volume.shape, tuple(volume.attrs["scale"])), len(cells)


@pytest.mark.parametrize("chunks", [(32, 128, 160), (16, 64, 64), (11, 45, 70)])
def test_blob_log_chunked_equals_whole_array(synthetic: tuple[np.ndarray, Geometry, int],
                                             chunks: tuple[int, int, int]) -> None:  # fmt: skip
    image, geometry, truth = synthetic
    sig_um = np.linspace(2.0, 3.5, 4)
    sigmas = sig_um[:, None] / np.asarray(geometry.scale)[None, :]
    reference = blob_log(image, min_sigma=sigmas[0], max_sigma=sigmas[-1], num_sigma=4, threshold=0.25,
                         exclude_border=False)  # fmt: skip
    table = ops.blobs(wrap(da.from_array(image, chunks=chunks), geometry), method="log", min_sigma=2.0,
                      max_sigma=3.5, num_sigma=4, threshold=0.25).compute(scheduler="threads")  # fmt: skip
    assert abs(len(table) - len(reference)) <= max(1, 0.005 * len(reference))
    got = table[["z", "y", "x"]].to_numpy()
    # identical blobs away from the volume border
    interior = np.all((reference[:, :3] >= 4) & (reference[:, :3] < np.array(image.shape) - 4), axis=1)
    distance = np.linalg.norm(reference[interior, None, :3] - got[None, :, :], axis=2).min(axis=1)
    assert (distance == 0).all()
    assert abs(len(table) - truth) <= 0.02 * truth


@pytest.mark.parametrize("method, threshold", [("dog", 0.1), ("peaks", 0.2)])
def test_other_detectors_find_the_synthetic_cells(synthetic: tuple[np.ndarray, Geometry, int], method: str,
                                                   threshold: float) -> None:  # fmt: skip
    image, geometry, truth = synthetic
    min_sigma = 1.5 if method == "peaks" else 2.0
    whole = ops.blobs(wrap(da.from_array(image), geometry), method=method, min_sigma=min_sigma, max_sigma=3.5,
                      num_sigma=4, threshold=threshold).compute(scheduler="threads")  # fmt: skip
    chunked = ops.blobs(wrap(da.from_array(image, chunks=(16, 50, 64)), geometry), method=method,
                        min_sigma=min_sigma, max_sigma=3.5, num_sigma=4, threshold=threshold,
                        ).compute(scheduler="threads")  # fmt: skip
    assert abs(len(chunked) - len(whole)) <= max(1, 0.005 * len(whole))
    assert abs(len(chunked) - truth) <= 0.02 * truth
