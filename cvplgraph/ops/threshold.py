"""Image → Mask: fixed, global Otsu and local thresholds."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr

from cvplgraph.kernels import Pointwise
from cvplgraph.ops._halo import check_reach
from cvplgraph.ops.filters import gaussian_radius, histogram, sigma_voxels, smooth
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import like


def _threshold_block(block: np.ndarray, *, level: float) -> np.ndarray:
    return (block > np.float32(level)).view(np.uint8)  # the same 0/1 bytes as the op's astype, without a copy


@op("threshold", version=1, inputs={"image": PortType.Image}, output=PortType.Mask,
    kernel=Pointwise(_threshold_block))  # fmt: skip
def threshold(image: xr.DataArray, *, level: float = 0.5) -> xr.DataArray:
    """Voxels brighter than ``level`` are foreground.

    Parameters
    ----------
    image : (Z, Y, X) DataArray of float32
        Brightness in [0, 1].
    level : float
        Foreground where ``image > level``.

    Returns
    -------
    mask : (Z, Y, X) DataArray of uint8
        1 for foreground, 0 for background. Voxel-wise, so exact on any chunking.
    """
    return like((image.data > np.float32(level)).astype(np.uint8), image)


def _otsu_level(counts: np.ndarray, edges: np.ndarray) -> np.float32:
    from skimage.filters import threshold_otsu

    centres = (edges[:-1] + edges[1:]) / 2
    return np.float32(threshold_otsu(hist=(counts, centres)))


def _above(block: np.ndarray, level: np.float32) -> np.ndarray:
    return (block > level).astype(np.uint8)


@op(
    "otsu",
    version=1,
    inputs={"image": PortType.Image},
    output=PortType.Mask,
    checks={"bins": lambda b: None if b >= 2 else "an integer ≥ 2"},
    halo="none (one global histogram)",
    cost="a histogram pass and a comparison pass",
)
def otsu(image: xr.DataArray, *, bins: int = 1024) -> xr.DataArray:
    """Foreground above the global Otsu level of the whole volume.

    Parameters
    ----------
    image : (Z, Y, X) DataArray of float32 in [0, 1]
    bins : int
        Histogram bins over [0, 1]. The histogram is a reduction inside the
        same graph; no pass is driven from Python.

    Returns
    -------
    mask : (Z, Y, X) DataArray of uint8
        Equal to ``image > skimage.filters.threshold_otsu(hist=...)`` of the
        whole volume's histogram.
    """
    counts, edges = histogram(image.data, bins)
    level = dask.delayed(_otsu_level, pure=True)(counts, edges)
    mask = image.data.map_blocks(_above, level, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
    return like(mask, image)


@op(
    "local_threshold",
    version=1,
    inputs={"image": PortType.Image},
    output=PortType.Mask,
    checks={"sigma": lambda s: None if s > 0 else "a number > 0"},
    halo="4 σ per axis (σ in voxels)",
    cost="one gaussian smoothing",
)
def local_threshold(image: xr.DataArray, *, sigma: float = 20.0, offset: float = 0.05) -> xr.DataArray:
    """Foreground brighter than its neighbourhood: ``image > gaussian(image, sigma) + offset``.

    Parameters
    ----------
    image : (Z, Y, X) DataArray of float32
    sigma : float
        Width of the neighbourhood in µm (several cell diameters).
    offset : float
        How much brighter than the local mean a voxel must be.

    Returns
    -------
    mask : (Z, Y, X) DataArray of uint8
        Adapts to slow background gradients that defeat one global level.
    """
    check_reach("sigma", sigma, lambda s: gaussian_radius(sigma_voxels(s, image)), image.shape)
    local_mean = smooth(image.data, sigma_voxels(sigma, image))
    return like((image.data > local_mean + np.float32(offset)).astype(np.uint8), image)
