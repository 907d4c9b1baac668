"""Mask → Labels: connected components with ids unique across the whole volume.

Chunked labelling in two passes, with memory bounded by the block size:

1. every block is labelled on its own (cc3d); the task keeps
   only the block's label count and its six boundary faces;
2. for every plane between two rows of blocks, the faces on both sides (plus a
   one-voxel rim from the diagonal neighbours, for 26-connectivity) are labelled
   together; ids that fall in one component there belong to one object. Ids are
   named (block, local id), so a row of blocks' planes (one task) run as soon as
   those blocks and their upper neighbours are labelled, while others still are;
3. block ids are made unique with an offset (a cumulative sum of the counts, gathered
   a row of blocks at a time, as soon as the row is labelled);
4. the pairs from all planes are unioned globally into a lookup table
   (offset id → final id, consecutive from 1).

Run fused (:mod:`cvplgraph.engine.fuse`), step 1 is part of one task per block
with the threshold before it and the per-object sums after it.

The relabelled volume is computed only when something consumes it (a stored
copy, a pixel op). While a cached node is built, each block's labels are kept
(compressed, ~500× on sparse masks) as pass 1 computes them and read back once
the lookup table exists (:func:`cvplgraph.hooks.spill`); elsewhere they are
rebuilt from a re-keyed copy of the upstream graph that waits for the lookup
table. Either way no block labels stay in memory while the union is computed.
Centroids and counts never need it: they merge per-block partial sums through the lookup table (see ``measure``).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import cc3d
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.graph_manipulation import bind
from dask.highlevelgraph import HighLevelGraph

from cvplgraph.errors import OpError
from cvplgraph.hooks import checkpoint, checkpoint_blocks, spill
from cvplgraph.kernels import LocalPass, graph_sources, keys_token
from cvplgraph.ops.lookup import BLOCK_SHIFT, LABEL_DTYPE, lut_range, union_table
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import like

BLOCK_LABELS_ATTR = "_cvplgraph_block_labels"


def structure_for(connectivity: int) -> np.ndarray:
    """The 3-D structuring element for 6- or 26-connectivity (``scipy.ndimage.generate_binary_structure(3, 1)``
    and ``(3, 3)``)."""
    if connectivity not in (6, 26):
        raise OpError(f"connectivity must be 6 or 26, got {connectivity!r}")
    if connectivity == 26:
        return np.ones((3, 3, 3), dtype=bool)
    return np.abs(np.indices((3, 3, 3)) - 1).sum(axis=0) <= 1


@dataclass(frozen=True)
class BlockLabels:
    """Pass-1 result of chunked labelling.

    ``local`` holds per-block ids (1..n within each block); block ``b``'s ids
    become volume ids by adding ``offsets[b]`` (flat block order) and mapping
    through ``lut``.
    """

    local: da.Array
    offsets: Delayed  # int64 array, one offset per block (C order)
    lut: Delayed  # the lookup table offset id → final id, compact (see :func:`union_table`, :func:`lut_range`)
    count: Delayed  # number of objects
    total: Delayed  # number of offset ids (every block's ids, before the union)


def _labels_and_count(block: np.ndarray, connectivity: Literal[6, 26]) -> tuple[np.ndarray, int]:
    """Ids 1..n of one block's components, in raster order (cc3d: ~5× scipy.ndimage.label), and n."""
    labels, n = cc3d.connected_components(block, connectivity=connectivity, binary_image=True,
                                          out_dtype=np.uint32, return_N=True)  # fmt: skip
    return labels, int(n)


def _label_block(block: np.ndarray, connectivity: Literal[6, 26]) -> np.ndarray:
    return _labels_and_count(block, connectivity)[0]


#: A block's summary: its label count (a 0-d array), the shapes of its six faces (a 6 × 2 array), then for
#: its first and last layer along z, y and x the flat indices of the labelled voxels and their labels: faces
#: are mostly background, and every block's summary is held until the union (plain arrays, so that a
#: checkpoint can save it).
Summary = tuple[np.ndarray, ...]


