"""Image → Points: cells found in physical units and in units of the scan's own noise.

One number a biologist knows, the expected cell ``diameter`` in µm, sets every
length; one number in noise units, ``threshold``, sets what counts as a cell.
Nothing depends on the scan's brightness, offset or dtype:

1. **Blob responses at two scales**, in µm so anisotropic voxels are respected.
   The cell scale ``R = G(σ) − G(κσ)`` (σ = diameter / 4, the σ of a cell's own
   profile, κ = 1.6: close to a Laplacian of gaussian) and the split scale
   ``S = G(sσ) − G(σ)`` (s = 0.75), a narrower band where two cells closer than
   a diameter, or a dim cell on a bright one's flank, are two peaks. Both are
   band-passes: a constant offset and a slowly varying background give 0. The
   gaussians are chained (each smooths the one before, σ adding in quadrature)
   and truncated at 2.5σ; the widest, the surround (a local background, cut at
   2σ), is computed on every f-th voxel (f = 2 or 4 where its σ spans ≥ f
   voxels) and interpolated back linearly.
2. **Local background and noise of each response**, robustly: the median and
   the MAD (× 1.4826) over tiles ``window`` cell diameters wide, on a tile grid
   fixed to the volume (not to the blocks), interpolated linearly between tile
   centres. Bright cells occupy a minority of a tile, so the median and MAD see
   the background and its noise; where photon noise grows with the background,
   the noise estimate grows with it.
3. **Cells** are the local maxima of ``R`` (over the ellipsoid of radius
   ``separation × diameter`` µm and the 26 neighbours) whose contrast
   ``(R − median) / noise`` reaches ``threshold``; and the maxima of ``S`` over
   the ellipsoid ``s`` times smaller whose contrast in ``S`` reaches 0.75 ×
   ``threshold`` and in ``R`` reaches ``threshold`` (a single bright voxel of
   photon or camera speckle stands out at the small scale and fades at a
   cell's). A cell-scale maximum with two or more split-scale maxima within
   ``separation × diameter`` is a pair it merged, and gives way to them; other
   split-scale maxima within that distance of a cell-scale maximum are that
   cell again (the ``split`` column marks cells found at the split scale).
4. **Centre, size and shape per cell**: the centre is refined to sub-voxel
   precision by a parabola through the response along each axis; the half-width
   at half maximum of the response along each axis (µm) gives the size
   (``radius_um``, ``volume_um3`` of that ellipsoid) and the shape
   (``elongation``, z against the in-plane half-widths); ``edge`` and ``ring``
   are the response one radius and one diameter from the centre, as a fraction
   of the peak (a cell falls off smoothly and has a dark surround; a speck or a
   fibre does not). With ``contrast`` and ``contrast_small`` these columns are
   the features ``classify_objects`` learns from.

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

from cvplgraph.ops._blocks import block_cores
from cvplgraph.ops._halo import check_reach
from cvplgraph.ops._tiles import interpolate, tile_span, tile_stats
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, Table

#: Ratio of the surround gaussian to the centre gaussian (≈ a Laplacian of gaussian). A wider surround
#: (κ 3–4) spares a dim cell beside a bright one after tuning, but lets more of a varying background
#: through and inflates the noise tiles: at the shipped threshold it loses dim cells on a strong
#: gradient and in packed tissue (docs/methods.md).
KAPPA = 1.6
#: The centre gaussian's σ as a fraction of the cell diameter (a cell's own profile has σ ≈ radius / 2).
SIGMA_PER_DIAMETER = 0.25
#: The split scale's σ against the cell scale's, and its threshold against the cell scale's (a split
#: maximum must also reach the full threshold in the cell-scale response at its voxel).
SPLIT = 0.75
SPLIT_THRESHOLD = 0.75
#: The response's gaussians reach this many σ (scipy's ``truncate``; the kernel is normalised to sum 1).
KERNEL_TRUNCATE = 2.5
#: The surround, a local background, is cut sooner: its reach sets the halo every block reads.
SURROUND_TRUNCATE = 2.0
#: The surround is computed on every f-th voxel along each axis (f = 1, 2 or 4), the largest f that
#: leaves its σ at least this many coarse voxels, and interpolated back linearly.
DECIMATE_SIGMA = 1.0
MAX_DECIMATION = 4
FEATURES = [
    "contrast",
    "contrast_small",
    "split",
    "noise",
    "radius_um",
    "hw_z_um",
    "hw_y_um",
    "hw_x_um",
    "elongation",
    "edge",
    "ring",
]
COLUMNS = ["label", "z", "y", "x", "z_um", "y_um", "x_um", "volume_voxels", "volume_um3", "intensity", *FEATURES]


class Scales:
    """Every length of the method, in voxels per axis, from the diameter (µm) and the voxel size."""

    def __init__(self, diameter: float, window: float, separation: float, scale: tuple[float, ...]) -> None:
        self.diameter = diameter
        self.scale = np.asarray(scale, dtype=float)
        self.sigma = diameter * SIGMA_PER_DIAMETER / self.scale  # voxels per axis
        # Three gaussians in a chain, each smoothing the one before it (σ adds in quadrature), so every
        # kernel is small: the split-scale centre G(sσ), the cell-scale centre G(σ) from it, and the
        # surround G(κσ) from that. The cell-scale response is G(σ) − G(κσ), the split-scale one
        # G(sσ) − G(σ): a narrower band, where two cells a little closer than a diameter are two peaks.
        self.kernels = {
            "small": SPLIT * self.sigma,
            "centre": self.sigma * math.sqrt(1.0 - SPLIT**2),
            "surround": self.sigma * math.sqrt(KAPPA**2 - 1.0),
        }
        # The surround is smooth: computed on every f-th voxel along each axis (the largest f that keeps its
        # σ ≥ DECIMATE_SIGMA coarse voxels) and interpolated back, a fraction of the work of the widest kernel.
        self.step = _decimation(self.kernels["surround"])
        step = self.step
        radius = {name: np.array([int(KERNEL_TRUNCATE * v + 0.5) for v in k]) for name, k in self.kernels.items()}
        coarse = np.array([int(SURROUND_TRUNCATE * v / f + 0.5) for v, f in zip(self.kernels["surround"], step)])
        reach = radius["small"] + radius["centre"] + coarse * step + (step - 1)  # + the interpolation's reach
        self.filter_halo = reach + 1  # scipy's kernel radii, one after the other
        self.tile = np.maximum(1, np.rint(window * diameter / self.scale)).astype(int)
        # the maxima box and the profile (one diameter out) stay inside the tiles the halo holds
        inner = np.maximum(1, (self.tile - 1) // 2)
        # a maximum is the highest voxel of the ellipsoid of semi-axes separation × diameter (and of its
        # 26 neighbours); maxima are looked for two boxes around the core and tested over one more box,
        # so three boxes must fit in the tiles around the core
        self.separation_um = separation * diameter
        self.semi = self.separation_um / self.scale
        self.footprint = np.minimum(np.maximum(1, np.ceil(self.semi - 1e-9)).astype(int),
                                    np.maximum(1, (self.tile - 1) // 6))  # fmt: skip
        self.split_semi = SPLIT * self.semi
        self.split_footprint = np.minimum(np.maximum(1, np.ceil(self.split_semi - 1e-9)).astype(int), self.footprint)
        self.steps = np.minimum(np.maximum(1, np.ceil(diameter / self.scale)).astype(int), inner)


def _responses(
    image: np.ndarray, scales: Scales, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The image smoothed at the cell scale and its centre-surround response; the same at the split scale."""
    k = scales.kernels

    def smooth(a: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        return ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=KERNEL_TRUNCATE)

    small_centre = smooth(image, k["small"])
    centre = smooth(small_centre, k["centre"])
    response = centre - _decimated_gaussian(centre, k["surround"], scales.step, origin)
    small = small_centre - centre
    return centre, response, small_centre, small


