"""Labels → Points: per-object centroids and features, exact across blocks.

Every block contributes partial sums per id (voxel count, Σz, Σy, Σx,
Σintensity); the sums of an object cut by block faces are merged by id, so
the centroid equals ``scipy.ndimage.center_of_mass`` on the whole array.
When the labels come from ``connected_components`` in the same graph the sums
are taken from its per-block labels and merged through its lookup table, so
the relabelled volume is never built.
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ..registry import op
from ..types import PortType
from ..values import Geometry, Table
from .components import BLOCK_LABELS_ATTR, BlockLabels

#: Columns of every Points table, in order; features follow.
POINT_COLUMNS = ["label", "z", "y", "x", "z_um", "y_um", "x_um", "volume_voxels", "volume_um3"]
_SUMS = 5  # n, Σz, Σy, Σx, Σintensity


def _partial_sums(labels: np.ndarray, image: np.ndarray | None, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids present in the block and their (n, Σz, Σy, Σx, Σintensity) rows."""
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, _SUMS))
    ids, inverse = np.unique(flat[idx], return_inverse=True)
    coords = np.unravel_index(idx, labels.shape)
    sums = np.empty((ids.size, _SUMS))
    sums[:, 0] = np.bincount(inverse, minlength=ids.size)
    for a in range(3):
        sums[:, 1 + a] = np.bincount(inverse, weights=coords[a] + float(starts[a]), minlength=ids.size)
    sums[:, 4] = np.bincount(inverse, weights=image.ravel()[idx], minlength=ids.size) if image is not None else 0.0
    return ids.astype(np.int64), sums


def _block_starts(chunks: tuple[tuple[int, ...], ...], block_id: tuple[int, ...]) -> np.ndarray:
    return np.array([sum(chunks[a][: block_id[a]]) for a in range(3)])


def _merge(
    geometry: Geometry,
    with_intensity: bool,
    offsets: np.ndarray | None,
    lut: np.ndarray | None,
    *parts: tuple[np.ndarray, np.ndarray],
) -> pd.DataFrame:
    """Merge per-block partial sums by final id into the Points table."""
    ids = np.concatenate([np.empty(0, np.int64)] + [p[0] for p in parts])
    sums = np.concatenate([np.empty((0, _SUMS))] + [p[1] for p in parts])
    if lut is not None and offsets is not None:
        block_of = np.repeat(np.arange(len(parts)), [len(p[0]) for p in parts])
        ids = lut[ids + offsets[block_of]]
    final, inverse = np.unique(ids, return_inverse=True)
    total = np.zeros((final.size, _SUMS))
    for c in range(_SUMS):
        total[:, c] = np.bincount(inverse, weights=sums[:, c], minlength=final.size)
    n = total[:, 0]
    centre = total[:, 1:4] / n[:, None] if final.size else np.empty((0, 3))
    um = geometry.to_um(centre)
    voxel_um3 = float(np.prod(geometry.scale))
    frame = pd.DataFrame(
        {
            "label": final.astype(np.int64),
            "z": centre[:, 0],
            "y": centre[:, 1],
            "x": centre[:, 2],
            "z_um": um[:, 0],
            "y_um": um[:, 1],
            "x_um": um[:, 2],
            "volume_voxels": n.astype(np.int64),
            "volume_um3": n * voxel_um3,
        }
    )
    if with_intensity:
        frame["mean_intensity"] = total[:, 4] / np.maximum(n, 1)
    return frame


def object_table(labels: xr.DataArray, image: xr.DataArray | None = None) -> Table:
    """Points table of the objects in ``labels`` (lazy)."""
    geometry = Geometry.of(labels)
    parts: BlockLabels | None = labels.attrs.get(BLOCK_LABELS_ATTR)
    source = parts.local if parts is not None else labels.data
    img = image.data.rechunk(source.chunks) if image is not None else None
    blocks = source.to_delayed().ravel()
    img_blocks = img.to_delayed().ravel() if img is not None else [None] * len(blocks)
    block_ids = list(np.ndindex(*source.numblocks))
    partial = [
        dask.delayed(_partial_sums, pure=True)(b, i, _block_starts(source.chunks, bid))
        for b, i, bid in zip(blocks, img_blocks, block_ids)
    ]
    offsets = parts.offsets if parts is not None else None
    lut = parts.lut if parts is not None else None
    frame = dask.delayed(_merge, pure=True)(geometry, image is not None, offsets, lut, *partial)
    return Table(frame, geometry)


@op(
    "centroids",
    version=1,
    inputs={"labels": PortType.Labels, "image": PortType.Image},
    optional=("image",),
    output=PortType.Points,
)
def centroids(labels: xr.DataArray, image: xr.DataArray | None = None) -> Table:
    """Centre of mass, size and (with ``image``) mean intensity of every object.

    Parameters
    ----------
    labels : (Z, Y, X) DataArray of int
        Instance ids, 0 = background.
    image : (Z, Y, X) DataArray of float32, optional
        Brightness for the ``mean_intensity`` feature.

    Returns
    -------
    points : Table
        One row per object: ``label``, ``z, y, x`` (voxels), ``z_um, y_um, x_um``,
        ``volume_voxels``, ``volume_um3`` [, ``mean_intensity``]; geometric centres
        (unweighted), equal to ``scipy.ndimage.center_of_mass`` of each object.
    """
    return object_table(labels, image)


__all__ = ["centroids", "object_table", "POINT_COLUMNS"]
