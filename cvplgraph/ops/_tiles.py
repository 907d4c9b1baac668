"""Noise tiles: the robust local median and noise of a response, on a tile grid fixed to the volume.

A tile ``i`` along an axis covers [i × tile, (i + 1) × tile) of the whole volume, whatever the blocks;
its statistics are read back at any voxel by linear interpolation between tile centres. A block
that holds every tile whose centre brackets one of its voxels computes exactly what the whole
array would.
"""

from __future__ import annotations

import math

import numpy as np

#: MAD → standard deviation for gaussian noise.
MAD_TO_SD = 1.4826
#: Noise never below this fraction of the tile's mean absolute intensity (flat or empty regions).
NOISE_FLOOR = 1e-5
#: Tiles are sampled at every other voxel along an axis where they span ≥ 6 voxels.
SUBSAMPLE_FROM = (6,)


def sample_step(width: int) -> int:
    """The step at which a tile ``width`` voxels wide is sampled along one axis."""
    return 1 + sum(width >= w for w in SUBSAMPLE_FROM)


def _tiles_around(start: int, stop: int, tile: int, size: int) -> tuple[int, int]:
    """The span of the global tiles whose centres bracket every voxel of [start, stop).

    Tile ``i`` covers [i × tile, (i + 1) × tile) and is centred at i × tile + (tile − 1) / 2; the span
    reaches at least (tile − 1) / 2 voxels beyond [start, stop) on each side (or the volume's end).
    """
    below = math.floor((start - (tile - 1) / 2) / tile)
    above = math.floor((stop - 1 - (tile - 1) / 2) / tile) + 1
    return max(0, below * tile), min(size, (above + 1) * tile)


def tile_span(
    start: np.ndarray, stop: np.ndarray, tile: np.ndarray, shape: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_tiles_around` along each axis: the first and last (exclusive) voxel of the tiles."""
    spans = [_tiles_around(int(start[a]), int(stop[a]), int(tile[a]), int(shape[a])) for a in range(3)]
    return np.array([s[0] for s in spans]), np.array([s[1] for s in spans])


def _segments(first: int, last: int, tile: int) -> list[tuple[int, int, int]]:
    """[first, last) cut into runs of equal tiles: (start, number of tiles, tile size)."""
    full = (last - first) // tile
    out = [(first, full, tile)] if full else []
    if first + full * tile < last:
        out.append((first + full * tile, 1, last - first - full * tile))
    return out


def tile_stats(
    response: np.ndarray,
    image: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    tile: np.ndarray,
    origin: np.ndarray,
    levels: dict | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Median and noise (MAD × 1.4826, floored) of ``response`` per global tile in [first, last).

    ``response`` and ``image`` are arrays whose element 0 sits at global voxel ``origin``; ``levels``
    keeps the image's mean absolute level per tile between calls on the same image.
    Returns the tile centres per axis (global voxel coordinates) and the two grids.
    """
    segments = [_segments(int(first[a]), int(last[a]), int(tile[a])) for a in range(3)]
    counts = [sum(n for _, n, _ in seg) for seg in segments]
    median = np.empty(counts, dtype=np.float64)
    noise = np.empty(counts, dtype=np.float64)
    centres = []
    for seg in segments:
        c = [s + k * t + (t - 1) / 2 for s, n, t in seg for k in range(n)]
        centres.append(np.asarray(c))
    offsets = [np.cumsum([0] + [n for _, n, _ in seg]) for seg in segments]
    for iz, (sz, nz, tz) in enumerate(segments[0]):
        for iy, (sy, ny, ty) in enumerate(segments[1]):
            for ix, (sx, nx, tx) in enumerate(segments[2]):
                box = tuple(
                    slice(s - o, s - o + n * t) for s, n, t, o in zip((sz, sy, sx), (nz, ny, nx), (tz, ty, tx), origin)
                )
                shape = (nz, tz, ny, ty, nx, tx)
                step = tuple(slice(None, None, sample_step(t)) for t in (tz, ty, tx))
                sub = (slice(None), step[0], slice(None), step[1], slice(None), step[2])
                r = response[box].reshape(shape)[sub].transpose(0, 2, 4, 1, 3, 5).reshape(nz, ny, nx, -1)
                key = (iz, iy, ix)  # the image's level per tile, shared by the calls for both responses
                if levels is None or key not in levels:
                    level = np.abs(image[box].reshape(shape)[sub]).mean(axis=(1, 3, 5), dtype=np.float64)
                    if levels is not None:
                        levels[key] = level
                else:
                    level = levels[key]
                med = np.median(r, axis=-1)
                mad = np.median(np.abs(r - med[..., None].astype(np.float32)), axis=-1)
                where = (slice(offsets[0][iz], offsets[0][iz + 1]), slice(offsets[1][iy], offsets[1][iy + 1]),
                         slice(offsets[2][ix], offsets[2][ix + 1]))  # fmt: skip
                median[where] = med
                noise[where] = np.maximum(MAD_TO_SD * mad, NOISE_FLOOR * level)
    return centres, median, noise


def interpolate(centres: list[np.ndarray], grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``grid`` (values at ``centres``) at (n, 3) ``points``, clamped at the ends."""
    lows, weights = [], []
    for a in range(3):
        c = centres[a]
        p = np.clip(points[:, a], c[0], c[-1])
        i = np.clip(np.searchsorted(c, p, side="right") - 1, 0, max(0, len(c) - 2))
        width = c[np.minimum(i + 1, len(c) - 1)] - c[i]
        w = np.where(width > 0, (p - c[i]) / np.where(width > 0, width, 1.0), 0.0)
        lows.append(i)
        weights.append(w)
    out = np.zeros(len(points))
    for corner in np.ndindex(2, 2, 2):
        index = tuple(np.minimum(lows[a] + corner[a], grid.shape[a] - 1) for a in range(3))
        weight = np.ones(len(points))
        for a in range(3):
            weight = weight * (weights[a] if corner[a] else 1.0 - weights[a])
        out += weight * grid[index]
    return out