def _decimation(sigma: np.ndarray) -> np.ndarray:
    """Per axis, the largest power of two f ≤ MAX_DECIMATION with ``sigma / f ≥ DECIMATE_SIGMA`` (1 if none)."""
    step = np.ones(len(sigma), dtype=int)
    while np.any(grow := (step * 2 <= MAX_DECIMATION) & (sigma / (step * 2) >= DECIMATE_SIGMA)):
        step = np.where(grow, step * 2, step)
    return step


def _decimated_gaussian(a: np.ndarray, sigma: np.ndarray, step: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """A gaussian of ``a`` computed on the voxels whose global index is a multiple of ``step`` (per axis,
    σ divided by it), then linearly interpolated back to every voxel (the nearest coarse voxel beyond
    the first or last). ``a`` starts at global ``origin``; the result depends only on global positions,
    so blocks agree with the whole array."""
    from scipy import ndimage

    first = [int(-o % f) for o, f in zip(origin, step)]  # local index of the first multiple of step
    take = tuple(slice(b, None, int(f)) for b, f in zip(first, step))
    coarse = ndimage.gaussian_filter(a[take], sigma / step, mode="reflect", truncate=SURROUND_TRUNCATE)
    for axis in np.flatnonzero(step > 1):
        coarse = _upsample(coarse, int(axis), a.shape[axis], first[axis], int(step[axis]))
    return coarse


def _upsample(coarse: np.ndarray, axis: int, n: int, first: int, f: int) -> np.ndarray:
    """``coarse`` (samples at local indices ``first + f·k`` along ``axis``) linearly interpolated to
    ``n`` voxels, the nearest sample before the first and after the last. Voxels of one phase
    ``(i − first) mod f`` share their weights, so each phase is one strided slice."""
    m = coarse.shape[axis]
    shape = list(coarse.shape)
    shape[axis] = n
    out = np.empty(shape, dtype=coarse.dtype)

    def along(index: slice | int) -> tuple:
        return (slice(None),) * axis + (index,)

    out[along(slice(0, first))] = coarse[along(slice(0, 1))]
    for r in range(f):
        target = out[along(slice(first + r, None, f))]
        count = target.shape[axis]
        if r == 0:
            target[...] = coarse[along(slice(0, count))]
            continue
        w = np.float32(r / f)
        inner = min(count, m - 1)  # voxels between two samples
        between = target[along(slice(0, inner))]
        np.multiply(coarse[along(slice(0, inner))], 1 - w, out=between)
        between += w * coarse[along(slice(1, inner + 1))]
        target[along(slice(inner, None))] = coarse[along(slice(m - 1, m))]  # beyond the last sample
    return out


def _maxima(response: np.ndarray, centres: list[np.ndarray], median: np.ndarray, noise: np.ndarray,
            threshold: float, start: np.ndarray, stop: np.ndarray, origin: np.ndarray,
            footprint: np.ndarray, semi: np.ndarray) -> np.ndarray:  # fmt: skip
    """Global voxels in [start, stop) where ``response`` is the maximum of its ellipsoid of semi-axes
    ``footprint`` and its contrast (response − median) / noise, interpolated between tile centres,
    reaches ``threshold``. ``response`` starts at global voxel ``origin``."""
    from scipy import ndimage

    # first where the response can reach the threshold at all: the smallest threshold of the tiles a
    # voxel is interpolated from, a scalar for the whole box, then per voxel for the few left
    floor = ndimage.minimum_filter(median + threshold * noise, size=2, mode="nearest", origin=-1)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start - origin, stop - origin))
    local = np.argwhere(response[box] >= max(float(floor.min()), 0.0))
    index = [np.clip(np.searchsorted(centres[a], local[:, a] + start[a], side="right") - 1, 0,
                     len(centres[a]) - 1) for a in range(3)]  # fmt: skip
    values = response[tuple((local + (start - origin)).T)]
    keep = (values >= floor[tuple(index)]) & (values > 0)
    local, values = local[keep], values[keep]
    keep = _is_box_maximum(response, local + (start - origin), values, footprint, semi)
    at = local[keep] + start
    values = values[keep].astype(np.float64)
    contrast = (values - interpolate(centres, median, at.astype(float))) / interpolate(centres, noise, at.astype(float))
    return at[contrast >= threshold]


