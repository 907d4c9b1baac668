"""connected_components and centroids on dask equal scipy on the whole array."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from cvplgraph import ops
from cvplgraph.ops.components import label_blocks

# chunkings that divide the shape, that do not, single-voxel-thin blocks, and the whole array
#: the small-block chunkings (hundreds of blocks each) run with the full suite, not in the core loop
CHUNKINGS = [
    (40, 50, 60),
    pytest.param((7, 11, 13), marks=pytest.mark.slow),
    (20, 25, 30),
    (13, 50, 9),
    pytest.param((8, 9, 10), marks=pytest.mark.slow),
    (1, 50, 60),
]


def blobby_mask(seed: int, shape: tuple[int, int, int] = (40, 50, 60), level: float = 0.52) -> np.ndarray:
    """Random smooth blobs: many objects cut by block faces, with thin bridges."""
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random(shape), 2) > level).astype(np.uint8)


def assert_same_partition(labels: np.ndarray, reference: np.ndarray) -> None:
    """Equal up to a permutation of ids: a bijection between the two sets of ids."""
    assert labels.max() == reference.max()
    assert ((labels > 0) == (reference > 0)).all()
    pairs = np.unique(np.stack([reference.ravel(), labels.ravel()], axis=1), axis=0)
    assert len(pairs) == reference.max() + 1  # each reference id maps to exactly one id and back
    assert len(np.unique(pairs[:, 1])) == len(pairs)


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_labels_equal_scipy(connectivity: int, chunks: tuple[int, int, int], seed: int) -> None:
    mask = blobby_mask(seed)
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    reference, n = ndimage.label(mask, structure)
    assert n > 20  # the fixture really has many objects
    labels = ops.connected_components(da.from_array(mask, chunks=chunks), connectivity=connectivity)
    assert_same_partition(labels.compute(scheduler="threads"), reference)


def test_diagonal_contacts_need_26_connectivity() -> None:
    """Two voxels touching only by a corner, in four different blocks: one object in 26, two in 6."""
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1
    arr = da.from_array(mask, chunks=2)
    assert ops.connected_components(arr, connectivity=26).compute().max() == 1
    assert ops.connected_components(arr, connectivity=6).compute().max() == 2


def test_edge_diagonal_across_blocks() -> None:
    """Voxels touching across an edge shared by four blocks (differ in y and x, same z)."""
    mask = np.zeros((3, 4, 4), np.uint8)
    mask[1, 1, 2] = mask[1, 2, 1] = 1
    labels = ops.connected_components(da.from_array(mask, chunks=(3, 2, 2)), connectivity=26).compute()
    assert labels.max() == 1


def test_empty_and_full() -> None:
    empty = da.zeros((10, 10, 10), dtype=np.uint8, chunks=4)
    assert ops.connected_components(empty).compute().max() == 0
    full = da.ones((10, 10, 10), dtype=np.uint8, chunks=4)
    labels = ops.connected_components(full).compute()
    assert labels.min() == labels.max() == 1


def test_numpy_in_numpy_out() -> None:
    mask = blobby_mask(3, (20, 20, 20))
    out = ops.connected_components(mask)
    assert isinstance(out, np.ndarray)
    assert_same_partition(out, ndimage.label(mask)[0])


def test_count_from_pass_one_needs_no_relabelled_volume() -> None:
    mask = blobby_mask(4)
    parts = label_blocks(da.from_array(mask, chunks=(9, 17, 23)))
    assert parts.count.compute() == ndimage.label(mask)[1]


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("through_cache", [False, True])
def test_centroids_equal_center_of_mass(chunks: tuple[int, int, int], through_cache: bool) -> None:
    """Centroids, sizes and mean intensities equal scipy's on the whole array.

    ``through_cache`` feeds already-relabelled labels (as read from a store), the
    other path merges the pass-one partial sums through the lookup table.
    """
    mask = blobby_mask(5)
    rng = np.random.default_rng(9)
    image = rng.random(mask.shape).astype(np.float32)
    reference, n = ndimage.label(mask)
    ids = np.arange(1, n + 1)
    com = np.array(ndimage.center_of_mass(mask, reference, ids))
    sizes = ndimage.sum_labels(mask, reference, ids)
    means = ndimage.mean(image, reference, ids)
    maxima = ndimage.maximum(image, reference, ids)
    boxes = ndimage.find_objects(reference)

    labels = ops.connected_components(da.from_array(mask, chunks=chunks))
    if through_cache:
        labels = da.from_array(labels.compute(), chunks=chunks)
    table = ops.centroids(labels, da.from_array(image, chunks=chunks)).compute(scheduler="threads")
    assert len(table) == n
    # match rows to reference objects through any voxel of each object
    got = table.set_index("label")
    final = labels.compute() if not isinstance(labels, np.ndarray) else labels
    order = [final[tuple(np.argwhere(reference == i)[0])] for i in ids]
    np.testing.assert_allclose(got.loc[order, ["z", "y", "x"]].to_numpy(), com, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got.loc[order, "volume_voxels"].to_numpy(), sizes)
    np.testing.assert_allclose(got.loc[order, "mean_intensity"].to_numpy(), means, rtol=1e-6)
    np.testing.assert_array_equal(got.loc[order, "max_intensity"].to_numpy(), maxima)
    for axis, name in enumerate("zyx"):
        np.testing.assert_array_equal(got.loc[order, f"bbox_{name}_min"].to_numpy(), [b[axis].start for b in boxes])
        np.testing.assert_array_equal(got.loc[order, f"bbox_{name}_max"].to_numpy(), [b[axis].stop - 1 for b in boxes])


def test_centroids_physical_coordinates() -> None:
    import xarray as xr

    from cvplgraph.values import Geometry, wrap

    mask = np.zeros((6, 6, 6), np.uint8)
    mask[2:4, 1:3, 4:6] = 1
    geometry = Geometry((6, 6, 6), (4.0, 1.5, 0.5), (100.0, 10.0, 0.0))
    labels = ops.connected_components(wrap(da.from_array(mask, chunks=3), geometry))
    assert isinstance(labels, xr.DataArray)
    row = ops.centroids(labels).compute(scheduler="threads").iloc[0]
    assert (row.z, row.y, row.x) == (2.5, 1.5, 4.5)
    assert (row.z_um, row.y_um, row.x_um) == (110.0, 12.25, 2.25)
    assert row.volume_um3 == 8 * 4.0 * 1.5 * 0.5


@pytest.mark.parametrize("chunks", [(40, 50, 60), (7, 11, 13)])
def test_count_per_block(chunks: tuple[int, int, int]) -> None:
    """Every object counted once, in the block holding its centroid."""
    mask = blobby_mask(6)
    reference, n = ndimage.label(mask)
    com = np.array(ndimage.center_of_mass(mask, reference, np.arange(1, n + 1)))
    block = (10, 25, 20)
    expected = np.zeros((4, 2, 3), np.int64)
    np.add.at(expected, tuple((np.floor(com + 0.5).astype(int) // block).T), 1)
    labels = ops.connected_components(da.from_array(mask, chunks=chunks))
    from_labels = ops.count(labels, block=block).compute(scheduler="threads")
    from_points = ops.count(ops.centroids(labels), block=block).compute(scheduler="threads")
    np.testing.assert_array_equal(from_labels, expected)
    np.testing.assert_array_equal(from_points, expected)
    assert from_points.sum() == n


def test_threshold_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((8, 9, 10)).astype(np.float32)
    out = ops.threshold(da.from_array(image, chunks=4), level=0.25).compute()
    np.testing.assert_array_equal(out, (image > 0.25).astype(np.uint8))
    assert out.dtype == np.uint8


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_labels_kept_from_pass_one_equal_the_recomputed_ones(chunks: tuple[int, int, int], tmp_path) -> None:  # noqa: ANN001
    """Inside a cached node's build the block labels are kept as pass 1 computes them and read back
    after the union: the same ids, voxel for voxel, as recomputing them (outside a build), and the
    same partition as scipy; the mask's blocks are computed once, not twice."""
    from cvplgraph.cache.checkpoint import scope

    mask = blobby_mask(7)
    calls: list[int] = []

    def counted(block: np.ndarray) -> np.ndarray:
        if block.size:  # not dask's look at an empty block for the output's type
            calls.append(1)
        return block

    lazy = da.from_array(mask, chunks=chunks).map_blocks(counted, dtype=mask.dtype)
    recomputed = ops.connected_components(lazy, connectivity=26).compute(scheduler="threads")
    assert len(calls) == 2 * lazy.npartitions  # once for the faces, once more for the final ids
    calls.clear()
    with scope(str(tmp_path / "checkpoints")):
        kept = ops.connected_components(lazy, connectivity=26)
    np.testing.assert_array_equal(kept.compute(scheduler="threads"), recomputed)
    assert len(calls) == lazy.npartitions
    assert len(list((tmp_path / "checkpoints").rglob("labels-*/*"))) == lazy.npartitions
    reference, _ = ndimage.label(mask, ndimage.generate_binary_structure(3, 3))
    assert_same_partition(recomputed, reference)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_lookup_table_holds_only_the_ids_merged_across_faces(seed: int) -> None:
    """The union's lookup table lists only ids merged into another (a whole brain's 10⁸ objects are not in it);
    read back it numbers objects exactly as a dense table over every id would: components 1..N in the order
    of their smallest id (scipy's connected components over all ids, ranked)."""
    from scipy import sparse
    from scipy.sparse import csgraph

    from cvplgraph.ops.components import _count
    from cvplgraph.ops.lookup import BLOCK_SHIFT, lut_range, union_table

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, 40)  # ids per block
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    blocks = rng.choice(np.flatnonzero(counts), (300, 2))
    local = np.stack([rng.integers(1, counts[b] + 1) for b in blocks.T], axis=1)
    codes = (blocks << BLOCK_SHIFT) + local
    lut = union_table(offsets, total, codes[:150], codes[150:])
    pairs = offsets[blocks] + local
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(total + 1,) * 2)
    _, comp = csgraph.connected_components(graph, directed=False)
    _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    dense = np.argsort(np.argsort(first))[inverse]
    np.testing.assert_array_equal(lut_range(lut, 0, total + 1), dense)
    for start in rng.integers(0, total, 5):
        stop = int(rng.integers(start + 1, total + 2))
        np.testing.assert_array_equal(lut_range(lut, int(start), stop), dense[start:stop])
    assert lut.shape[1] == total + 1 - len(first) <= len(np.unique(pairs))
    assert _count(lut, total) == dense.max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_whole_volume_steps_agree_taking_their_tables_a_few_entries_at_a_time(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The union and ``big_objects`` take the pairs and the table's pieces ``STEP`` at a time (a whole brain's
    are millions): with a step of 7 they give what they give in one go, and ``big_objects`` lists exactly the
    objects whose blocks lie more than two apart along some axis (every offset id's block, read off a dense
    numbering of all ids), with the last block of each."""
    from cvplgraph.ops import lookup
    from cvplgraph.ops.lookup import BLOCK_SHIFT, big_objects, lut_range, union_table

    rng = np.random.default_rng(seed)
    grid = (4, 5, 6)
    counts = rng.integers(0, 12, int(np.prod(grid)))  # ids per block
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    blocks = rng.choice(np.flatnonzero(counts), (200, 2))  # any two blocks: some pairs are far apart
    local = np.stack([rng.integers(1, counts[b] + 1) for b in blocks.T], axis=1)
    codes = (blocks << BLOCK_SHIFT) + local
    whole = union_table(offsets, total, codes)
    whole_big = big_objects(whole, offsets, grid)
    monkeypatch.setattr(lookup, "STEP", 7)
    lut = union_table(offsets, total, codes[:90], codes[90:])
    np.testing.assert_array_equal(lut, whole)
    got = big_objects(lut, offsets, grid)
    np.testing.assert_array_equal(got, whole_big)

    final = lut_range(lut, 1, total + 1)  # offset ids 1..total
    block_of_id = np.repeat(np.arange(len(counts)), counts)
    places = np.stack(np.unravel_index(block_of_id, grid), axis=1)
    expected = []
    for f in np.unique(final):
        mine = final == f
        spread = places[mine].max(axis=0) - places[mine].min(axis=0)
        if (spread > 1).any():
            expected.append((int(f), int(block_of_id[mine].max())))
    assert len(expected) >= 3  # some objects do span: the test can tell
    assert list(zip(got[0].tolist(), got[1].tolist())) == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_the_union_joins_components_as_scipy_does_long_chains_too(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``_components`` (the union's own, int32, in rounds): each node's smallest node in its component, as
    scipy's connected components say, on a graph of many small components and one long chain through nodes in
    random order (a vessel cut by hundreds of faces takes the most rounds), edges taken 7 at a time."""
    from scipy import sparse
    from scipy.sparse import csgraph

    from cvplgraph.ops import lookup
    from cvplgraph.ops.lookup import _components

    monkeypatch.setattr(lookup, "STEP", 7)
    rng = np.random.default_rng(seed)
    n = 3000
    chain = rng.permutation(n)[:800]  # a path through 800 nodes in random order
    small = rng.integers(0, n, (600, 2))
    edges = np.concatenate([np.stack([chain[:-1], chain[1:]], axis=1), small]).astype(np.int32)
    edges = edges[rng.permutation(len(edges))]
    got = _components(edges[:, 0], edges[:, 1], n)
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, comp = csgraph.connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, n)
    np.minimum.at(smallest, comp, np.arange(n))
    np.testing.assert_array_equal(got, smallest[comp])
    assert len(np.unique(got)) < n - 700  # the chain is one component: the test can tell
