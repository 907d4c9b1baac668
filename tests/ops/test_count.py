"""Counting ops: plain, size-aware and filtered counts, and densities, against hand-made truth."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from cvplgraph import ops
from cvplgraph.values import Geometry, Table, wrap


def table(rows: list[tuple[float, float, float, int]], geometry: Geometry) -> Table:
    frame = pd.DataFrame(rows, columns=["z", "y", "x", "volume_voxels"])
    return Table(dask.delayed(frame), geometry)


GEOMETRY = Geometry((20, 40, 40), (5.0, 2.0, 2.0), (0.0, 100.0, 0.0))


def test_size_aware_count_and_minimum_size() -> None:
    points = table([(1, 1, 1, 100), (2, 2, 2, 310), (15, 30, 30, 95), (15, 35, 35, 4)], GEOMETRY)
    plain = ops.count(points, block=(10, 20, 20)).compute(scheduler="sync")
    assert plain.sum() == 4 and plain[0, 0, 0] == 2 and plain[1, 1, 1] == 2
    sized = ops.count(points, block=(10, 20, 20), typical_voxels=100.0).compute(scheduler="sync")
    assert sized[0, 0, 0] == 1 + 3 and sized[1, 1, 1] == 1 + 1  # 310 voxels count as three cells
    filtered = ops.count(points, block=(10, 20, 20), min_voxels=10).compute(scheduler="sync")
    assert filtered.sum() == 3


def test_filter_size() -> None:
    points = table([(1, 1, 1, 5), (2, 2, 2, 50), (3, 3, 3, 500)], GEOMETRY)
    kept = ops.filter_size(points, min_voxels=10, max_voxels=100).compute(scheduler="sync")
    assert kept["volume_voxels"].tolist() == [50]
    assert ops.filter_size(points, min_voxels=10).compute(scheduler="sync")["volume_voxels"].tolist() == [50, 500]


def test_density_per_mm3_with_physical_coordinates() -> None:
    # grid of 50 µm: 10 voxels in z (5 µm), 25 in y and x (2 µm) → 2 × 2 × 2 blocks, the last ones partial
    rows = [(1, 1, 1, 1)] * 6 + [(12, 30, 30, 1)] * 3
    dens = ops.density(table(rows, GEOMETRY), spacing=50.0)
    values = dens.values
    assert values.shape == (2, 2, 2)
    full_mm3 = 10 * 25 * 25 * 5 * 2 * 2 * 1e-9
    partial_mm3 = 10 * 15 * 15 * 5 * 2 * 2 * 1e-9
    np.testing.assert_allclose(values[0, 0, 0], 6 / full_mm3, rtol=1e-6)
    np.testing.assert_allclose(values[1, 1, 1], 3 / partial_mm3, rtol=1e-6)
    assert values.sum() == pytest.approx(6 / full_mm3 + 3 / partial_mm3, rel=1e-6)
    assert dens.attrs["scale"] == [50.0, 50.0, 50.0]
    assert dens.attrs["translation"] == [22.5, 124.0, 24.0]  # centre of the first block


def test_density_from_labels_equals_from_points() -> None:
    mask = np.zeros((20, 40, 40), np.uint8)
    mask[2:4, 2:4, 2:4] = mask[12:14, 30:32, 30:32] = mask[15, 5, 35] = 1
    labels = ops.connected_components(wrap(da.from_array(mask, chunks=(7, 13, 40)), GEOMETRY))
    a = ops.density(labels, spacing=50.0).values
    b = ops.density(ops.centroids(labels), spacing=50.0).values
    np.testing.assert_array_equal(a, b)
    assert (a > 0).sum() == 3