def _is_box_maximum(
    response: np.ndarray, at: np.ndarray, values: np.ndarray, radius: np.ndarray, semi: np.ndarray
) -> np.ndarray:
    """Whether each voxel ``at`` ((n, 3), local) is ≥ every voxel of the ellipsoid of semi-axes ``semi``
    (voxels, within the box of half-size ``radius``) and of its 26 neighbours.

    Voxels outside ``response`` are its nearest edge voxel (scipy's ``mode="nearest"``).
    """
    limit = np.asarray(response.shape) - 1
    shifts = np.array(list(np.ndindex(*(2 * radius + 1)))) - radius
    inside = ((shifts / np.maximum(semi, 1e-9)) ** 2).sum(axis=1) <= 1.0 + 1e-9
    shifts = shifts[inside | (np.abs(shifts).max(axis=1) <= 1)]
    shifts = shifts[np.argsort(np.abs(shifts).sum(axis=1), kind="stable")][1:]  # nearest first: most fail early
    # candidates whose box stays inside the array: flat offsets, no clipping; the others clipped
    clear = np.all((at >= radius) & (at <= limit - radius), axis=1)
    where = np.flatnonzero(clear)
    flat, strides = response.ravel(), np.array(response.strides) // response.itemsize
    position = at @ strides
    for shift in shifts:
        where = where[flat[position[where] + int(shift @ strides)] <= values[where]]
        if len(where) == 0:
            break
    edge = np.flatnonzero(~clear)
    for shift in shifts:
        if len(edge) == 0:
            break
        near = np.clip(at[edge] + shift, 0, limit)
        edge = edge[response[tuple(near.T)] <= values[edge]]
    where = np.concatenate([where, edge])
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
    first, last = tile_span(core_start, core_stop, scales.tile, shape)
    centre, response, s_centre, small = _responses(image, scales, pad_start)
    levels: dict = {}
    centres, median, noise = tile_stats(response, image, first, last, scales.tile, pad_start, levels)
    s_centres, s_median, s_noise = tile_stats(small, image, first, last, scales.tile, pad_start, levels)
    fp = scales.footprint
    # the cell scale: maxima in the core and one box around it
    mains = _maxima(response, centres, median, noise, threshold, np.maximum(core_start - fp, first),
                    np.minimum(core_stop + fp, last), pad_start, fp, scales.semi)  # fmt: skip
    # the split scale, two boxes around the core: smaller cells, cells on a brighter neighbour's flank,
    # and pairs the cell scale shows as one maximum. Only where the cell scale sees a cell's contrast
    # too: a single bright voxel (photon or camera speckle) stands out at the small scale and fades at
    # a cell's.
    splits = _maxima(small, s_centres, s_median, s_noise, SPLIT_THRESHOLD * threshold,
                     np.maximum(core_start - 2 * fp, first), np.minimum(core_stop + 2 * fp, last), pad_start,
                     scales.split_footprint, scales.split_semi)  # fmt: skip
    if len(splits):
        splits = splits[_contrast(response, centres, median, noise, splits, pad_start) >= threshold]
    main, extra = _resolve(mains, splits, scales.scale / scales.separation_um)
    main, extra = (at[np.all((at >= core_start) & (at < core_stop), axis=1)] for at in (main, extra))
    rows = []
    scales_found = ((main, response, centres, median, centre), (extra, small, s_centres, s_median, s_centre))
    for found, resp, cen, med, smoothed in scales_found:
        if len(found):
            at = found.astype(np.int64)
            rows.append(_describe(at, resp, interpolate(cen, med, at.astype(float)), smoothed, pad_start, scales))
            rows[-1][:, COLUMNS.index("contrast")] = _contrast(response, centres, median, noise, at, pad_start)
            rows[-1][:, COLUMNS.index("contrast_small")] = _contrast(small, s_centres, s_median, s_noise, at, pad_start)
            rows[-1][:, COLUMNS.index("noise")] = interpolate(centres, noise, at.astype(float))
            rows[-1][:, COLUMNS.index("split")] = float(resp is small)
    return np.concatenate([np.empty((0, len(COLUMNS))), *rows])


