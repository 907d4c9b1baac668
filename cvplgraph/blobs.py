"""Gaussian blobs rendered into a block: the cells of the synthetic and the virtual volumes.

Each blob is evaluated only on its ±:data:`BOX_SIGMAS` sigma box, as the outer product of three 1-D
gaussians, and only where that box meets the block; blocks rendered apart add up to the volume rendered
whole.
"""

from __future__ import annotations

import numpy as np

#: Half-width, in sigmas, of the box on which each blob is evaluated.
BOX_SIGMAS: float = 4.0


def profiles(centre: np.ndarray, sigma: np.ndarray, first: np.ndarray, width: int) -> np.ndarray:
    """Gaussian profiles of many cells along one axis, on windows of equal width.

    Parameters
    ----------
    centre, sigma : (n,) float64 arrays
        Centres and sigmas in voxels.
    first : (n,) int64 array
        Global index of each window's first voxel.
    width : int
        Window length (voxels beyond a cell's own box are never read).

    Returns
    -------
    profiles : (n, width) float32 array
        ``exp(-(i - centre)² / (2 sigma²))`` for ``i = first + 0..width-1``.
    """
    offsets = first[:, None] + np.arange(width, dtype=np.float64)[None, :]
    scaled = (offsets - centre[:, None]) / sigma[:, None]
    return np.exp(-0.5 * scaled * scaled).astype(np.float32)


def add_blobs(
    out: np.ndarray, location: list[tuple[int, int]], cells: np.ndarray, voxel_size: tuple[float, float, float]
) -> None:
    """Add the blobs of all cells whose ±4 sigma box meets the block, in place.

    Parameters
    ----------
    out : (nz, ny, nx) float32 array
        The block, modified in place.
    location : list of three (start, stop) pairs
        Global voxel range of the block along (z, y, x).
    cells : (5, m) float64 array
        Candidate cells, rows ``z, y, x`` (voxels), ``radius_um`` (sigma = radius / 2), ``brightness``.
    voxel_size : (3,) tuple of float
    """
    if cells.shape[1] == 0:
        return
    start = np.array([a for a, _ in location], dtype=np.float64)[:, None]
    last_voxel = np.array([b - 1 for _, b in location], dtype=np.float64)[:, None]
    centre = cells[0:3]
    sigma = (cells[3] / 2.0)[None, :] / np.asarray(voxel_size, dtype=np.float64)[:, None]
    reach = BOX_SIGMAS * sigma
    # A box covers indices ceil(c - r) .. floor(c + r); it meets [start, last]
    # iff c - r <= last and c + r >= start.
    hit = np.all((centre - reach <= last_voxel) & (centre + reach >= start), axis=0)
    if not hit.any():
        return
    centre, sigma, reach, amp = centre[:, hit], sigma[:, hit], reach[:, hit], cells[4, hit]
    first = np.maximum(np.ceil(centre - reach), start).astype(np.int64)  # global, inclusive
    last = np.minimum(np.floor(centre + reach), last_voxel).astype(np.int64)  # global, inclusive
    widths = last - first + 1
    gz = profiles(centre[0], sigma[0], first[0], int(widths[0].max()))
    gz *= amp.astype(np.float32)[:, None]
    gy = profiles(centre[1], sigma[1], first[1], int(widths[1].max()))
    gx = profiles(centre[2], sigma[2], first[2], int(widths[2].max()))
    begin = (first - start.astype(np.int64)).T.tolist()  # block-local, per cell
    size = widths.T.tolist()
    for k, ((bz, by, bx), (nz, ny, nx)) in enumerate(zip(begin, size, strict=True)):
        zy = gz[k, :nz, None] * gy[k, None, :ny]
        out[bz : bz + nz, by : by + ny, bx : bx + nx] += zy[:, :, None] * gx[k, None, None, :nx]


__all__ = ["BOX_SIGMAS", "add_blobs", "profiles"]