def _faces(labels: np.ndarray, count: int | None = None) -> Summary:
    """A block's label count (``count`` when the labelling said it) and its (first, last) layer along each axis."""
    faces = [np.take(labels, i, axis=a) for a in range(3) for i in (0, labels.shape[a] - 1)]
    n = labels.max(initial=0) if count is None else count
    sparse: list[np.ndarray] = []
    for face in faces:
        flat = face.ravel()
        where = np.flatnonzero(flat)
        sparse += [where.astype(np.int32), flat[where]]
    shapes = np.array([face.shape for face in faces], dtype=np.int64)
    return (np.asarray(n, dtype=np.int64), shapes, *sparse)


def _face(summary: Summary, axis: int, last: bool) -> np.ndarray:
    """One face of a block, dense again."""
    k = 2 * axis + int(last)
    out = np.zeros(tuple(summary[1][k]), dtype=summary[3 + 2 * k].dtype)
    out.ravel()[summary[2 + 2 * k]] = summary[3 + 2 * k]
    return out


def _row_counts(*counts: np.ndarray) -> np.ndarray:
    """A row of blocks' label counts (their summaries' first arrays), as one int64 array."""
    return np.array([int(c) for c in counts], dtype=np.int64)


def _offsets(rows: list[np.ndarray]) -> np.ndarray:
    """Each block's first offset id less one, from every row's label counts (:func:`_row_counts`, in order)."""
    n = np.concatenate([np.empty(0, dtype=np.int64), *rows])
    return np.concatenate([[0], np.cumsum(n)[:-1]])


def _rim_piece(face: np.ndarray, pos: tuple[int, int]) -> np.ndarray:
    """The part of a neighbour's face that borders the central tile: all of it
    (pos 0), its last row/column (pos -1) or its first (pos +1), per in-plane axis."""
    sl = tuple(slice(None) if p == 0 else (slice(-1, None) if p < 0 else slice(0, 1)) for p in pos)
    return face[sl]


#: The blocks whose faces take part in one plane tile, on one side of it: per block its in-plane neighbour
#: position (-1..1, -1..1; (0, 0) is the tile itself) and its flat block index (plain tuples keep the task small).
Side = tuple[tuple[int, int, int], ...]


def _plane_pairs(
    axis: int,
    structure: np.ndarray,
    lower: Side,
    upper: Side,
    *summaries: Summary,
) -> np.ndarray:
    """Equivalent id pairs across one tile of a plane between two block rows, as (block, local id)
    codes (:data:`BLOCK_SHIFT`).

    ``lower``/``upper``: the blocks whose faces take part, per side of the plane (:data:`Side`);
    ``summaries`` holds those blocks' ``_faces`` results in the same order (lower first, then upper).
    """
    if int(structure.sum()) == 7 and len(lower) == len(upper) == 1:  # 6-connectivity: only voxels face to face
        return _facing_pairs(axis, int(lower[0][2]), int(upper[0][2]), summaries[0], summaries[1])
    from scipy import ndimage

    shape0 = tuple(summaries[0][1][2 * axis + 1])  # the shape of the first face of this axis (a tile)
    slab = np.zeros((2, shape0[0] + 2, shape0[1] + 2), dtype=np.int64)
    entries = [(0, (int(r[0]), int(r[1])), int(r[2]), True) for r in lower]
    entries += [(1, (int(r[0]), int(r[1])), int(r[2]), False) for r in upper]
    for (layer, pos, flat, last), summary in zip(entries, summaries):
        piece = _rim_piece(_face(summary, axis, last), pos).astype(np.int64)
        piece[piece > 0] += flat << BLOCK_SHIFT
        r0 = {-1: 0, 0: 1, 1: shape0[0] + 1}[pos[0]]
        c0 = {-1: 0, 0: 1, 1: shape0[1] + 1}[pos[1]]
        slab[layer, r0 : r0 + piece.shape[0], c0 : c0 + piece.shape[1]] = piece
    comp, n = ndimage.label(slab > 0, structure=structure)
    if n == 0:
        return np.empty((0, 2), dtype=np.int64)
    fg = comp > 0
    pairs = np.unique(np.stack([comp[fg], slab[fg]], axis=1), axis=0)  # sorted by component, then id
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    first = np.zeros(n + 1, dtype=np.int64)
    first[pairs[starts, 0]] = pairs[starts, 1]  # each component's smallest id
    links = np.stack([first[pairs[:, 0]], pairs[:, 1]], axis=1)
    return links[links[:, 0] != links[:, 1]]


