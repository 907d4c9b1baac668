"""Labels → Points: per-object centroids and features, exact across blocks.

Every block contributes partial statistics per id (voxel count, Σz, Σy, Σx,
Σintensity, bounding box, maximum intensity); the pieces of an object cut by
block faces are merged by id, so
the centroid equals ``scipy.ndimage.center_of_mass`` on the whole array.
When the labels come from ``connected_components`` in the same graph the sums
are taken from its per-block labels and merged through its lookup table, so
the relabelled volume is never built.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from cvplgraph.hooks import checkpoint_blocks
from cvplgraph.kernels import Reduce, graph_sources, keys_token
from cvplgraph.ops.components import BLOCK_LABELS_ATTR, BlockLabels
from cvplgraph.ops.lookup import big_objects, final_range, lut_range
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import TREE_FANIN, Geometry, Table, block_start

#: Columns of every Points table, in order; features follow.
POINT_COLUMNS = ["label", "z", "y", "x", "z_um", "y_um", "x_um", "volume_voxels", "volume_um3"]
#: Partial-statistics columns per id and block, and how pieces of one object combine.
PARTS = {
    "n": "sum", "sz": "sum", "sy": "sum", "sx": "sum", "si": "sum",
    "z_min": "min", "y_min": "min", "x_min": "min",
    "z_max": "max", "y_max": "max", "x_max": "max", "i_max": "max",
}  # fmt: skip


def _partial_stats(
    labels: np.ndarray, image: np.ndarray | None, starts: np.ndarray, foreground: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ids present in the block and one row of :data:`PARTS` statistics per id (global coordinates).

    ``foreground``: the flat indices of the block's non-zero labels, ascending, when the caller has them
    (a fused chain takes them from the mask, 4× fewer bytes to scan than int32 labels)."""
    flat = labels.ravel()
    idx = np.flatnonzero(labels != 0) if foreground is None else foreground
    if idx.size == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, len(PARTS)))
    order = np.argsort(flat[idx], kind="stable")
    idx = idx[order]
    sorted_ids = flat[idx]
    first = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    coords = np.unravel_index(idx, labels.shape)
    values = image.ravel()[idx].astype(np.float64) if image is not None else np.zeros(idx.size)
    stats = np.empty((first.size, len(PARTS)))
    stats[:, 0] = np.diff(np.r_[first, idx.size])
    for a in range(3):
        c = coords[a] + int(starts[a])
        stats[:, 1 + a] = np.add.reduceat(c.astype(np.float64), first)
        stats[:, 5 + a] = np.minimum.reduceat(c, first)
        stats[:, 8 + a] = np.maximum.reduceat(c, first)
    stats[:, 4] = np.add.reduceat(values, first)
    stats[:, 11] = np.maximum.reduceat(values, first)
    return sorted_ids[first].astype(np.int64), stats


