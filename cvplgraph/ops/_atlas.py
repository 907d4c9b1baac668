"""Atlas kernels of the region ops: which region holds each point, and how many atlas
voxels each region has inside the image, computed block by block on the atlas grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.delayed import Delayed

from cvplgraph.values import OUTSIDE_ATLAS, Atlas, Geometry, per_part


def ancestors(structures: pd.DataFrame) -> pd.DataFrame:
    """Pairs (ancestor, region) for every region and each id on its path, itself included."""
    pairs = [(a, int(i)) for i, p in zip(structures["id"], structures["path"]) for a in p]
    return pd.DataFrame(pairs, columns=["ancestor", "id"])


# --- lookups -----------------------------------------------------------------------------------


def block_bounds(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    """Per axis, the first voxel of every block and the end of the last."""
    return [np.concatenate([[0], np.cumsum(c)]) for c in chunks]


def point_um(frame: pd.DataFrame) -> np.ndarray:
    """The (N, 3) µm coordinates of a table's points."""
    return frame[["z_um", "y_um", "x_um"]].to_numpy(dtype=np.float64)


def lookup_parts(func: Callable[..., Any], parts: Sequence[Delayed], atlas: Atlas, *args: Any) -> list[Delayed]:
    """``func(frame, um, (region, hemisphere), *args)`` for every partition of a table, lazily: ``um`` the
    partition's point coordinates, region the atlas id under each (−1 outside the atlas volume), hemisphere its
    code (0 = none); ``args`` hold no dask collection.

    One task per partition: it sorts the points by atlas block and each atlas block answers for its own points
    (a block without points is not looked at). *Decision:* one task per partition, not one per atlas block nor
    a chain of coordinates → lookup → use: a whole brain's table is thousands of partitions, and tasks cost more
    in scheduling (≈ 2 ms a task) than the lookups; the atlas blocks a worker reads stay in its memory for every
    partition either way. The tasks are one graph layer (:func:`~cvplgraph.values.per_part`), the atlas blocks
    named by key (``dask.delayed`` calls per partition, each unpacking the atlas's block list, cost 20 ms a
    partition).
    """
    blocks = list(atlas.annotation.data.to_delayed().ravel())
    hemis = list(atlas.hemispheres.data.to_delayed().ravel()) if atlas.hemispheres is not None else []
    annotation = [b.key for b in blocks]
    hemispheres = [b.key for b in hemis] if hemis else None
    bounds = block_bounds(atlas.annotation.data.chunks)
    return per_part(_lookup_then, parts, func, atlas.geometry, bounds, annotation, hemispheres, *args,
                    depends=[*blocks, *hemis])  # fmt: skip


def _lookup_then(
    frame: pd.DataFrame, func: Callable[..., Any], geometry: Geometry, bounds: list[np.ndarray],
    annotation: list[np.ndarray], hemispheres: list[np.ndarray] | None, *args: Any,
) -> Any:  # fmt: skip
    um = point_um(frame)
    return func(frame, um, _lookup(um, geometry, bounds, annotation, hemispheres), *args)


def _lookup(
    um: np.ndarray, geometry: Geometry, bounds: list[np.ndarray], annotation: list[np.ndarray],
    hemispheres: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    part = _partition(um, geometry, bounds)
    region = np.full(part.pop("n"), OUTSIDE_ATLAS, dtype=np.int64)
    hemi = np.zeros(len(region), dtype=np.uint8)
    for k, (rows, local) in part.items():
        where = tuple(local.T)
        region[rows] = np.asarray(annotation[k])[where]
        if hemispheres is not None:
            hemi[rows] = np.asarray(hemispheres[k])[where]
    return region, hemi


def _partition(um: np.ndarray, geometry: Geometry, bounds: list[np.ndarray]) -> dict[Any, Any]:
    """Points inside the atlas grouped by block: ``{block number: (rows, local voxel index)}``."""
    index, inside = geometry.to_voxel(np.asarray(um, dtype=np.float64).reshape(-1, 3))
    rows = np.flatnonzero(inside)
    grid = tuple(len(b) - 1 for b in bounds)
    blocks = [np.searchsorted(b, index[rows, a], side="right") - 1 for a, b in enumerate(bounds)]
    flat = np.ravel_multi_index(tuple(blocks), grid) if rows.size else np.empty(0, np.int64)
    order = np.argsort(flat, kind="stable")
    out: dict[Any, Any] = {"n": len(index)}
    for group in np.split(order, np.flatnonzero(np.diff(flat[order])) + 1) if rows.size else []:
        b = np.unravel_index(int(flat[group[0]]), grid)
        start = np.array([bounds[a][b[a]] for a in range(3)])
        out[int(flat[group[0]])] = (rows[group], index[rows[group]] - start)
    return out


def voxel_counts(atlas: Atlas, within: Geometry | None = None) -> Any:
    """Lazy table (id, hemisphere code, voxels) of every region and hemisphere, exact, block by block.

    With ``within`` (an image grid), only atlas voxels whose centre lies inside
    that grid's extent count: the part of each region that was imaged.
    """
    annotation = atlas.annotation.data
    hemi_blocks = atlas.hemispheres.data.to_delayed().ravel() if atlas.hemispheres is not None else None
    bounds = block_bounds(annotation.chunks)
    grid = tuple(len(b) - 1 for b in bounds)
    parts = []
    for k, block in enumerate(annotation.to_delayed().ravel()):
        keep = None
        if within is not None:
            b = np.unravel_index(k, grid)
            keep = [_inside_axis(atlas.geometry, within, a, int(bounds[a][b[a]]), int(bounds[a][b[a] + 1]))
                    for a in range(3)]  # fmt: skip
        parts.append(dask.delayed(_count_block)(block, hemi_blocks[k] if hemi_blocks is not None else None, keep))
    return dask.delayed(_merge_counts)(*parts)


def _inside_axis(atlas: Geometry, image: Geometry, axis: int, start: int, stop: int) -> np.ndarray:
    """Which atlas voxels ``start..stop`` along ``axis`` have their centre inside the image's extent."""
    centres = atlas.translation[axis] + atlas.scale[axis] * np.arange(start, stop)
    low = image.translation[axis] - image.scale[axis] / 2
    high = image.translation[axis] + image.scale[axis] * (image.shape[axis] - 0.5)
    return (centres >= low) & (centres < high)


def _count_block(
    ids: np.ndarray, hemi: np.ndarray | None, keep: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    keys = ids.astype(np.uint64) * np.uint64(4)
    if hemi is not None:
        keys += hemi.astype(np.uint64)
    if keep is not None:
        keys = keys[np.ix_(*keep)]
    return np.unique(keys, return_counts=True)


def _merge_counts(*parts: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    keys = np.concatenate([np.empty(0, np.uint64)] + [p[0] for p in parts])
    counts = np.concatenate([np.empty(0, np.int64)] + [p[1] for p in parts])
    unique, inverse = np.unique(keys, return_inverse=True)
    total = np.bincount(inverse, weights=counts, minlength=unique.size).astype(np.int64)
    return pd.DataFrame(
        {"id": (unique // np.uint64(4)).astype(np.int64), "hemi": (unique % np.uint64(4)).astype(np.int64),
         "voxels": total}
    )  # fmt: skip
