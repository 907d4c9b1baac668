"""Image → Points: cells found in physical units and in units of the scan's own noise.

One number a biologist knows, the expected cell ``diameter`` in µm, sets every
length; one number in noise units, ``threshold``, sets what counts as a cell.
Nothing depends on the scan's brightness, offset or dtype:

1. **Blob response at the cell scale.** ``R = G(σ) − G(κσ)``, a difference of
   gaussians with σ = diameter / 4 (the σ of a cell's own profile) and κ = 1.6,
   in µm so anisotropic voxels are respected. It is a band-pass: a constant
   offset and a slowly varying background give 0.
2. **Local background and noise of the response**, robustly: the median and
   the MAD (× 1.4826) of ``R`` over tiles ``window`` cell diameters wide, on a
   tile grid fixed to the volume (not to the blocks), interpolated linearly
   between tile centres. Bright cells occupy a minority of a tile, so the median
   and MAD see the background and its noise; where photon noise grows with the
   background, the noise estimate grows with it.
3. **Candidates** are local maxima of ``R`` over a box of half-width
   ``separation × diameter`` whose contrast ``(R − median) / noise`` reaches
   ``threshold``. Touching cells are split by this: two cells whose centres are
   a diameter apart are two maxima of the response at their own scale.
4. **Centre, size and shape per candidate**: the centre is refined to sub-voxel
   precision by a parabola through the response along each axis; the half-width
   at half maximum of the response along each axis (µm) gives the size
   (``radius_um``, ``volume_um3`` of that ellipsoid) and the shape
   (``elongation``, z against the in-plane half-widths); ``edge`` and ``ring``
   are the response one radius and one diameter from the centre, as a fraction
   of the peak (a cell falls off smoothly and has a dark surround; a speck or a
   fibre does not). These columns are the features ``classify_objects`` learns
   from.

Every step is local and read through a halo that covers the tiles a block's
voxels are interpolated from and the filters' reach, so a block computes
exactly what the whole array would: a cell is reported once, by the block that
holds its peak voxel, with the same centre and features for any chunking.
"""

from __future__ import annotations

import math

import dask
import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from cvplgraph.ops.filters import TRUNCATE
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, Table

#: Ratio of the surround gaussian to the centre gaussian (≈ a Laplacian of gaussian).
KAPPA = 1.6
#: MAD → standard deviation for gaussian noise.
MAD_TO_SD = 1.4826
#: Noise never below this fraction of the tile's mean absolute intensity (flat or empty regions).
NOISE_FLOOR = 1e-5
#: Tiles at least this many voxels wide along an axis are sampled at every other voxel along it.
SUBSAMPLE_FROM = 6

FEATURES = ["contrast", "noise", "radius_um", "hw_z_um", "hw_y_um", "hw_x_um", "elongation", "edge", "ring"]
COLUMNS = ["label", "z", "y", "x", "z_um", "y_um", "x_um", "volume_voxels", "volume_um3", "intensity", *FEATURES]