def _stats_block(
    labels: np.ndarray, foreground: np.ndarray, image: np.ndarray | None = None, *, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The fused form of the per-block statistics (the :class:`~cvplgraph.kernels.Reduce` block)."""
    return _partial_stats(labels, image, starts, foreground)


def _stats_finish(
    blocks: list[Delayed], refs: list[Any], labels: xr.DataArray, image: xr.DataArray | None = None
) -> Table:
    """The Points table from fused per-block statistics (``refs`` pick each out of ``blocks``), merged through
    the pass's lookup table."""
    parts: BlockLabels = labels.attrs[BLOCK_LABELS_ATTR]
    return grouped_table(Geometry.of(labels), parts.local.chunks, image is not None, refs, blocks, parts)


#: Block rows (along z) per partition of a Points table: a partition is a slab of whole block rows.
ROWS_PER_PARTITION = 1


def partitioned_table(
    geometry: Geometry,
    chunks: tuple[tuple[int, ...], ...],
    with_intensity: bool,
    refs: list[Any],
    sources: list[Delayed],
    parts: BlockLabels | None,
) -> Table:
    """The Points table of per-block partial statistics (``refs``: how a task names each block's, C order of the
    block grid of ``chunks``; ``sources``: the Delayed objects they come from), in partitions: one per slab of
    :data:`ROWS_PER_PARTITION` block rows along z.

    Every slab merges its blocks' pieces by final id (through its slice of the lookup table, when ``parts`` has
    one). An object whose merged piece reaches the slab's top or bottom face may continue in the next slab: its
    pieces are handed on, slab after slab, and merged where the object ends, into that slab's partition. No
    task holds more than one slab's objects and the pieces on one plane between slabs; each object is in one
    partition, whole; a partition's rows are sorted by label. Sums are exact whatever the grouping (integer
    sums; the intensity sum correctly rounded with ``math.fsum``), so the table does not depend on the
    partitioning."""
    grid = tuple(len(c) for c in chunks)
    per_row = grid[1] * grid[2]
    z_edges = np.cumsum((0, *chunks[0])).tolist()
    rows = ROWS_PER_PARTITION
    slabs = [(r, min(r + rows, grid[0])) for r in range(0, grid[0], rows)]
    lut_key = parts.lut.key if parts is not None else None
    total_key = parts.total.key if parts is not None else None
    offsets_key = parts.offsets.key if parts is not None else None
    token = tokenize(keys_token(refs), lut_key, with_intensity, rows, geometry)
    names = {n: f"points-{n}-{token}"
             for n in ("lut", "merge", "complete", "open", "carry", "ended", "onward", "part", "made")}  # fmt: skip
    dsk: dict[Any, Any] = {}
    last = len(slabs) - 1
    for s, (r0, r1) in enumerate(slabs):
        b0, b1 = r0 * per_row, r1 * per_row
        faces = (z_edges[r0] if s > 0 else None, z_edges[r1] - 1 if s < last else None)
        lut = None
        if parts is not None:
            lut = (names["lut"], s)
            dsk[lut] = (_lut_slice, lut_key, offsets_key, total_key, b0, b1)
        # at most MERGES_AHEAD slabs are merged ahead of the partitions made: slab s waits for partition s - that
        # many (a small task saying it exists), or a worker would merge every slab it was given before anything
        # downstream took a partition, and hold them all (10⁸ objects: every partition of the table at once)
        ahead = (names["made"], s - MERGES_AHEAD) if s >= MERGES_AHEAD else None
        dsk[(names["merge"], s)] = (_merge_slab, ahead, lut, faces, *refs[b0:b1])
        dsk[(names["complete"], s)] = (operator.getitem, (names["merge"], s), 0)
        dsk[(names["open"], s)] = (operator.getitem, (names["merge"], s), 1)
        before = (names["onward"], s - 1) if s > 0 else None
        dsk[(names["carry"], s)] = (_hand_on, before, (names["open"], s), faces[1])
        dsk[(names["ended"], s)] = (operator.getitem, (names["carry"], s), 0)
        dsk[(names["onward"], s)] = (operator.getitem, (names["carry"], s), 1)
        dsk[(names["part"], s)] = (_partition_frame, geometry, with_intensity, (names["complete"], s),
                                   (names["ended"], s))  # fmt: skip
        dsk[(names["made"], s)] = (len, (names["part"], s))
    deps = [*sources, *((parts.offsets, parts.lut, parts.total) if parts is not None else ())]
    graph = HighLevelGraph.from_collections(names["part"], dsk, dependencies=graph_sources(deps))
    # on a cluster, the work downstream of the partitions made goes before the next slab's merge (and slabs merge in
    # order): every partition is then taken, written and let go soon after it is made
    graph.layers[names["part"]].annotations = {"priority": functools.partial(_slab_priority,
                                                                             (names["merge"], names["lut"]))}
    return Table(tuple(Delayed((names["part"], s), graph, layer=names["part"]) for s in range(len(slabs))), geometry)


#: Blocks along x per partition of a Points table whose labels come from ``connected_components`` in the same
#: graph (:func:`grouped_table`); ``None``: one partition per slab of :data:`ROWS_PER_PARTITION` block rows, as
#: for labels stored with their final ids (:func:`partitioned_table`).
BLOCKS_PER_PARTITION: int | None = 8
#: Runs of blocks merged ahead of the partitions made (:func:`grouped_table`; :data:`MERGES_AHEAD` for slabs): a
#: run's merge waits for the partition this many runs before: loose enough that merges do not wait in turn on
#: each other's round trips through the scheduler, tight enough that a worker holds a few runs' objects, not
#: every partition's.
RUNS_AHEAD = 16


def grouped_table(
    geometry: Geometry,
    chunks: tuple[tuple[int, ...], ...],
    with_intensity: bool,
    refs: list[Any],
    sources: list[Delayed],
    parts: BlockLabels,
) -> Table:
    """The Points table of per-block partial statistics of ``connected_components``' block labels, in partitions of
    at most :data:`BLOCKS_PER_PARTITION` blocks along x: no task holds more than a few dozen blocks' statistics,
    whatever the volume's cross-section (``refs``, ``sources``: as for :func:`partitioned_table`).

    An object belongs to its owner, the first block (C order) holding a piece of it. An object spanning at most
    two blocks along each axis has its pieces in its owner and the 13 blocks after it among the owner's 26
    neighbours: a partition merges its own blocks' pieces and those of the blocks just after them (the next
    block along x, the row after along y, the three rows of the next slab) and keeps the objects its blocks own.
    The objects spanning more (:func:`~cvplgraph.ops.lookup.big_objects`, from the lookup table; rare for
    cells) are left out of the merges: each run hands on its own blocks' pieces of them, gathered in a tree into
    one last partition (empty when there are none), where each is combined. Sums are exact whatever the
    grouping (as in :func:`partitioned_table`): the rows equal the table merged whole, bit for bit."""
    if BLOCKS_PER_PARTITION is None:
        return partitioned_table(geometry, chunks, with_intensity, refs, sources, parts)
    grid = tuple(len(c) for c in chunks)
    step = max(1, int(BLOCKS_PER_PARTITION))
    token = tokenize(keys_token(refs), parts.lut.key, with_intensity, step, geometry)
    names = {n: f"points-{n}-{token}" for n in ("big", "merge", "loose", "gather", "part", "made")}
    dsk: dict[Any, Any] = {names["big"]: (big_objects, parts.lut.key, parts.offsets.key, grid)}
    runs = [(z, y, x0, min(x0 + step, grid[2])) for z in range(grid[0]) for y in range(grid[1])
            for x0 in range(0, grid[2], step)]  # fmt: skip
    for g, (z, y, x0, x1) in enumerate(runs):
        row = (z * grid[1] + y) * grid[2]
        own = list(range(row + x0, row + x1))
        xs = range(max(x0 - 1, 0), min(x1 + 1, grid[2]))  # one block wider each side, within the volume
        after = [(z, y + 1), *((z + 1, y + dy) for dy in (-1, 0, 1))]
        window = [row + x1] if x1 < grid[2] else []
        window += [(zz * grid[1] + yy) * grid[2] + x for zz, yy in after if zz < grid[0] and 0 <= yy < grid[1]
                   for x in xs]  # fmt: skip
        flats = (*own, *window)
        ahead = (names["made"], g - RUNS_AHEAD) if g >= RUNS_AHEAD else None
        dsk[(names["merge"], g)] = (_merge_group, ahead, parts.lut.key, parts.offsets.key, parts.total.key,
                                    names["big"], flats, len(own), *(refs[f] for f in flats))  # fmt: skip
        dsk[(names["loose"], g)] = (operator.getitem, (names["merge"], g), 1)
        dsk[(names["part"], g)] = (_group_frame, geometry, with_intensity, (names["merge"], g))
        dsk[(names["made"], g)] = (len, (names["part"], g))
    # the big objects' pieces, gathered in a tree (nothing waits for it but the last partition, theirs)
    level: list[tuple[Any, ...]] = [(names["loose"], g) for g in range(len(runs))]
    depth = 0
    while len(level) > 1:
        depth += 1
        keys = [(names["gather"], depth, i) for i in range(0, len(level), TREE_FANIN)]
        dsk.update({k: (_gather_pieces, *level[k[2] : k[2] + TREE_FANIN]) for k in keys})
        level = keys
    dsk[(names["part"], len(runs))] = (_big_frame, geometry, with_intensity, level[0])
    deps = [*sources, parts.offsets, parts.lut, parts.total]
    graph = HighLevelGraph.from_collections(names["part"], dsk, dependencies=graph_sources(deps))
    graph.layers[names["part"]].annotations = {"priority": functools.partial(_slab_priority, (names["merge"],))}
    return Table(tuple(Delayed((names["part"], g), graph, layer=names["part"]) for g in range(len(runs) + 1)), geometry)


def _merge_group(
    ahead: int | None, lut: np.ndarray, offsets: np.ndarray, total: int, big: np.ndarray, flats: tuple[int, ...],
    own: int, *blocks: Pieces,
) -> tuple[dict[str, np.ndarray], Pieces]:  # fmt: skip
    """A partition's objects (once ``ahead`` exists, :data:`RUNS_AHEAD`): the pieces of blocks ``flats``
    (its ``own`` blocks first, then the blocks after them) of the objects its blocks own, combined, less the big
    objects; and its own blocks' pieces of the big objects (for the last partition)."""
    ends = [int(offsets[f + 1]) if f + 1 < len(offsets) else int(total) for f in flats]
    lo, hi = final_range(lut, int(offsets[flats[0]]) + 1, ends[own - 1] + 1)
    kept_ids, kept_stats, big_ids, big_stats = [], [], [], []
    for k, (f, (ids, stats)) in enumerate(zip(flats, blocks)):
        if not len(ids):
            continue
        start = int(offsets[f])
        final = lut_range(lut, start, ends[k] + 1)[ids].astype(np.int64)
        is_big = np.isin(final, big[0], assume_unique=False)
        mine = (final >= lo) & (final < hi) & ~is_big
        kept_ids.append(final[mine])
        kept_stats.append(stats[mine])
        if k < own and is_big.any():
            big_ids.append(final[is_big])
            big_stats.append(stats[is_big])
    empty = (np.empty(0, np.int64), np.empty((0, len(PARTS))))
    inside = _combine(np.concatenate([empty[0], *kept_ids]), np.concatenate([empty[1], *kept_stats]))
    return inside, (np.concatenate([empty[0], *big_ids]), np.concatenate([empty[1], *big_stats]))


def _gather_pieces(*pieces: Pieces) -> Pieces:
    """Pieces of big objects put together, not combined (an object's intensity pieces are added once, all of
    them, to be exact: :func:`_combine`)."""
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def _group_frame(
    geometry: Geometry, with_intensity: bool, merged: tuple[dict[str, np.ndarray], Pieces]
) -> pd.DataFrame:
    """A partition of :func:`grouped_table`: the objects its blocks own, less the big ones, sorted by label."""
    return _frame(geometry, with_intensity, merged[0])


def _big_frame(geometry: Geometry, with_intensity: bool, pieces: Pieces) -> pd.DataFrame:
    """The last partition of :func:`grouped_table`: the big objects, each combined from all its pieces."""
    return _frame(geometry, with_intensity, _combine(*pieces))


def _slab_priority(merges: tuple[str, ...], key: tuple[str, int]) -> int:
    """A scheduling priority (distributed runs ready tasks of higher priority first, default 0): partition ``s``'s
    merge tasks (the layers ``merges``: a slab's merge and its share of the lookup table, or a run's merge) after
    every task downstream of the partitions already merged, partitions in order."""
    return -1 - int(key[1]) if key[0] in merges else 0


#: Pieces of objects: ids and one row of :data:`PARTS` statistics each.
Pieces = tuple[np.ndarray, np.ndarray]


def _lut_slice(lut: np.ndarray, offsets: np.ndarray, total: int, b0: int, b1: int) -> tuple[np.ndarray, np.ndarray]:
    """The offsets of blocks ``b0..b1`` and the final ids of their offset ids (a slab's share of the lookup
    table), indexed from the slab's first offset."""
    first = int(offsets[b0])
    end = int(offsets[b1]) if b1 < len(offsets) else int(total)
    return offsets[b0:b1] - first, lut_range(lut, first, end + 1)


#: Slabs merged ahead of the partitions made (see :func:`partitioned_table`): memory for that many slabs' objects,
#: and that many merges at once.
MERGES_AHEAD = 2


def _merge_slab(
    ahead: int | None,
    lut: tuple[np.ndarray, np.ndarray] | None,
    faces: tuple[int | None, int | None],
    *blocks: Pieces,
) -> tuple[dict[str, np.ndarray], Pieces]:
    """A slab's pieces merged by final id (once ``ahead``, the partition :data:`MERGES_AHEAD` slabs before, exists):
    the objects within it (combined) and the pieces of those that reach its bottom or top face (``faces``: the z
    of each, None where no slab lies beyond)."""
    ids = np.concatenate([np.empty(0, np.int64)] + [b[0] for b in blocks])
    stats = np.concatenate([np.empty((0, len(PARTS)))] + [b[1] for b in blocks])
    if lut is not None:
        offsets, table = lut
        block_of = np.repeat(np.arange(len(blocks)), [len(b[0]) for b in blocks])
        ids = table[ids + offsets[block_of]].astype(np.int64)
    total = _combine(ids, stats)
    bottom, top = faces
    reach = np.zeros(len(total["label"]), dtype=bool)
    if bottom is not None:
        reach |= total["z_min"] == bottom
    if top is not None:
        reach |= total["z_max"] == top
    inside = {k: v[~reach] for k, v in total.items()}
    loose = np.isin(ids, total["label"][reach])
    return inside, (ids[loose], stats[loose])


def _hand_on(before: Pieces | None, loose: Pieces, top: int | None) -> tuple[dict[str, np.ndarray], Pieces]:
    """The pieces handed on from the slabs below and this slab's loose pieces, merged: the objects that end in
    this slab (combined) and the pieces of those that reach its top face (handed on)."""
    ids, stats = loose
    if before is not None:
        ids, stats = np.concatenate([before[0], ids]), np.concatenate([before[1], stats])
    total = _combine(ids, stats)
    onward = total["z_max"] == top if top is not None else np.zeros(len(total["label"]), dtype=bool)
    ended = {k: v[~onward] for k, v in total.items()}
    kept = np.isin(ids, total["label"][onward])
    return ended, (ids[kept], stats[kept])


def _partition_frame(
    geometry: Geometry, with_intensity: bool, inside: dict[str, np.ndarray], ended: dict[str, np.ndarray]
) -> pd.DataFrame:
    """A slab's partition: the objects within it and those ending in it, sorted by label."""
    both = {k: np.concatenate([inside[k], ended[k]]) for k in inside}
    order = np.argsort(both["label"], kind="stable")
    return _frame(geometry, with_intensity, {k: v[order] for k, v in both.items()})


def _combine(ids: np.ndarray, stats: np.ndarray) -> dict[str, np.ndarray]:
    """The pieces of each id combined as :data:`PARTS` says, by ascending id (and ``label``: the ids).

    Exact in any order and any grouping of the pieces: voxel counts and coordinate sums are sums of
    integers, minima and maxima are exact (numpy's ``reduceat`` does them), and the intensity sum of an object
    in several pieces is ``math.fsum`` of its pieces, the correctly rounded sum. A table merged in partitions
    therefore equals the table merged whole, bit for bit."""
    order = np.argsort(ids, kind="stable")
    sorted_ids, sorted_stats = ids[order], stats[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]) if len(ids) else np.empty(0, np.int64)
    out: dict[str, np.ndarray] = {"label": sorted_ids[starts].astype(np.int64)}
    reduce = {"sum": np.add, "min": np.minimum, "max": np.maximum}
    for k, (part, how) in enumerate(PARTS.items()):
        if not len(ids):
            out[part] = stats[:0, k]
        elif part == "si":
            out[part] = _exact_sums(sorted_stats[:, k], starts)
        else:
            out[part] = reduce[how].reduceat(sorted_stats[:, k], starts)
    return out