def _facing_pairs(axis: int, lower: int, upper: int, below: Summary, above: Summary) -> np.ndarray:
    """6-connected pairs across one plane tile: the labelled voxels of the lower block's last face that
    touch labelled voxels of the upper block's first face, straight from the sparse faces (the same
    components as labelling the two layers, without building them)."""
    last, first = 2 * axis + 1, 2 * axis
    where_low, labels_low = below[2 + 2 * last], below[3 + 2 * last]
    where_up, labels_up = above[2 + 2 * first], above[3 + 2 * first]
    _, at_low, at_up = np.intersect1d(where_low, where_up, assume_unique=True, return_indices=True)
    if at_low.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    codes = np.stack([labels_low[at_low].astype(np.int64) + (lower << BLOCK_SHIFT),
                      labels_up[at_up].astype(np.int64) + (upper << BLOCK_SHIFT)], axis=1)  # fmt: skip
    return np.unique(codes, axis=0)


def _block_pairs(structure: np.ndarray, planes: tuple[tuple[int, Side, Side], ...],
                 *summaries: Summary) -> np.ndarray:  # fmt: skip
    """:func:`_plane_pairs` of every ``(axis, lower, upper)`` plane tile of a row of blocks, the summaries of
    each plane's blocks given one plane after the other."""
    out, start = [np.empty((0, 2), dtype=np.int64)], 0
    for axis, lower, upper in planes:
        end = start + len(lower) + len(upper)
        out.append(_plane_pairs(axis, structure, lower, upper, *summaries[start:end]))
        start = end
    return np.concatenate(out)


def _total(offsets: np.ndarray, last: np.ndarray) -> int:
    """The number of offset ids, from the offsets and the last block's label count."""
    return int(offsets[-1] + int(last)) if len(offsets) else 0


def label_blocks(mask: da.Array, *, connectivity: Literal[6, 26] = 6) -> BlockLabels:
    """Pass 1: per-block labels, offsets and the global lookup table (all lazy).

    The graph is written as plain task tuples: building it costs microseconds
    per block, which matters for volumes of tens of thousands of blocks. Each
    block's summary (label count and faces) is a block checkpoint: inside a run
    that caches the node, a resumed run loads the summaries an interrupted one
    saved instead of labelling those blocks again.
    """
    local = da.map_blocks(_label_block, mask, connectivity, dtype=np.uint32)
    faces = f"faces-{tokenize(local.name, connectivity)}"
    indices = list(itertools.product(*map(range, local.numblocks)))
    summaries = {(faces, i): (_faces, (local.name, *idx)) for i, idx in enumerate(indices)}
    summary_graph = HighLevelGraph.from_collections(faces, summaries, dependencies=[local])  # type: ignore[arg-type]
    kept = checkpoint_blocks(
        f"faces-sparse-{tokenize(mask.chunks)}", [Delayed(k, summary_graph, layer=faces) for k in summaries]
    )
    return union_of(kept, local, connectivity)