class Scales:
    """Every length of the method, in voxels per axis, from the diameter (µm) and the voxel size."""

    def __init__(self, diameter: float, window: float, separation: float, scale: tuple[float, ...]) -> None:
        self.diameter = diameter
        self.scale = np.asarray(scale, dtype=float)
        self.sigma = diameter / 4.0 / self.scale  # voxels per axis
        # the surround G(κσ) is G(σ) smoothed again by σ√(κ² − 1): a smaller second kernel
        self.extra = self.sigma * math.sqrt(KAPPA**2 - 1.0)
        reach = [int(TRUNCATE * s + 0.5) + int(TRUNCATE * e + 0.5) for s, e in zip(self.sigma, self.extra)]
        self.filter_halo = np.array(reach) + 1  # scipy's kernel radii, one after the other
        self.tile = np.maximum(1, np.rint(window * diameter / self.scale)).astype(int)
        # the maxima box and the profile (one diameter out) stay inside the tiles the halo holds
        inner = np.maximum(1, (self.tile - 1) // 2)
        self.footprint = np.minimum(np.maximum(1, np.rint(separation * diameter / self.scale)).astype(int), inner)
        self.steps = np.minimum(np.maximum(1, np.ceil(diameter / self.scale)).astype(int), inner)


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


def tile_stats(response: np.ndarray, image: np.ndarray, first: np.ndarray, last: np.ndarray, tile: np.ndarray,
               origin: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:  # fmt: skip
    """Median and noise (MAD × 1.4826, floored) of ``response`` per global tile in [first, last).

    ``response`` and ``image`` are arrays whose element 0 sits at global voxel ``origin``.
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
                # every other voxel of a tile along the axes where it spans ≥ SUBSAMPLE_FROM voxels
                step = tuple(slice(None, None, 2 if t >= SUBSAMPLE_FROM else None) for t in (tz, ty, tx))
                sub = (slice(None), step[0], slice(None), step[1], slice(None), step[2])
                r = response[box].reshape(shape)[sub].transpose(0, 2, 4, 1, 3, 5).reshape(nz, ny, nx, -1)
                level = np.abs(image[box].reshape(shape)[sub]).mean(axis=(1, 3, 5), dtype=np.float64)
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


def _axis_maxima(response: np.ndarray, start: np.ndarray, stop: np.ndarray, floor: float) -> np.ndarray:
    """Voxels of the box [start, stop) of ``response`` that are ≥ ``floor`` and ≥ their two neighbours
    along every axis (a neighbour outside the array is the voxel itself), relative to ``start``."""
    lo = np.maximum(start - 1, 0)
    hi = np.minimum(stop + 1, response.shape)
    window = response[tuple(slice(a, b) for a, b in zip(lo, hi))]
    widths = [(int(1 - (a - low)), int(1 - (high - b))) for a, b, low, high in zip(start, stop, lo, hi)]
    if any(w != (0, 0) for w in widths):  # the array's own edge: its neighbour is itself
        window = np.pad(window, widths, mode="edge")
    centre = window[1:-1, 1:-1, 1:-1]
    found = centre >= floor
    for axis in range(3):
        for shift in (0, 2):
            near = tuple(slice(shift, shift + n) if a == axis else slice(1, 1 + n) for a, n in enumerate(centre.shape))
            found &= centre >= window[near]
    return np.argwhere(found)


def _is_box_maximum(response: np.ndarray, at: np.ndarray, values: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Whether each voxel ``at`` ((n, 3), local) is ≥ every voxel of the box of half-size ``radius`` around it.

    Box voxels outside ``response`` are its nearest edge voxel (scipy's ``mode="nearest"``).
    """
    limit = np.asarray(response.shape) - 1
    shifts = np.array(list(np.ndindex(*(2 * radius + 1)))) - radius
    shifts = shifts[np.argsort(np.abs(shifts).sum(axis=1), kind="stable")][1:]  # nearest first: most fail early
    where = np.arange(len(at))
    inside = len(at) == 0 or bool(np.all(at.min(axis=0) >= radius) and np.all(at.max(axis=0) <= limit - radius))
    if inside:  # no box leaves the array: flat offsets, no clipping
        flat, strides = response.ravel(), np.array(response.strides) // response.itemsize
        position = at @ strides
        for shift in shifts:
            where = where[flat[position[where] + int(shift @ strides)] <= values[where]]
            if len(where) == 0:
                break
    else:
        for shift in shifts:
            near = np.clip(at[where] + shift, 0, limit)
            where = where[response[tuple(near.T)] <= values[where]]
            if len(where) == 0:
                break
    keep = np.zeros(len(at), dtype=bool)
    keep[where] = True
    return keep


def _half_width(profile: np.ndarray, step_um: float) -> np.ndarray:
    """Distance (µm) at which each row of ``profile`` (peak first) first falls to half its first value."""
    half = 0.5 * profile[:, :1]
    below = profile < half
    below[:, -1] = True
    k = np.argmax(below, axis=1)  # first index below half (≥ 1), or the last sample
    rows = np.arange(len(profile))
    before, after = profile[rows, k - 1], profile[rows, k]
    span = before - after
    frac = np.where(span > 0, (before - half[:, 0]) / np.where(span > 0, span, 1.0), 1.0)
    return (k - 1 + np.clip(frac, 0.0, 1.0)) * step_um


def detect_block(
    padded: np.ndarray,
    pad_start: np.ndarray,
    core_start: np.ndarray,
    core_stop: np.ndarray,
    shape: np.ndarray,
    lengths: tuple[float, float, float, tuple[float, ...]],
    threshold: float,
) -> np.ndarray:
    """Cells whose peak voxel lies in the core, as rows of :data:`COLUMNS` (label and µm left to the table).

    ``lengths`` is (diameter, window, separation, voxel size), as :class:`Scales` takes them.
    """
    scales = Scales(*lengths)
    image = padded.astype(np.float32, copy=False)
    centre = ndimage.gaussian_filter(image, scales.sigma, mode="reflect", truncate=TRUNCATE)
    surround = ndimage.gaussian_filter(centre, scales.extra, mode="reflect", truncate=TRUNCATE)
    response = centre - surround
    first, last = tile_span(core_start, core_stop, scales.tile, shape)
    centres, median, noise = tile_stats(response, image, first, last, scales.tile, pad_start)

    # local maxima over the separation box, tested on the core only: first where the response can
    # reach the threshold at all (the smallest threshold of the tiles a voxel is interpolated from)
    floor = ndimage.minimum_filter(median + threshold * noise, size=2, mode="nearest", origin=-1)
    local = _axis_maxima(response, core_start - pad_start, core_stop - pad_start, max(float(floor.min()), 0.0))
    index = [np.clip(np.searchsorted(centres[a], local[:, a] + core_start[a], side="right") - 1, 0,
                     len(centres[a]) - 1) for a in range(3)]  # fmt: skip
    values = response[tuple((local + (core_start - pad_start)).T)]
    keep = (values >= floor[tuple(index)]) & (values > 0)
    local, values = local[keep], values[keep]
    keep = _is_box_maximum(response, local + (core_start - pad_start), values, scales.footprint)
    at = local[keep] + core_start  # global voxel of each local maximum
    values = values[keep].astype(np.float64)
    if len(at) == 0:
        return np.empty((0, len(COLUMNS)))
    bg = interpolate(centres, median, at.astype(float))
    sd = interpolate(centres, noise, at.astype(float))
    contrast = (values - bg) / sd
    keep = contrast >= threshold
    at, values, bg, sd, contrast = at[keep], values[keep], bg[keep], sd[keep], contrast[keep]
    if len(at) == 0:
        return np.empty((0, len(COLUMNS)))

    rel = at - pad_start
    limit = np.asarray(response.shape) - 1
    refined = at.astype(float)
    profiles = []
    for a in range(3):
        steps = np.arange(0, scales.steps[a] + 1)
        sides = []
        for sign in (-1, 1):
            idx = [np.repeat(rel[:, b : b + 1], len(steps), axis=1) for b in range(3)]
            idx[a] = np.clip(rel[:, a : a + 1] + sign * steps[None, :], 0, limit[a])
            sides.append(response[tuple(idx)].astype(np.float64) - bg[:, None])
        minus, plus = sides
        centre_v = minus[:, 0]
        curvature = minus[:, 1] - 2 * centre_v + plus[:, 1]
        delta = np.where(
            curvature < 0, 0.5 * (minus[:, 1] - plus[:, 1]) / np.where(curvature < 0, curvature, -1.0), 0.0
        )
        refined[:, a] += np.clip(delta, -0.5, 0.5)
        profiles.append((minus, plus))
    hw = np.column_stack([
        0.5 * (_half_width(m, scales.scale[a]) + _half_width(p, scales.scale[a])) for a, (m, p) in enumerate(profiles)
    ])  # fmt: skip
    radius_um = hw.mean(axis=1)
    volume_um3 = 4.0 / 3.0 * math.pi * np.prod(hw, axis=1)
    peak_v = np.maximum(values - bg, np.finfo(float).tiny)

    def fraction_at(distance_um: float) -> np.ndarray:
        parts = []
        for a, (m, p) in enumerate(profiles):
            k = min(int(round(distance_um / scales.scale[a])), m.shape[1] - 1)
            parts += [m[:, k], p[:, k]]
        return np.mean(parts, axis=0) / peak_v

    edge = fraction_at(scales.diameter / 2)
    ring = fraction_at(scales.diameter)
    elongation = hw[:, 0] / np.maximum(0.5 * (hw[:, 1] + hw[:, 2]), 1e-12)
    intensity = centre[tuple(rel.T)].astype(np.float64)
    volume_voxels = np.maximum(1, np.rint(volume_um3 / float(np.prod(scales.scale))))
    return np.column_stack([
        np.zeros(len(at)), refined, np.zeros((len(at), 3)), volume_voxels, volume_um3, intensity,
        contrast, sd, radius_um, hw, elongation, edge, ring,
    ])  # fmt: skip


def _table(geometry: Geometry, *parts: np.ndarray) -> pd.DataFrame:
    rows = np.concatenate([np.empty((0, len(COLUMNS))), *parts])
    if len(rows):
        rows = rows[np.lexsort(rows[:, 1:4].T[::-1])]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["label"] = np.arange(1, len(rows) + 1, dtype=np.int64)
    um = geometry.to_um(rows[:, 1:4])
    frame["z_um"], frame["y_um"], frame["x_um"] = um[:, 0], um[:, 1], um[:, 2]
    frame["volume_voxels"] = frame["volume_voxels"].astype(np.int64)
    return frame


def _finite_positive(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else "a finite number > 0 (µm)"


def _checks() -> dict:
    return {
        "diameter": _finite_positive,
        "threshold": lambda v: None if math.isfinite(v) and v > 0 else "a finite number > 0 (noise units)",
        "window": lambda v: None if math.isfinite(v) and 1 <= v <= 20 else "a number of cell diameters in [1, 20]",
        "separation": lambda v: None if math.isfinite(v) and 0 < v <= 1 else "a fraction of the diameter in (0, 1]",
    }


@op(
    "detect_cells",
    version=1,
    inputs={"image": PortType.Image},
    output=PortType.Points,
    checks=_checks(),
    halo="window × diameter (the noise tiles a block interpolates from) + 4 × 1.6 × diameter / 4 per axis",
    cost="two gaussians, tile medians and a maximum filter per block",
)
def detect_cells(
    image: xr.DataArray,
    *,
    diameter: float = 12.0,
    threshold: float = 6.0,
    window: float = 3.0,
    separation: float = 0.5,
) -> Table:
    """Find cells from their expected diameter (µm) and a contrast in units of the local noise.

    Parameters
    ----------
    image : (Z, Y, X) DataArray
        Any intensity scale, offset and dtype: the result is the same for the
        image multiplied by a positive constant or shifted by one.
    diameter : float
        Expected cell diameter in µm; sets the blob scale (σ = diameter / 4),
        the noise window and the minimum separation of two cells.
    threshold : float
        Minimum contrast of a cell: its blob response above the local median,
        in units of the local noise of the response (robust standard deviation).
    window : float
        Width of the tiles the local median and noise are taken over, in cell
        diameters.
    separation : float
        Two maxima closer than ``separation × diameter`` along every axis are
        one cell (the higher).

    Returns
    -------
    points : Table
        ``z, y, x`` (voxels, sub-voxel), ``z_um, y_um, x_um``, ``intensity``
        (the image smoothed at the cell scale, at the peak), ``contrast`` (noise
        units), ``noise`` (the local noise of the response, image units),
        ``radius_um`` and ``hw_z_um, hw_y_um, hw_x_um`` (half-widths at half
        maximum), ``volume_um3``/``volume_voxels`` (that ellipsoid),
        ``elongation``, ``edge`` and ``ring`` (the response one radius and one
        diameter out, as a fraction of the peak).
    """
    geometry = Geometry.of(image)
    lengths = (float(diameter), float(window), float(separation), tuple(geometry.scale))
    scales = Scales(*lengths)
    data = image.data
    shape = np.asarray(data.shape)
    parts = []
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in data.chunks]
    for index in np.ndindex(*data.numblocks):
        core_start = np.array([starts[a][index[a]] for a in range(3)])
        core_stop = core_start + np.array([data.chunks[a][index[a]] for a in range(3)])
        first, last = tile_span(core_start, core_stop, scales.tile, shape)
        pad_start = np.maximum(first - scales.filter_halo, 0)
        pad_stop = np.minimum(last + scales.filter_halo, shape)
        padded = data[tuple(slice(a, b) for a, b in zip(pad_start, pad_stop))]
        parts.append(dask.delayed(detect_block, pure=True)(
            padded, pad_start, core_start, core_stop, shape, lengths, float(threshold)))  # fmt: skip
    return Table(dask.delayed(_table, pure=True)(geometry, *parts), geometry)
