"""Mask → Labels: watershed that splits touching cells, with globally consistent ids.

Each block is processed with a halo wide enough to hold a whole cell and its
neighbourhood: the Euclidean distance to the background (in µm, so anisotropic
voxels are handled) is lightly smoothed, its regional maxima within
``min_distance`` become seeds, and ``skimage.segmentation.watershed`` floods
``-distance`` inside the mask. A seed's id is derived from its global position
(the linear index of its first voxel), so two blocks that both see a cell give
it the same id, and each block writes only its core. Ids are then renumbered
1..N through one global lookup table, in a second pass that recomputes the
blocks (memory stays bounded by the block size); ``renumber = false`` skips
that pass and keeps the position ids.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from dask.graph_manipulation import bind

from cvplgraph.ops._halo import check_reach
from cvplgraph.ops.lookup import LABEL_DTYPE
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, like


def ball(radius: float, scale: tuple[float, ...]) -> np.ndarray:
    """Boolean footprint of the voxels within ``radius`` µm of the centre."""
    half = [max(1, int(radius / s)) for s in scale]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    squared = np.zeros([2 * h + 1 for h in half])
    for g, s in zip(grids, scale):
        squared = squared + (g * s) ** 2
    return np.asarray(squared <= radius**2)


def tie_break(coords: np.ndarray, origin: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A tiny offset for voxels ``coords`` ((3, n), local to a region starting at ``origin``).

    It depends only on the voxel's global position, so exact ties (symmetric
    touching cells) are broken the same way in every block and the seeds do
    not depend on the chunking.
    """
    index = np.ravel_multi_index(tuple(coords + np.asarray(origin)[:, None]), shape)
    return 1e-6 * ((index * 0.6180339887498949) % 1.0)


def seeds_and_flood(
    mask: np.ndarray, scale: tuple[float, ...], min_distance: float, origin: tuple[int, ...], shape: tuple[int, ...]
) -> np.ndarray:
    """Watershed of one array region; ids are 1 + global linear index of each seed's first voxel.

    The definition: ``d`` = Euclidean distance to the background (µm), smoothed
    with σ = 0.5 µm, plus :func:`tie_break`; seeds are the foreground voxels
    where ``d`` equals its maximum over a ball of radius ``min_distance``
    (26-connected groups of them form one seed); ``-d`` is flooded from the
    seeds inside the mask. The work is done where the result can change: the
    distances are taken from scipy's feature transform at foreground voxels
    only, and the ball maximum is tested only at foreground voxels that are
    (up to the tie-break) maxima of their 3×3×3 neighbourhood — a ball maximum
    is one of its central part — by comparing with each offset of the ball.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of uint8
    scale : voxel size in µm
    min_distance : float
        Seeds closer than this (µm) to a higher one are dropped.
    origin, shape : the region's first voxel in the whole volume, and the whole volume's shape
    """
    from scipy import ndimage

    fg = mask > 0
    if not fg.any():
        return np.zeros(mask.shape, dtype=np.int64)
    nearest = ndimage.distance_transform_edt(fg, sampling=scale, return_distances=False, return_indices=True)
    inside = np.flatnonzero(fg)
    at = np.array(np.unravel_index(inside, mask.shape))
    squared = np.zeros(inside.size)
    for axis, s in enumerate(scale):  # scipy's arithmetic, in its order: the same distances
        step = (nearest[axis].ravel()[inside] - at[axis]).astype(np.float64) * s
        squared += step * step
    del nearest
    distance = np.zeros(mask.shape)
    distance.ravel()[inside] = np.sqrt(squared)
    distance = ndimage.gaussian_filter(distance, sigma=[0.5 / s * min(scale) for s in scale], mode="nearest")
    footprint = ball(min_distance, scale)
    half = np.array(footprint.shape) // 2
    near = footprint[tuple(slice(h - 1, h + 2) for h in half)]
    local_max = ndimage.maximum_filter(distance, footprint=near, mode="nearest")
    candidates = np.flatnonzero(fg & (distance >= local_max - 2e-6))
    del local_max
    coords = np.array(np.unravel_index(candidates, mask.shape))
    value = distance.ravel()[candidates] + tie_break(coords, origin, shape)
    last = np.array(mask.shape)[:, None] - 1
    for offset in np.argwhere(footprint) - half:  # the candidates shrink with every offset
        other = np.clip(coords + offset[:, None], 0, last)  # clipping = the filter's "nearest" mode
        keep = value >= distance[tuple(other)] + tie_break(other, origin, shape)
        candidates, coords, value = candidates[keep], coords[:, keep], value[keep]
    peaks = np.zeros(mask.shape, dtype=bool)
    peaks.ravel()[candidates] = True
    regions, n = ndimage.label(peaks, structure=np.ones((3, 3, 3)))
    if n == 0:
        return np.zeros(mask.shape, dtype=np.int64)
    _, first = np.unique(regions.ravel()[candidates], return_index=True)  # candidates ascend: first voxels
    local = np.array(np.unravel_index(candidates[first], mask.shape))
    ids = np.concatenate([[0], np.ravel_multi_index(tuple(local + np.asarray(origin)[:, None]), shape) + 1])
    from skimage.segmentation import watershed as flood  # loaded where a block is flooded (0.05 s of start-up)

    distance.ravel()[inside] += tie_break(at, origin, shape)  # the flood reads foreground voxels only
    return ids[flood(-distance, regions, mask=fg)]