def _exact_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per group of ``values`` (groups start at ``starts``), the correctly rounded sum: the value itself for a
    group of one, ``math.fsum`` for the rest (objects cut by block faces)."""
    sizes = np.diff(np.r_[starts, len(values)])
    out = values[starts].copy()
    for g in np.flatnonzero(sizes > 1).tolist():
        out[g] = math.fsum(values[starts[g] : starts[g] + sizes[g]].tolist())
    return out


def _frame(geometry: Geometry, with_intensity: bool, total: dict[str, np.ndarray]) -> pd.DataFrame:
    """The Points rows of combined statistics."""
    n = total["n"]
    centre = np.stack([total["sz"], total["sy"], total["sx"]], axis=1) / n[:, None] if len(n) else np.empty((0, 3))
    um = geometry.to_um(centre)
    frame = pd.DataFrame(
        {
            "label": total["label"],
            "z": centre[:, 0],
            "y": centre[:, 1],
            "x": centre[:, 2],
            "z_um": um[:, 0],
            "y_um": um[:, 1],
            "x_um": um[:, 2],
            "volume_voxels": n.astype(np.int64),
            "volume_um3": n * float(np.prod(geometry.scale)),
        }
    )
    for axis in "zyx":
        frame[f"bbox_{axis}_min"] = total[f"{axis}_min"].astype(np.int64)
        frame[f"bbox_{axis}_max"] = total[f"{axis}_max"].astype(np.int64)
    if with_intensity:
        frame["mean_intensity"] = total["si"] / np.maximum(n, 1)
        frame["max_intensity"] = total["i_max"]
    return frame


def object_table(labels: xr.DataArray, image: xr.DataArray | None = None) -> Table:
    """Points table of the objects in ``labels`` (lazy)."""
    geometry = Geometry.of(labels)
    parts: BlockLabels | None = labels.attrs.get(BLOCK_LABELS_ATTR)
    source = parts.local if parts is not None else labels.data
    img = image.data.rechunk(source.chunks) if image is not None else None
    blocks = source.to_delayed(optimize_graph=False).ravel()
    img_blocks = img.to_delayed(optimize_graph=False).ravel() if img is not None else [None] * len(blocks)
    block_ids = list(np.ndindex(*source.numblocks))
    partial = [
        dask.delayed(_partial_stats, pure=True)(b, i, block_start(source.chunks, bid))
        for b, i, bid in zip(blocks, img_blocks, block_ids)
    ]
    # each block's statistics are kept as computed: a resumed run redoes only the blocks it lacks
    # (the name says what they depend on besides the node key: which labels, which blocks)
    kind = "local" if parts is not None else "final"
    partial = checkpoint_blocks(f"stats-{kind}-{tokenize(source.chunks)}", partial)
    refs = [p.key for p in partial]
    if parts is None:
        return partitioned_table(geometry, source.chunks, image is not None, refs, partial, None)
    return grouped_table(geometry, source.chunks, image is not None, refs, partial, parts)


@op(
    "centroids",
    version=3,
    inputs={"labels": PortType.Labels, "image": PortType.Image},
    optional=("image",),
    output=PortType.Points,
    kernel=Reduce(_stats_block, _stats_finish),
)
def centroids(labels: xr.DataArray, image: xr.DataArray | None = None) -> Table:
    """Centre of mass, size, bounding box and (with ``image``) mean and max intensity of every object.

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
        ``volume_voxels``, ``volume_um3``, ``bbox_{z,y,x}_{min,max}`` (inclusive
        voxel indices) [, ``mean_intensity``, ``max_intensity``]; geometric
        centres (unweighted), equal to ``scipy.ndimage.center_of_mass`` of each
        object, exact whatever the chunking. In partitions, one per slab of block
        rows along z, each object whole in one of them; the same rows however the
        table is partitioned (version 3: an object's intensity pieces are added
        with ``math.fsum``, so no figure depends on the order of the pieces).
    """
    return object_table(labels, image)


__all__ = ["centroids", "object_table", "POINT_COLUMNS"]