def union_of(
    summaries: list[Delayed],
    local: da.Array,
    connectivity: Literal[6, 26],
    refs: list[Any] | None = None,
    heads: list[Any] | None = None,
) -> BlockLabels:
    """Steps 2–4 after pass 1: offsets, face pairs and the lookup table, from every block's summary
    (``_faces`` results, C order of ``local``'s blocks). ``refs``: what the tasks name each summary by, when
    not its Delayed's key (e.g. a small task picking it out of a fused task's result, run where it is used);
    ``heads``: what they name each block's label count by, when not its summary's first item (the offsets need
    every block's count, not every block's faces)."""
    structure = structure_for(connectivity)
    grid = local.numblocks
    token = tokenize(local.name, connectivity, keys_token([s.key for s in summaries]), keys_token(refs or []),
                     keys_token(heads or []))  # fmt: skip
    offsets, total, lut, count = (f"{n}-{token}" for n in ("offsets", "total", "lut", "count"))
    strides = (grid[1] * grid[2], grid[2], 1)
    face_keys = refs if refs is not None else [value.key for value in summaries]
    counts = heads if heads is not None else [(operator.getitem, k, 0) for k in face_keys]
    # a row's counts are gathered as soon as its blocks are done (like its pairs, below): the offsets wait for the
    # rows, not for every block, so a worker forgets a block's task once its row's small tasks ran (engine/lean.py)
    row_counts = f"row-counts-{token}"
    per_row = grid[2]
    row_dsk: dict = {(row_counts, r): (_row_counts, *counts[r * per_row : (r + 1) * per_row])
                     for r in range(grid[0] * grid[1])}  # fmt: skip
    rows = list(row_dsk)
    dsk: dict = {offsets: (_offsets, rows), total: (_total, offsets, (operator.getitem, rows[-1], -1))}
    moves = {axis: [(d0, d1, [a for a in range(3) if a != axis]) for d0, d1 in itertools.product((-1, 0, 1), repeat=2)]
             for axis in range(3)}  # fmt: skip

    def side(block_idx: tuple[int, ...], axis: int) -> Side:
        """For 26-connectivity, the blocks whose faces meet the plane tile of ``block_idx`` (itself and its
        in-plane neighbours), as (step, step, flat index) rows."""
        flat = block_idx[0] * strides[0] + block_idx[1] * strides[1] + block_idx[2]
        return tuple((d0, d1, flat + d0 * strides[o0] + d1 * strides[o1]) for d0, d1, (o0, o1) in moves[axis]
                     if 0 <= block_idx[o0] + d0 < grid[o0] and 0 <= block_idx[o1] + d1 < grid[o1])  # fmt: skip

    pairs = f"pairs-{token}"
    pair_keys: list[tuple[str, int]] = []
    pair_dsk: dict = {}
    # one task per row of blocks along x: the planes between each block of the row and its upper neighbours
    # (a task per block cost more in scheduling than the pairs themselves with small blocks)
    for row in itertools.product(*map(range, grid[:2])):
        planes: list[tuple[int, Side, Side]] = []
        faces: list[Any] = []
        for x in range(grid[2]):
            idx = (*row, x)
            for axis in range(3):
                if idx[axis] + 1 >= grid[axis]:
                    continue
                lower: Side
                upper: Side
                if connectivity == 6:  # the two blocks face to face, without a call (10⁵ blocks: 6·10⁵ calls)
                    flat = idx[0] * strides[0] + idx[1] * strides[1] + x
                    lower, upper = ((0, 0, flat),), ((0, 0, flat + strides[axis]),)
                else:
                    upper_idx = (idx[0] + (axis == 0), idx[1] + (axis == 1), idx[2] + (axis == 2))
                    lower, upper = side(idx, axis), side(upper_idx, axis)
                planes.append((axis, lower, upper))
                faces += [face_keys[r[2]] for r in (*lower, *upper)]
        if planes:
            key = (pairs, len(pair_keys))
            pair_dsk[key] = (_block_pairs, structure, tuple(planes), *faces)
            pair_keys.append(key)
    dsk[lut] = (union_table, offsets, total, *pair_keys)
    dsk[count] = (_count, lut, total)
    blocks = graph_sources(summaries)
    row_graph = HighLevelGraph.from_collections(row_counts, row_dsk, dependencies=blocks)
    row_graph.layers[row_counts].annotations = {"priority": PAIRS_PRIORITY}
    sources = [*blocks, Delayed(rows[0], row_graph, layer=row_counts)]
    if pair_dsk:  # a row's pairs run as soon as its blocks are done, between blocks: not all at the end, in series
        pair_graph = HighLevelGraph.from_collections(pairs, pair_dsk, dependencies=blocks)
        pair_graph.layers[pairs].annotations = {"priority": PAIRS_PRIORITY}
        sources.append(Delayed(pair_keys[0], pair_graph, layer=pairs))
    graph = HighLevelGraph.from_collections(token, dsk, dependencies=sources)
    return BlockLabels(local, *(Delayed(k, graph, layer=token) for k in (offsets, lut, count, total)))


#: The scheduling priority of the pairs' and row counts' tasks (distributed runs ready tasks of higher priority
#: first; 0 is the default): a row's take milliseconds and only wait for their blocks.
PAIRS_PRIORITY = 1


def _count(lut: np.ndarray, total: int) -> int:
    """The number of objects: the offset ids less those merged into another."""
    return int(total) - int(lut.shape[1])