def _block(
    block: np.ndarray,
    halo: tuple[int, ...],
    scale: tuple[float, ...],
    min_distance: float,
    shape: tuple[int, ...],
    grid: tuple[tuple[int, ...], ...],
    block_id: tuple[int, ...] = (0, 0, 0),
) -> np.ndarray:
    """One block with its halo (none beyond the volume border); ``grid`` is the chunking
    without halos and ``block_id`` comes from dask."""
    start = [sum(grid[a][: block_id[a]]) - (halo[a] if block_id[a] > 0 else 0) for a in range(3)]
    return seeds_and_flood(block, scale, min_distance, tuple(start), shape)


def at_least(chunks: tuple[int, ...], size: int) -> tuple[int, ...]:
    """Merge neighbouring chunks until each is at least ``size`` (so a halo never spans two blocks)."""
    out: list[int] = []
    for c in chunks:
        if out and (out[-1] < size or c < size):
            out[-1] += c
        else:
            out.append(c)
    return tuple(out)


def _unique(block: np.ndarray) -> np.ndarray:
    return np.unique(block[block > 0])


def _lut(*uniques: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([np.empty(0, np.int64), *uniques]))


def _renumber(block: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.searchsorted(ids, block) + 1
    out[block == 0] = 0
    return out.astype(LABEL_DTYPE)


@op(
    "watershed",
    version=2,
    inputs={"mask": PortType.Mask},
    output=PortType.Labels,
    checks={
        "min_distance": lambda v: None if v > 0 else "a number > 0 (µm)",
        "max_radius": lambda v: None if v > 0 else "a number > 0 (µm)",
    },  # fmt: skip
    halo="2 × max_radius + min_distance per axis (in voxels)",
    cost="a feature transform, a sparse ball-maximum test and a flood per block; twice with renumber = true",
)
def watershed(
    mask: xr.DataArray, *, min_distance: float = 6.0, max_radius: float = 10.0, renumber: bool = True
) -> xr.DataArray:
    """Split touching cells: distance-transform seeds flooded inside the mask.

    Parameters
    ----------
    mask : (Z, Y, X) DataArray of uint8
    min_distance : float
        Minimum distance between two cell centres, µm (about a cell radius).
    max_radius : float
        Radius of the largest cell, µm; sets the halo so that every cell is
        seen whole by the block that holds its seed.
    renumber : bool
        Number the objects 1..N (int32). This needs the list of every seed
        before any block can be written, so each block is computed twice
        (memory stays bounded by the block). With ``false`` one pass suffices
        and the ids are int64: 1 + the linear index of the seed's first voxel
        in the volume — unique and independent of the chunking, but sparse.
        ``centroids`` and ``count`` work the same with either.

    Returns
    -------
    labels : (Z, Y, X) DataArray of int32 (int64 with ``renumber = false``)
        Objects unique across the volume. Away from the volume border and for
        cells smaller than ``max_radius`` the objects equal the same procedure
        on the whole array.
    """
    import dask
    import dask.array as da

    geometry = Geometry.of(mask)
    scale = geometry.scale

    def reach(radius: float, distance: float) -> list[int]:
        return [math.ceil((2 * radius + distance) / s) for s in scale]

    if all(r <= n for r, n in zip(reach(max_radius, 0.0), mask.shape)):  # the radius fits: the rest is the distance's
        check_reach("min_distance", min_distance, lambda d: reach(max_radius, d), mask.shape)
    check_reach("max_radius", max_radius, lambda r: reach(r, min_distance), mask.shape)
    depth = tuple(int(np.ceil((2 * max_radius + min_distance) / s)) for s in scale)
    data = mask.data
    data = data.rechunk(tuple(at_least(c, d) for c, d in zip(data.chunks, depth)))
    chunks = data.chunks

    def flooded(source: da.Array) -> da.Array:
        return source.map_overlap(
            _block, depth=dict(enumerate(depth)), boundary="none", trim=True, dtype=np.int64,
            halo=depth, scale=scale, min_distance=min_distance, shape=geometry.shape, grid=chunks,
        )  # fmt: skip

    first = flooded(data)
    if not renumber:
        return like(first.rechunk(mask.data.chunks), mask)
    uniques = [dask.delayed(_unique, pure=True)(b) for b in first.to_delayed(optimize_graph=False).ravel()]
    ids = dask.delayed(_lut, pure=True)(*uniques)
    second = flooded(bind(data, ids))  # recomputed after the table exists: no block is held meanwhile
    out = da.map_blocks(_renumber, second, ids, dtype=LABEL_DTYPE, meta=np.empty((0, 0, 0), LABEL_DTYPE))
    return like(out.rechunk(mask.data.chunks), mask)
