"""Points or Labels → BlockCounts and Density; Points → Points size filter."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.delayed import Delayed

from cvplgraph.errors import OpError
from cvplgraph.ops.measure import object_table
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import BlockCounts, Geometry, Table, grid_shape, per_part, tree_sum, wrap


def block_problem(block: tuple[int, ...]) -> str | None:
    """What a block size must be, or None when it is fine."""
    if len(block) != 3 or min(block) < 1:
        return "three positive integers (z, y, x)"
    return None


def _weights(frame: pd.DataFrame, min_voxels: int, typical_voxels: float) -> tuple[pd.DataFrame, np.ndarray]:
    """Objects kept by the size filter and how many cells each counts for."""
    volume = frame["volume_voxels"].to_numpy() if "volume_voxels" in frame else np.ones(len(frame))
    keep = volume >= min_voxels
    frame, volume = frame[keep], volume[keep]
    if typical_voxels > 0:
        return frame, np.maximum(1, np.rint(volume / typical_voxels)).astype(np.int64)
    return frame, np.ones(len(frame), dtype=np.int64)


def _count_per_block(
    frame: pd.DataFrame, block: tuple[int, int, int], grid: tuple[int, int, int], min_voxels: int, typical: float
) -> np.ndarray:
    frame, weight = _weights(frame, min_voxels, typical)
    counts = np.zeros(grid, dtype=np.int64)
    if len(frame):
        cell = np.floor(frame[["z", "y", "x"]].to_numpy() + 0.5).astype(np.int64) // np.asarray(block)
        cell = np.clip(cell, 0, np.asarray(grid) - 1)
        np.add.at(counts, tuple(cell.T), weight)
    return counts


def _add(*counts: np.ndarray) -> np.ndarray:
    return np.sum(counts, axis=0)


def _block_counts(
    table: Table, block: tuple[int, int, int], grid: tuple[int, int, int], min_voxels: int, typical: float
) -> Delayed:
    """Counts per block of every partition of ``table``, added up in a tree (no task holds the whole table)."""
    return tree_sum(per_part(_count_per_block, table.parts, block, grid, min_voxels, typical), _add)


def _as_table(objects: Table | xr.DataArray) -> Table:
    return objects if isinstance(objects, Table) else object_table(objects)


@op(
    "count",
    version=2,
    inputs={"objects": (PortType.Points, PortType.Labels)},
    output=PortType.BlockCounts,
    checks={"block": block_problem, "min_voxels": lambda v: None if v >= 0 else "an integer ≥ 0"},
    cost="one pass over the points table",
)
def count(
    objects: Table | xr.DataArray,
    *,
    block: tuple[int, ...] = (128, 128, 128),
    min_voxels: int = 0,
    typical_voxels: float = 0.0,
) -> BlockCounts:
    """Count objects in total and per block of a regular grid.

    Parameters
    ----------
    objects : Points table or (Z, Y, X) Labels
        Labels are reduced to their objects' centroids first, so an object cut
        by block faces counts once.
    block : (3,) ints
        Grid block size in voxels (z, y, x); each object counts in the block
        holding its centroid (rounded to the nearest voxel).
    min_voxels : int
        Objects smaller than this are not counted (debris, noise).
    typical_voxels : float
        Size-aware counting: when > 0, an object counts as
        ``max(1, round(volume / typical_voxels))`` cells, so a clump of three
        touching cells counts three. 0 counts every object once.

    Returns
    -------
    counts : BlockCounts
        Per-block counts; their sum is the total.
    """
    if problem := block_problem(block):
        raise OpError(f"block must be {problem}, got {list(block)}")
    table = _as_table(objects)
    size = (int(block[0]), int(block[1]), int(block[2]))
    grid = grid_shape(table.geometry.shape, size)
    counts = _block_counts(table, size, grid, min_voxels, typical_voxels)
    return BlockCounts(counts, size, table.geometry)


def _filter(frame: pd.DataFrame, min_voxels: int, max_voxels: int) -> pd.DataFrame:
    volume = frame["volume_voxels"]
    keep = (volume >= min_voxels) & ((volume <= max_voxels) if max_voxels > 0 else True)
    return frame[keep].reset_index(drop=True)


@op(
    "filter_size",
    version=1,
    inputs={"points": PortType.Points},
    output=PortType.Points,
    cost="one pass over the points table",
)
def filter_size(points: Table, *, min_voxels: int = 0, max_voxels: int = 0) -> Table:
    """Keep objects whose ``volume_voxels`` lies in [min_voxels, max_voxels] (0 = no upper bound).

    Parameters
    ----------
    points : Points table with a ``volume_voxels`` column
    min_voxels, max_voxels : int

    Returns
    -------
    points : Table
        The same columns, fewer rows.
    """
    return points.map_parts(_filter, min_voxels, max_voxels)


def _spacing_problem(value: float) -> str | None:
    return None if value > 0 else "a number > 0 (µm)"


def _density(counts: np.ndarray, shape: tuple[int, ...], block: tuple[int, ...], voxel_mm3: float) -> np.ndarray:
    """Counts divided by each block's volume in mm³ (partial blocks at the far ends are smaller)."""
    extents = []
    for axis, (n, b) in enumerate(zip(shape, block)):
        starts = np.arange(counts.shape[axis]) * b
        extents.append(np.minimum(starts + b, n) - starts)
    voxels = extents[0][:, None, None] * extents[1][None, :, None] * extents[2][None, None, :]
    return (counts / (voxels * voxel_mm3)).astype(np.float32)


@op(
    "density",
    version=1,
    inputs={"objects": (PortType.Points, PortType.Labels)},
    output=PortType.Density,
    checks={"spacing": _spacing_problem},
    cost="one pass over the points table",
)
def density(objects: Table | xr.DataArray, *, spacing: float = 100.0, typical_voxels: float = 0.0) -> xr.DataArray:
    """Cells per mm³ on a grid of about ``spacing`` µm, with physical coordinates.

    Parameters
    ----------
    objects : Points table or (Z, Y, X) Labels
    spacing : float
        Grid step in µm; rounded per axis to a whole number of image voxels.
    typical_voxels : float
        As for ``count``: when > 0, large objects count as several cells.

    Returns
    -------
    density : (Z', Y', X') DataArray of float32
        Cells per mm³ in each grid block, placed at the block centres.
    """
    table = _as_table(objects)
    g = table.geometry
    block = tuple(max(1, round(spacing / s)) for s in g.scale)
    grid = grid_shape(g.shape, block)
    counts = _block_counts(table, block, grid, 0, typical_voxels)  # type: ignore[arg-type]
    voxel_mm3 = float(np.prod(g.scale)) * 1e-9
    values = dask.delayed(_density, pure=True)(counts, g.shape, block, voxel_mm3)
    data = da.from_delayed(values, shape=grid, dtype=np.float32)
    scale = tuple(s * b for s, b in zip(g.scale, block))
    translation = tuple(t + s * (b - 1) / 2 for t, s, b in zip(g.translation, g.scale, block))
    return wrap(data, Geometry(grid, scale, translation))  # type: ignore[arg-type]