def _contrast(response: np.ndarray, centres: list[np.ndarray], median: np.ndarray, noise: np.ndarray,
              at: np.ndarray, origin: np.ndarray) -> np.ndarray:  # fmt: skip
    """(response − local median) / local noise at global voxels ``at``."""
    values = response[tuple((at - origin).T)].astype(np.float64)
    where = at.astype(float)
    return (values - interpolate(centres, median, where)) / interpolate(centres, noise, where)


def _resolve(mains: np.ndarray, splits: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell-scale and split-scale maxima into cells. A cell-scale maximum with two or more split-scale
    maxima within the separation is a pair the cell scale merged: its split maxima are the cells.
    Otherwise it is one cell, and split maxima within the separation of it are that cell again; split
    maxima near no cell-scale maximum are cells of their own. ``unit`` turns voxels into units of the
    separation. (Each decision looks one separation around a maximum, and that maximum's own
    neighbours one more: the caller passes split maxima two boxes around the core.)"""
    if len(mains) == 0 or len(splits) == 0:
        return mains, splits
    from scipy.spatial import cKDTree  # here, not at import: every spec loads this module, few run it

    near_split = cKDTree(splits * unit).query_ball_point(mains * unit, r=1.0 + 1e-9)
    merged = np.array([len(n) >= 2 for n in near_split], dtype=bool)
    near_main = cKDTree(mains * unit).query_ball_point(splits * unit, r=1.0 + 1e-9)
    keep = np.array([all(merged[j] for j in n) for n in near_main], dtype=bool)  # near none, or only merged ones
    return mains[~merged], splits[keep]


def _describe(at: np.ndarray, response: np.ndarray, bg: np.ndarray, smoothed: np.ndarray, origin: np.ndarray,
              scales: Scales) -> np.ndarray:  # fmt: skip
    """Rows of :data:`COLUMNS` for maxima ``at`` of ``response`` (local background ``bg``): the sub-voxel
    centre, half-widths, volume, shape and profile (contrast columns are filled by the caller)."""
    rel = at - origin
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
        curvature = minus[:, 1] - 2 * minus[:, 0] + plus[:, 1]
        concave = curvature < 0
        delta = np.where(concave, 0.5 * (minus[:, 1] - plus[:, 1]) / np.where(concave, curvature, -1.0), 0.0)
        refined[:, a] += np.clip(delta, -0.5, 0.5)
        profiles.append((minus, plus))
    hw = np.column_stack([
        0.5 * (_half_width(m, scales.scale[a]) + _half_width(p, scales.scale[a])) for a, (m, p) in enumerate(profiles)
    ])  # fmt: skip
    volume_um3 = 4.0 / 3.0 * math.pi * np.prod(hw, axis=1)
    peak = np.maximum(profiles[0][0][:, 0], np.finfo(float).tiny)

    def fraction_at(distance_um: float) -> np.ndarray:
        parts = []
        for a, (m, p) in enumerate(profiles):
            k = min(int(round(distance_um / scales.scale[a])), m.shape[1] - 1)
            parts += [m[:, k], p[:, k]]
        return np.mean(parts, axis=0) / peak

    out = np.zeros((len(at), len(COLUMNS)))
    column = {name: i for i, name in enumerate(COLUMNS)}
    out[:, 1:4] = refined
    out[:, column["volume_um3"]] = volume_um3
    out[:, column["volume_voxels"]] = np.maximum(1, np.rint(volume_um3 / float(np.prod(scales.scale))))
    out[:, column["intensity"]] = smoothed[tuple(rel.T)]
    out[:, column["radius_um"]] = hw.mean(axis=1)
    out[:, [column["hw_z_um"], column["hw_y_um"], column["hw_x_um"]]] = hw
    out[:, column["elongation"]] = hw[:, 0] / np.maximum(0.5 * (hw[:, 1] + hw[:, 2]), 1e-12)
    out[:, column["edge"]] = fraction_at(scales.diameter / 2)
    out[:, column["ring"]] = fraction_at(scales.diameter)
    return out


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
    version=3,
    inputs={"image": PortType.Image},
    output=PortType.Points,
    checks=_checks(),
    halo="the noise tiles around the block (≥ window × diameter / 2) + the filters' reach (≈ 2 × diameter) per axis",
    cost="three gaussians (the widest on every other voxel), tile medians and sparse maxima per block",
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
        Two maxima closer than ``separation × diameter`` (µm) are one cell
        (the higher). The search around a maximum is cut at ``window / 6``
        diameters per axis (it must fit in the noise tiles a block holds), so
        with the default window a separation above 0.5 acts as 0.5.

    Returns
    -------
    points : Table
        ``z, y, x`` (voxels, sub-voxel), ``z_um, y_um, x_um``, ``intensity``
        (the image smoothed at the cell scale, at the peak), ``contrast`` (noise
        units), ``noise`` (the local noise of the response, image units),
        ``contrast_small`` (the same at the split scale), ``split`` (1 for a
        cell found at the split scale), ``radius_um`` and
        ``hw_z_um, hw_y_um, hw_x_um`` (half-widths at half
        maximum), ``volume_um3``/``volume_voxels`` (that ellipsoid),
        ``elongation``, ``edge`` and ``ring`` (the response one radius and one
        diameter out, as a fraction of the peak).
    """
    geometry = Geometry.of(image)
    lengths = (float(diameter), float(window), float(separation), tuple(geometry.scale))
    check_reach("diameter", diameter, lambda d: Scales(d, *lengths[1:]).filter_halo, image.shape)
    scales = Scales(*lengths)
    data = image.data
    shape = np.asarray(data.shape)
    parts = []
    for _, core_start, core_stop in block_cores(data.chunks):
        first, last = tile_span(core_start, core_stop, scales.tile, shape)
        pad_start = np.maximum(first - scales.filter_halo, 0)
        pad_stop = np.minimum(last + scales.filter_halo, shape)
        padded = data[tuple(slice(a, b) for a, b in zip(pad_start, pad_stop))]
        parts.append(dask.delayed(detect_block, pure=True)(
            padded, pad_start, core_start, core_stop, shape, lengths, float(threshold)))  # fmt: skip
    return Table(dask.delayed(_table, pure=True)(geometry, *parts), geometry)
