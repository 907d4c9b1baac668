"""Image → Points: blob detection (LoG, DoG, or one-scale peaks), kept by the block holding the centre.

Each block is read with a halo wider than the detector's reach; blobs found
in the halo are dropped, so a blob is reported once, by the block whose core
holds its centre. ``method = "peaks"`` smooths once at the smallest scale and
takes local maxima: much cheaper than a scale-space search and, for cells of
one typical size, as good (see docs/benchmarks.md).
"""

from __future__ import annotations

import math
from typing import Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr

from cvplgraph.ops._blocks import block_cores
from cvplgraph.ops._halo import check_reach
from cvplgraph.ops.filters import TRUNCATE
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, Table

BLOB_COLUMNS = ["z", "y", "x", "sigma_um", "intensity"]


def detect(
    block: np.ndarray,
    method: str,
    sigmas: np.ndarray,
    threshold: float,
    scale: tuple[float, ...],
) -> np.ndarray:
    """Blobs of one array: rows (z, y, x, sigma_um, peak response) in the array's voxel coordinates.

    ``sigmas`` is (num_sigma, 3) in voxels per axis, the first row the smallest.
    """
    from scipy import ndimage

    if method == "peaks":
        sigma = sigmas[0]
        response = ndimage.gaussian_filter(block, sigma, mode="reflect", truncate=TRUNCATE)
        size = tuple(2 * max(1, round(s)) + 1 for s in sigma)
        peaks = (response == ndimage.maximum_filter(response, size=size, mode="reflect")) & (response > threshold)
        coords = np.argwhere(peaks)
        sig = np.full(len(coords), float(sigma[0] * scale[0]))
        return np.column_stack([coords, sig, response[peaks]]) if len(coords) else np.empty((0, 5))
    from skimage.feature import blob_dog, blob_log

    if method == "log":
        found = blob_log(block, min_sigma=sigmas[0], max_sigma=sigmas[-1], num_sigma=len(sigmas),
                         threshold=threshold, exclude_border=False)  # fmt: skip
    else:
        found = blob_dog(block, min_sigma=sigmas[0], max_sigma=sigmas[-1], threshold=threshold, exclude_border=False)
    if len(found) == 0:
        return np.empty((0, 5))
    coords = found[:, :3]
    sig_um = found[:, 3] * scale[0]  # skimage reports the z sigma for anisotropic inputs
    values = block[tuple(np.clip(np.rint(coords).astype(int), 0, np.array(block.shape) - 1).T)]
    return np.column_stack([coords, sig_um, values])


def _block_blobs(
    padded: np.ndarray,
    core_start: np.ndarray,
    core_stop: np.ndarray,
    pad_start: np.ndarray,
    method: str,
    sigmas: np.ndarray,
    threshold: float,
    scale: tuple[float, ...],
) -> np.ndarray:
    found = detect(padded, method, sigmas, threshold, scale)
    if len(found) == 0:
        return found
    found[:, :3] += pad_start
    centre = np.floor(found[:, :3] + 0.5)
    inside = np.all((centre >= core_start) & (centre < core_stop), axis=1)
    return found[inside]


def _table(geometry: Geometry, scale: tuple[float, ...], *parts: np.ndarray) -> pd.DataFrame:
    rows = np.concatenate([np.empty((0, 5)), *parts])
    rows = rows[np.lexsort(rows[:, :3].T[::-1])] if len(rows) else rows
    um = geometry.to_um(rows[:, :3])
    radius_um = np.sqrt(3) * rows[:, 3]  # the LoG response of a ball peaks at sigma = r / sqrt(3)
    volume_um3 = 4 / 3 * np.pi * radius_um**3
    return pd.DataFrame(
        {
            "label": np.arange(1, len(rows) + 1, dtype=np.int64),
            "z": rows[:, 0], "y": rows[:, 1], "x": rows[:, 2],
            "z_um": um[:, 0], "y_um": um[:, 1], "x_um": um[:, 2],
            "volume_voxels": np.maximum(1, np.rint(volume_um3 / float(np.prod(scale)))).astype(np.int64),
            "volume_um3": volume_um3,
            "sigma_um": rows[:, 3],
            "intensity": rows[:, 4],
        }
    )  # fmt: skip


def _checks() -> dict:
    return {
        "min_sigma": lambda v: None if v > 0 else "a number > 0 (µm)",
        "max_sigma": lambda v: None if v > 0 else "a number > 0 (µm)",
        "num_sigma": lambda v: None if v >= 1 else "an integer ≥ 1",
    }


@op(
    "blobs",
    version=1,
    inputs={"image": PortType.Image},
    output=PortType.Points,
    checks=_checks(),
    halo="4 × max_sigma + 1 voxel per axis",
    cost="log: num_sigma gaussian-Laplace filters and a 4-D maximum filter per block; peaks: one gaussian",
)
def blobs(
    image: xr.DataArray,
    *,
    method: Literal["log", "dog", "peaks"] = "log",
    min_sigma: float = 2.0,
    max_sigma: float = 4.0,
    num_sigma: int = 5,
    threshold: float = 0.05,
) -> Table:
    """Detect bright blobs (cells) as points, without a mask.

    Parameters
    ----------
    image : (Z, Y, X) DataArray of float32
    method : {"log", "dog", "peaks"}
        scikit-image's Laplacian-of-Gaussian or Difference-of-Gaussian
        scale-space detectors, or local maxima of one gaussian smoothing at the
        smallest scale (fast).
    min_sigma, max_sigma : float
        Range of blob scales in µm (a ball of radius r responds most at
        σ = r / √3).
    num_sigma : int
        Scales searched between them (log; peaks uses the smallest).
    threshold : float
        Minimum detector response.

    Returns
    -------
    points : Table
        ``z, y, x`` (voxels), ``z_um, y_um, x_um``, ``sigma_um``, ``intensity``
        (the detector's response, or the image value for log/dog) and a
        ``volume_voxels`` estimate from the scale.
    """
    geometry = Geometry.of(image)
    scale = geometry.scale

    def reach(widest: float) -> list[int]:
        return [math.ceil(TRUNCATE * widest / a) + 1 for a in scale]

    check_reach("min_sigma", min_sigma, reach, image.shape)
    check_reach("max_sigma", max_sigma, lambda s: reach(max(s, min_sigma)), image.shape)  # the widest σ sets the halo
    sig_um = np.linspace(min_sigma, max_sigma, num_sigma) if num_sigma > 1 else np.array([min_sigma])
    sigmas = sig_um[:, None] / np.asarray(scale)[None, :]
    halo = np.ceil(TRUNCATE * sigmas.max(axis=0)).astype(int) + 1
    data = image.data
    shape = np.asarray(data.shape)
    parts = []
    for _, core_start, core_stop in block_cores(data.chunks):
        pad_start = np.maximum(core_start - halo, 0)
        pad_stop = np.minimum(core_stop + halo, shape)
        padded = data[tuple(slice(a, b) for a, b in zip(pad_start, pad_stop))]
        parts.append(dask.delayed(_block_blobs, pure=True)(
            padded, core_start, core_stop, pad_start, method, sigmas, threshold, scale))  # fmt: skip
    return Table(dask.delayed(_table, pure=True)(geometry, scale, *parts), geometry)