def _relabel(
    local: np.ndarray, offsets: np.ndarray, lut: np.ndarray, numblocks: tuple[int, ...], block_id: tuple[int, ...]
) -> np.ndarray:
    offset = int(offsets[np.ravel_multi_index(block_id, numblocks)])
    block_lut = lut_range(lut, offset, offset + int(local.max(initial=0)) + 1)
    block_lut[0] = 0  # local id 0 is background; ids 1..n sit at offset + 1..n
    if np.count_nonzero(local) > local.size // 8:  # dense labels (watershed): look every voxel up
        return np.take(block_lut, local)
    # mostly background: look up the labelled voxels only (np.take casts every index to int64 first)
    where = np.flatnonzero(local.reshape(-1) != 0)  # numpy lists a bool array's non-zeros ~8× faster
    out = np.zeros(local.shape, dtype=block_lut.dtype)
    out.reshape(-1)[where] = block_lut[local.reshape(-1)[where]]
    return out


def relabelled(parts: BlockLabels) -> da.Array:
    """The volume with final ids, recomputed from the upstream graph after the union."""
    return relabelled_from(bind(parts.local, parts.lut), parts)  # a re-keyed copy that starts once the lut exists


def relabelled_from(local: da.Array, parts: BlockLabels) -> da.Array:
    """The volume with final ids from block labels read back after the union (see :func:`cvplgraph.hooks.spill`)."""
    return da.map_blocks(
        _relabel,
        local,
        parts.offsets,
        parts.lut,
        local.numblocks,
        dtype=LABEL_DTYPE,
        meta=np.empty((0, 0, 0), LABEL_DTYPE),
    )


def _kept_for_resume(parts: BlockLabels, chunks: tuple[tuple[int, ...], ...], connectivity: int) -> BlockLabels:
    """The first pass's small results, kept for a resumed run (named by the block grid they depend on)."""
    grid = tokenize(chunks, connectivity)
    return replace(
        parts, offsets=checkpoint(f"offsets-{grid}", parts.offsets), lut=checkpoint(f"lut-compact-{grid}", parts.lut)
    )


def _pass_block(mask: np.ndarray, *, connectivity: Literal[6, 26] = 6) -> tuple[np.ndarray, Summary]:
    """Pass 1 on one block, fused: its labels (numbered within the block) and its summary."""
    local, count = _labels_and_count(mask, connectivity)
    return local, _faces(local, count)


def _finish(
    summaries: list[Delayed], provisional: da.Array, like_: xr.DataArray, kept: Callable[[Delayed], da.Array] | None,
    refs: list[Any] | None = None, heads: list[Any] | None = None, *, connectivity: Literal[6, 26] = 6,
) -> xr.DataArray:  # fmt: skip
    """The labels from fused pass-1 summaries: the union, then final ids from the kept block labels, each read
    back once the lookup table exists (or, when nothing kept them, from ``provisional``, recomputed only if a
    consumer asks)."""
    parts = union_of(summaries, provisional, connectivity, refs, heads)
    parts = _kept_for_resume(parts, like_.data.chunks, connectivity)
    out = like(relabelled(parts) if kept is None else relabelled_from(kept(parts.lut), parts), like_)
    out.attrs[BLOCK_LABELS_ATTR] = parts
    return out


@op(
    "connected_components",
    version=1,
    inputs={"mask": PortType.Mask},
    output=PortType.Labels,
    kernel=LocalPass(_pass_block, _finish, dtype=np.dtype(LABEL_DTYPE).name),
)
def connected_components(mask: xr.DataArray, *, connectivity: Literal[6, 26] = 6) -> xr.DataArray:
    """Label connected foreground regions; ids are unique across the whole volume.

    Parameters
    ----------
    mask : (Z, Y, X) DataArray of uint8
        Foreground where non-zero.
    connectivity : {6, 26}
        Face neighbours only (6) or faces, edges and corners (26).

    Returns
    -------
    labels : (Z, Y, X) DataArray of int32
        0 for background, objects numbered 1..N. Equal to ``scipy.ndimage.label``
        on the whole array up to a permutation of ids, on any chunking.
    """
    parts = _kept_for_resume(label_blocks(mask.data, connectivity=connectivity), mask.data.chunks, connectivity)
    grid = tokenize(mask.data.chunks, connectivity)
    # stored labels need final ids per block: read back the block labels kept in the first pass (within a
    # cached node's build) rather than computing the whole upstream chain a second time
    kept = spill(f"labels-{grid}", parts.local, parts.lut)
    out = like(relabelled(parts) if kept is None else relabelled_from(kept, parts), mask)
    out.attrs[BLOCK_LABELS_ATTR] = parts
    return out
