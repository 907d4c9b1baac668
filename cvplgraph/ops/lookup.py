"""The lookup table of connected components across blocks: the union of the id pairs found on block faces, the
table read back by range, and the objects spanning more than two blocks.

Whole-volume steps, each one task: they keep few arrays as long as the table at once (int32 while ids fit) and
take its entries :data:`STEP` at a time where they make temporaries (:mod:`cvplgraph.ops.components` builds the
pairs and calls them; :mod:`cvplgraph.ops.measure` reads the table).
"""

from __future__ import annotations

import numpy as np

from cvplgraph.errors import OpError

LABEL_DTYPE = np.int32

#: Pairs name a block's id as ``flat block index << BLOCK_SHIFT | local id``, so that a plane's pairs need
#: only its blocks' faces (not every block's label count): they are computed as soon as those blocks are.
BLOCK_SHIFT = 32


def union_table(offsets: np.ndarray, total: np.ndarray | int, *pair_arrays: np.ndarray) -> np.ndarray:
    """The lookup table offset id → final id from all pairs, compact: its size is that of the ids in pairs (the
    components touching block faces), not the number of objects (10⁸ in a whole brain).

    Objects are numbered 1..N in the order of their smallest offset id. A (2, k) int64 array: the offset ids
    that are not the smallest of their component (ascending), and the final id of each; every other offset id
    ``o`` is the smallest of its object, numbered ``o`` less the listed ids below it (:func:`lut_range`).

    A whole volume's step in one task (a 100 GB volume has millions of pairs), so it keeps few arrays as long as
    the pairs at once, int32 while the ids fit: the pairs are translated row by row into one array, numbered by
    one sort, and joined by :func:`_components` (no sparse matrix)."""
    n_pairs = sum(len(p) for p in pair_arrays)
    dtype = np.int32 if int(total) < 2**31 else np.int64
    pairs = np.empty((n_pairs, 2), dtype=dtype)
    at = 0
    for codes in pair_arrays:  # (block, local id) → offset id, one row's pairs at a time
        pairs[at : at + len(codes)] = offsets[codes >> BLOCK_SHIFT] + (codes & LOCAL_MASK)
        at += len(codes)
    # the ids in pairs, ascending (nodes), and each pair's two node numbers (ends): np.unique with its inverse,
    # with fewer temporaries, and sorting rather than hashing (numpy's unique takes seconds on millions of ints)
    flat = pairs.reshape(-1)
    order = np.argsort(flat)
    ordered = flat[order]
    del pairs, flat
    new = np.empty(len(ordered), dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    nodes = ordered[new]
    ranks = np.cumsum(new, dtype=dtype, out=ordered)  # the sorted ids are no longer needed: their buffer is reused
    ranks -= 1
    ends = np.empty(len(order), dtype=dtype)
    ends[order] = ranks
    del order, ordered, ranks, new
    smallest = nodes[_components(ends[0::2], ends[1::2], len(nodes))]
    del ends
    dropped = nodes != smallest
    merged, into = nodes[dropped].astype(np.int64), smallest[dropped].astype(np.int64)
    del nodes, smallest, dropped
    if int(total) - len(merged) > np.iinfo(LABEL_DTYPE).max:
        raise OpError("more objects than int32 labels can hold")
    into -= np.searchsorted(merged, into)
    return np.stack([merged, into])


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """The connected components of the undirected graph on nodes ``0..n-1`` with edges ``(a[i], b[i])``: each
    node's smallest node in its component.

    Each node points at a node of its component no larger than itself. In rounds, every edge whose two ends lead
    to different nodes links the larger of those to the smaller, and pointers are then followed to their ends;
    when no edge links anything, every edge's two ends lead to one node, the smallest of their component. Edges
    are taken :data:`STEP` at a time; cut cells make components of a few nodes, settled in a few rounds."""
    parent = np.arange(n, dtype=a.dtype)
    linked = True
    while linked:
        linked = False
        for start in range(0, len(a), STEP):
            pa, pb = parent[a[start : start + STEP]], parent[b[start : start + STEP]]
            differ = pa != pb
            if differ.any():
                linked = True
                np.minimum.at(parent, np.maximum(pa, pb)[differ], np.minimum(pa, pb)[differ])
        while True:  # every pointer to its end
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    return parent


#: The local id's bits in a pair's code (:data:`BLOCK_SHIFT`).
LOCAL_MASK = (1 << BLOCK_SHIFT) - 1

#: How many entries the whole-volume steps (:func:`union_table`, :func:`big_objects`) take at a time where they
#: make temporaries: a few MB each, however long the lookup table.
STEP = 1 << 18


def lut_range(lut: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The final ids of offset ids ``start..stop-1`` from the compact lookup table (:func:`union_table`)."""
    merged, final = lut
    ids = np.arange(start, stop, dtype=np.int64)
    out = ids - np.searchsorted(merged, ids)
    lo, hi = np.searchsorted(merged, [start, stop])
    out[merged[lo:hi] - start] = final[lo:hi]
    return out.astype(LABEL_DTYPE)


def final_range(lut: np.ndarray, first: int, end: int) -> tuple[int, int]:
    """The final ids ``[lo, hi)`` of the objects whose smallest offset id is in ``first..end-1`` (e.g. a run of
    blocks' ids: the objects those blocks own). Final ids number the smallest ids in order (:func:`union_table`)."""
    merged = lut[0]
    return first - int(np.searchsorted(merged, first)), end - int(np.searchsorted(merged, end))


def big_objects(lut: np.ndarray, offsets: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """The objects in blocks more than two apart along some axis, from the lookup table alone: a (2, m) int64
    array of their final ids (ascending) and the flat index of the last block (C order) holding a piece of each.

    Every other object lies in its owner's block (the first, C order, holding a piece) and the 13 neighbours after
    it (:func:`cvplgraph.ops.measure.grouped_table` merges those there). The pieces of a cut object are the offset
    ids the lookup table lists (merged into it) and its smallest, which the table does not list: the final id
    ``f``'s smallest is the ``f``-th offset id not merged.

    A whole volume's step in one task: per object (not per piece) it keeps its blocks' lowest and highest place
    along each axis as int32, and takes the table's pieces :data:`STEP` at a time."""
    merged, final = (np.asarray(a, dtype=np.int64) for a in lut)
    if not len(merged):
        return np.empty((2, 0), dtype=np.int64)
    finals = np.unique(final)  # the objects cut by a face, ascending
    behind = merged - np.arange(1, len(merged) + 1)  # offset ids not merged, below each merged one
    smallest = finals + np.searchsorted(behind, finals, side="left")
    del behind
    last = _block_of(offsets, smallest)  # each object's last block so far: its smallest's
    del smallest
    strides = (grid[1] * grid[2], grid[2], 1)
    low = [((last // stride) % size).astype(np.int32) for stride, size in zip(strides, grid)]
    high = [a.copy() for a in low]
    for start in range(0, len(merged), STEP):  # the other pieces: the listed ids
        which = np.searchsorted(finals, final[start : start + STEP])
        blocks = _block_of(offsets, merged[start : start + STEP])
        np.maximum.at(last, which, blocks)
        for axis, (stride, size) in enumerate(zip(strides, grid)):
            place = ((blocks // stride) % size).astype(np.int32)
            np.minimum.at(low[axis], which, place)
            np.maximum.at(high[axis], which, place)
    big = np.zeros(len(finals), dtype=bool)
    for lo, hi in zip(low, high):
        big |= hi - lo > 1
    return np.stack([finals[big], last[big]])


def _block_of(offsets: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The flat block index of each offset id: id ``o`` is in block ``k`` when ``offsets[k] < o``, the last such."""
    return np.searchsorted(offsets, ids, side="left") - 1
