"""Points or Labels → BlockCounts: how many objects, in total and per block."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import OpError
from ..registry import op
from ..types import PortType
from ..values import BlockCounts, Table, grid_shape
from .measure import object_table


def _count_per_block(frame: pd.DataFrame, block: tuple[int, int, int], grid: tuple[int, int, int]) -> np.ndarray:
    counts = np.zeros(grid, dtype=np.int64)
    if len(frame):
        cell = np.floor(frame[["z", "y", "x"]].to_numpy() + 0.5).astype(np.int64) // np.asarray(block)
        cell = np.clip(cell, 0, np.asarray(grid) - 1)
        np.add.at(counts, tuple(cell.T), 1)
    return counts


def block_problem(block: tuple[int, ...]) -> str | None:
    """What a block size must be, or None when it is fine."""
    if len(block) != 3 or min(block) < 1:
        return "three positive integers (z, y, x)"
    return None


@op(
    "count",
    version=1,
    inputs={"objects": (PortType.Points, PortType.Labels)},
    output=PortType.BlockCounts,
    checks={"block": block_problem},
)
def count(objects: Table | xr.DataArray, *, block: tuple[int, ...] = (128, 128, 128)) -> BlockCounts:
    """Count objects in total and per block of a regular grid.

    Parameters
    ----------
    objects : Points table or (Z, Y, X) Labels
        Labels are reduced to their objects' centroids first, so an object cut
        by block faces counts once.
    block : (3,) ints
        Grid block size in voxels (z, y, x); each object counts in the block
        holding its centroid (rounded to the nearest voxel).

    Returns
    -------
    counts : BlockCounts
        Per-block counts; their sum is the total.
    """
    if problem := block_problem(block):
        raise OpError(f"block must be {problem}, got {list(block)}")
    table = objects if isinstance(objects, Table) else object_table(objects)
    size = (int(block[0]), int(block[1]), int(block[2]))
    counts = dask.delayed(_count_per_block, pure=True)(table.frame, size, grid_shape(table.geometry.shape, size))
    return BlockCounts(counts, size, table.geometry)
