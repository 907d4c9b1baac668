"""The blocks of a dask array as (index, first voxel, stop voxel) in whole-array coordinates."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def block_cores(chunks: tuple[tuple[int, ...], ...]) -> Iterator[tuple[tuple[int, ...], np.ndarray, np.ndarray]]:
    """Each block's index and its core: the voxels [start, stop) it owns, per axis."""
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]
    for index in np.ndindex(*(len(c) for c in chunks)):
        start = np.array([starts[a][i] for a, i in enumerate(index)])
        yield index, start, start + np.array([chunks[a][i] for a, i in enumerate(index)])
