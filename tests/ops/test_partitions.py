"""Points tables in partitions: each object whole in one partition, the same rows however the table is
partitioned, and table ops that work partition by partition give what they give on the whole table."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cvplgraph import ops
from cvplgraph.ops import measure
from cvplgraph.ops.components import connected_components
from cvplgraph.values import TREE_FANIN, Geometry, Table, tree_sum, wrap

CHUNKINGS = [(40, 60, 50), (10, 20, 25), (7, 13, 50), (13, 60, 11), (5, 64, 64)]


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    """Blobs of many sizes, some reaching across several blocks along z, and an intensity image."""
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.random((40, 60, 50)), (3.0, 1.5, 1.5))
    mask = (smooth > np.quantile(smooth, 0.8)).astype(np.uint8)
    return mask, rng.random(mask.shape).astype(np.float32)


def _table(
    mask: np.ndarray, image: np.ndarray, chunks: tuple[int, ...], connectivity: int, rows: int = 1,
    blocks: int | None = None,
) -> Table:  # fmt: skip
    """The table of ``mask``'s components in partitions of ``blocks`` blocks along x (or, None, of slabs of
    ``rows`` block rows)."""
    geometry = Geometry(mask.shape, (4.0, 1.5, 1.5), (10.0, 0.0, -3.0))  # type: ignore[arg-type]
    labels = connected_components(wrap(da.from_array(mask, chunks=chunks), geometry), connectivity=connectivity)
    original = measure.ROWS_PER_PARTITION, measure.BLOCKS_PER_PARTITION
    measure.ROWS_PER_PARTITION, measure.BLOCKS_PER_PARTITION = rows, blocks
    try:
        return measure.object_table(labels, wrap(da.from_array(image, chunks=chunks), geometry))
    finally:
        measure.ROWS_PER_PARTITION, measure.BLOCKS_PER_PARTITION = original


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_partitioned_points_equal_the_whole_table(
    volume: tuple[np.ndarray, np.ndarray], chunks: tuple[int, ...], connectivity: int
) -> None:
    """One partition per slab of block rows, or per run of blocks along x: every object once, in one partition,
    rows sorted by label in each; together exactly (every bit) the rows of the table merged in one partition, and
    scipy's centroids, sizes and mean intensities of the whole array."""
    mask, image = volume
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    reference, n = ndimage.label(mask, structure)
    whole = _table(mask, image, chunks, connectivity, rows=10**6)
    assert len(whole.parts) == 1
    expected = whole.compute(scheduler="sync")
    assert len(expected) == n > 20
    grid = [-(-n // c) for n, c in zip(mask.shape, chunks)]
    for rows, blocks in ((1, None), (2, None), (1, 1), (1, 2), (1, 3)):
        table = _table(mask, image, chunks, connectivity, rows, blocks)
        if blocks is None:
            assert len(table.parts) == -(-grid[0] // rows)
        else:
            assert len(table.parts) == grid[0] * grid[1] * -(-grid[2] // blocks) + 1  # and the big objects'
        parts = [p.compute(scheduler="sync") for p in table.parts]
        for part in parts:
            assert part["label"].is_monotonic_increasing
        together = pd.concat(parts, ignore_index=True)
        assert together["label"].is_unique
        pd.testing.assert_frame_equal(together.sort_values("label", ignore_index=True), expected, check_exact=True)
    ids = np.arange(1, n + 1)
    centre = np.array(ndimage.center_of_mass(mask, reference, ids))
    sizes = ndimage.sum_labels(mask, reference, ids)
    means = ndimage.mean(image, reference, ids)
    order = np.lexsort(centre.T[::-1])
    got = expected[["z", "y", "x"]].to_numpy()
    got_order = np.lexsort(got.T[::-1])
    np.testing.assert_allclose(got[got_order], centre[order], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(expected["volume_voxels"].to_numpy()[got_order], sizes[order])
    np.testing.assert_allclose(expected["mean_intensity"].to_numpy()[got_order], means[order], rtol=1e-12)


@pytest.mark.parametrize("blocks", [None, 1])
def test_a_slab_holds_objects_taller_than_several_slabs(
    volume: tuple[np.ndarray, np.ndarray], blocks: int | None
) -> None:
    """An object through every slab is handed on slab after slab (or, in runs of blocks, partition after
    partition) and lands in the last partition, whole."""
    mask, image = volume
    tall = mask.copy()
    tall[:, 30, 25] = 1  # a column through the whole volume along z
    table = _table(tall, image, (5, 64, 64), 6, rows=1, blocks=blocks)
    parts = [p.compute(scheduler="sync") for p in table.parts]
    depth = [part["bbox_z_max"] - part["bbox_z_min"] + 1 for part in parts]
    assert max(depth[-1]) == tall.shape[0] and all(max(d, default=0) < tall.shape[0] for d in depth[:-1])
    assert sum(len(p) for p in parts) == ndimage.label(tall)[1]


def test_every_table_op_works_partition_by_partition(volume: tuple[np.ndarray, np.ndarray]) -> None:
    """count, density and filter_size on a partitioned table equal them on the same table in one partition;
    no task of their graphs reads more than one partition."""
    mask, image = volume
    split = _table(mask, image, (7, 13, 50), 6, rows=1)  # slabs
    whole = Table(split.frame, split.geometry)
    assert len(split.parts) == 6
    for op in (
        lambda t: ops.count(t, block=(8, 16, 16)),
        lambda t: ops.count(t, block=(8, 16, 16), min_voxels=3, typical_voxels=20.0),
    ):
        np.testing.assert_array_equal(op(split).compute(scheduler="sync"), op(whole).compute(scheduler="sync"))
    np.testing.assert_array_equal(ops.density(split, spacing=20.0).data.compute(scheduler="sync"),
                                  ops.density(whole, spacing=20.0).data.compute(scheduler="sync"))  # fmt: skip
    filtered = ops.filter_size(split, min_voxels=4, max_voxels=200)
    assert len(filtered.parts) == len(split.parts)
    expected = ops.filter_size(whole, min_voxels=4, max_voxels=200).compute(scheduler="sync")
    pd.testing.assert_frame_equal(filtered.compute(scheduler="sync"), expected)
    partitions = {p.key for p in split.parts}
    graph = dict(ops.count(split, block=(8, 16, 16)).counts.__dask_graph__())
    for task in graph.values():
        assert len(partitions & set(getattr(task, "dependencies", ()))) <= 1


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 65, 100])
def test_a_tree_sum_adds_every_part_once_with_bounded_fan_in(n: int) -> None:
    parts = [dask.delayed(np.full)(3, k) for k in range(n)]
    total = tree_sum(parts, lambda *xs: np.sum(xs, axis=0))
    np.testing.assert_array_equal(total.compute(scheduler="sync"), np.full(3, sum(range(n))))
    graph = dict(total.__dask_graph__())
    assert all(len(getattr(task, "dependencies", ())) <= TREE_FANIN for task in graph.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pieces_combine_exactly_in_any_order_and_grouping(seed: int) -> None:
    """Per-block partial statistics combine into pandas' grouped sums, minima and maxima (integers: exact) and,
    for the intensity, into the correctly rounded sum of the pieces (``math.fsum``): the same bits whatever the
    order of the pieces and however they were grouped before."""
    import math

    from cvplgraph.ops.measure import PARTS, _combine

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 300, 4000)  # ~13 pieces an id, in no order
    stats = np.empty((ids.size, len(PARTS)))
    stats[:, 0] = rng.integers(1, 500, ids.size)  # voxel counts
    stats[:, 1:4] = rng.integers(0, 10**9, (ids.size, 3))  # coordinate sums: integers
    stats[:, 4] = rng.random(ids.size) * 10 ** rng.uniform(-3, 6, ids.size)  # intensity sums of every magnitude
    stats[:, 5:11] = rng.integers(0, 4000, (ids.size, 6))
    stats[:, 11] = rng.random(ids.size)
    pieces = pd.DataFrame(stats, columns=list(PARTS))
    pieces["label"] = ids
    expected = pieces.groupby("label", sort=True).agg(PARTS)
    expected["si"] = pieces.groupby("label", sort=True)["si"].agg(lambda s: math.fsum(s.tolist()))
    got = _combine(ids, stats)
    np.testing.assert_array_equal(got["label"], expected.index.to_numpy())
    for part in PARTS:
        np.testing.assert_array_equal(got[part], expected[part].to_numpy(), err_msg=part)
    shuffled = rng.permutation(ids.size)
    again = _combine(ids[shuffled], stats[shuffled])
    halves = [_combine(ids[h], stats[h]) for h in np.array_split(shuffled, 2)]
    regrouped = _combine(np.concatenate([h["label"] for h in halves]),
                         np.stack([np.concatenate([h[p] for h in halves]) for p in PARTS], axis=1))  # fmt: skip
    for part in PARTS:
        np.testing.assert_array_equal(again[part], got[part], err_msg=part)
        if part != "si":  # a sum of rounded sums is not the rounded sum: why pieces, not sums, are handed on
            np.testing.assert_array_equal(regrouped[part], got[part], err_msg=part)
    empty = _combine(np.empty(0, np.int64), np.empty((0, len(PARTS))))
    assert all(len(v) == 0 for v in empty.values())


@pytest.mark.parametrize("blocks", [None, 1])
def test_slabs_are_merged_at_most_a_few_ahead_of_the_partitions_made(
    volume: tuple[np.ndarray, np.ndarray], blocks: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slab s's merge (or partition s's, in runs of blocks) waits for partition s - MERGES_AHEAD (a worker would
    otherwise merge every slab it was given and hold every partition at once); the first wait for nothing but
    their blocks and the lookup table."""
    from dask._task_spec import convert_legacy_graph

    mask, image = volume
    monkeypatch.setattr(measure, "RUNS_AHEAD", 3)
    ahead = measure.MERGES_AHEAD if blocks is None else measure.RUNS_AHEAD
    table = _table(mask, image, (5, 64, 64), 6, 1, blocks)
    assert len(table.parts) == 8 + (blocks is not None)  # runs of blocks: and the big objects' partition
    graph = convert_legacy_graph(dict(table.parts[-1].__dask_graph__()))
    merges = {k[1]: t for k, t in graph.items() if isinstance(k, tuple) and str(k[0]).startswith("points-merge-")}
    assert sorted(merges) == list(range(8))
    for s, task in merges.items():
        made = {d for d in task.dependencies if str(d[0]).startswith("points-made-")}
        assert made == ({(d[0], s - ahead) for d in made} if s >= ahead else set())
        assert len(made) == (s >= ahead)
    # and the rows are those of one partition (the waiting changes no value)
    whole = _table(mask, image, (5, 64, 64), 6, 8).frame.compute()  # one slab
    parted = pd.concat(dask.compute(*table.parts)).sort_values("label").reset_index(drop=True)
    pd.testing.assert_frame_equal(parted, whole.sort_values("label").reset_index(drop=True), check_exact=True)


def _segments(shape: tuple[int, int, int], chunks: tuple[int, int, int], seed: int) -> np.ndarray:
    """Short diagonal segments (joined by corners only) through block corners and edges, in every direction: each
    object's pieces sit in blocks before its first one along some axes and after it along others."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=np.uint8)
    corners = [np.arange(c, n, c) for n, c in zip(shape, chunks)]
    for _ in range(60):
        centre = [int(rng.choice(c)) if rng.random() < 0.8 else int(rng.integers(2, n - 2))
                  for c, n in zip(corners, shape)]  # fmt: skip
        step = rng.choice([-1, 0, 1], size=3)
        if not step.any():
            step[0] = 1
        for t in range(-int(rng.integers(1, 3)), int(rng.integers(1, 4))):
            at = [min(max(c + t * d, 0), n - 1) for c, d, n in zip(centre, step, shape)]
            mask[tuple(at)] = 1
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_objects_at_block_corners_are_merged_by_their_owner(seed: int) -> None:
    """Objects cut by block corners in every direction (26-connected diagonals): in runs of 1 or 2 blocks each
    lies whole in one partition, and the rows equal scipy's on the whole array."""
    shape, chunks = (24, 30, 36), (6, 10, 9)
    mask = _segments(shape, chunks, seed)
    image = np.random.default_rng(seed).random(shape).astype(np.float32)
    reference, n = ndimage.label(mask, np.ones((3, 3, 3)))
    ids = np.arange(1, n + 1)
    centre = np.array(ndimage.center_of_mass(mask, reference, ids))
    sizes = ndimage.sum_labels(mask, reference, ids)
    whole = _table(mask, image, chunks, 26, rows=10**6).frame.compute(scheduler="sync")
    assert len(whole) == n > 20
    for blocks in (1, 2):
        parts = [p.compute(scheduler="sync") for p in _table(mask, image, chunks, 26, blocks=blocks).parts]
        together = pd.concat(parts, ignore_index=True).sort_values("label", ignore_index=True)
        pd.testing.assert_frame_equal(together, whole, check_exact=True)
    got = whole[["z", "y", "x"]].to_numpy()
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], centre[np.lexsort(centre.T[::-1])], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.sort(whole["volume_voxels"].to_numpy()), np.sort(sizes))


def test_a_partition_reads_a_bounded_number_of_blocks() -> None:
    """No task of a table in runs of blocks reads more blocks' statistics than its run and the blocks just after
    it (5 runs' worth and 9), however wide the volume's cross-section: what bounds a worker's memory by the block."""
    from dask._task_spec import convert_legacy_graph

    rng = np.random.default_rng(3)
    mask = (rng.random((16, 64, 256)) > 0.97).astype(np.uint8)
    for blocks in (1, 4):
        table = _table(mask, mask.astype(np.float32), (4, 8, 8), 6, blocks=blocks)
        graph = convert_legacy_graph(dict(table.parts[-1].__dask_graph__()))
        merges = [t for k, t in graph.items() if isinstance(k, tuple) and str(k[0]).startswith("points-merge-")]
        assert len(merges) == len(table.parts) - 1 == 4 * 8 * (32 // blocks)
        widest = max(sum(1 for d in t.dependencies if str(d).startswith("_partial_stats-")) for t in merges)
        assert widest == 5 * blocks + 9  # an inner run: itself, the next block, 1 run + 2 after, 3 runs + 6 after


@pytest.mark.parametrize("chunks", [(5, 64, 64), (10, 20, 25), (7, 13, 50)])
def test_big_objects_are_those_spanning_more_than_two_blocks(
    volume: tuple[np.ndarray, np.ndarray], chunks: tuple[int, ...]
) -> None:
    """From the lookup table alone, the objects whose blocks lie more than two apart along some axis, and the
    last block (C order) of each: against every block's final ids read off the relabelled volume."""
    from cvplgraph.ops.components import label_blocks, relabelled
    from cvplgraph.ops.lookup import big_objects

    mask, _ = volume
    parts = label_blocks(da.from_array(mask, chunks=chunks), connectivity=26)
    final, offsets, lut = dask.compute(relabelled(parts), parts.offsets, parts.lut, scheduler="sync")
    grid = tuple(len(c) for c in parts.local.chunks)
    edges = [np.cumsum((0, *c)) for c in parts.local.chunks]
    blocks: dict[int, list[tuple[int, ...]]] = {}
    for idx in np.ndindex(*grid):
        piece = final[tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, idx))]
        for label in np.unique(piece[piece > 0]).tolist():
            blocks.setdefault(label, []).append(idx)
    expected = sorted((label, int(np.ravel_multi_index(max(at), grid))) for label, at in blocks.items()
                      if (np.ptp(np.array(at), axis=0) > 1).any())  # fmt: skip
    assert len(expected) >= 3  # some objects do span: the test can tell
    got = big_objects(lut, offsets, grid)  # type: ignore[arg-type]
    assert list(zip(got[0].tolist(), got[1].tolist())) == expected
