"""Whole-chunk reads (cvplgraph/io/chunks.py) give exactly what zarr gives, or leave the read to zarr.

Every array is written by zarr itself and read back by zarr as the reference, chunk by chunk and over
selections that are not whole chunks; the reader must be in use where it claims to apply (else these
tests would pass on zarr's own reads), and must refuse what it cannot check.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

from cvplgraph.errors import InputError
from cvplgraph.io.chunks import ChunkReader
from cvplgraph.io.meter import Metered

SHAPE, CHUNKS = (13, 20, 17), (5, 8, 6)  # edge chunks on every axis


def volume(dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 1000, SHAPE) if np.dtype(dtype).kind in "iu" else rng.random(SHAPE) * 100
    values = values.astype(dtype)
    values[10:, 16:, 12:] = 0  # a chunk of fill values: zarr does not write it, the reader must say "zarr's"
    return values


def v3(path: Path, values: np.ndarray, **kwargs: Any) -> zarr.Array:
    array = zarr.create_array(str(path), shape=values.shape, chunks=CHUNKS, dtype=values.dtype, **kwargs)
    array[...] = values
    return zarr.open_array(str(path), mode="r")


def v2(path: Path, values: np.ndarray, compressor: Any) -> zarr.Array:
    array = zarr.create_array(str(path), shape=values.shape, chunks=CHUNKS, dtype=values.dtype, zarr_format=2,
                              compressors=compressor)  # fmt: skip
    array[...] = values
    return zarr.open_array(str(path), mode="r")


def chunk_selections(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    return [
        tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
        for idx in itertools.product(*(range(-(-s // c)) for s, c in zip(shape, chunks)))
    ]


#: Selections that are not one whole chunk: inside one chunk (the first three, read here), then ones
#: across chunks, with a step or empty (zarr's).
OTHER_SELECTIONS: list[tuple[Any, ...]] = [
    (slice(1, 4), slice(2, 7), slice(0, 5)),
    (3, slice(8, 16), slice(12, 17)),  # an integer, as a channel or time pick reads
    (-1, -2, slice(6, 12)),  # negative integers
    (-1, -2, slice(None)),
    (slice(0, 13), slice(0, 20), slice(0, 17)),
    (slice(0, 5, 2), slice(0, 8), slice(0, 6)),
    (slice(2, 2), slice(0, 8), slice(0, 6)),
]


@pytest.mark.parametrize(
    ("dtype", "codecs"),
    [
        ("float32", {"compressors": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")}),
        ("uint16", {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")}),
        ("uint8", {"compressors": BloscCodec(cname="blosclz", shuffle="noshuffle")}),
        ("float64", {"compressors": None}),
    ],
)
def test_every_chunk_and_selection_equals_zarr(tmp_path: Path, dtype: str, codecs: dict[str, Any]) -> None:
    values = volume(dtype)
    array = v3(tmp_path / "a.zarr", values, **codecs)
    reader = ChunkReader.of(array)
    assert reader is not None, "the reader must apply to plain blosc / uncompressed v3 arrays"
    metered = Metered(array)
    read_here = 0
    for selection in chunk_selections(SHAPE, CHUNKS) + OTHER_SELECTIONS:
        mine = reader.read(selection)
        read_here += mine is not None
        expected = array[selection]
        got = metered[selection]
        assert got.dtype == expected.dtype and got.shape == expected.shape, selection
        np.testing.assert_array_equal(got, expected)
        assert np.array_equal(got, values[selection]), selection  # and both equal what was written
        if mine is not None:
            np.testing.assert_array_equal(mine, expected)
    # every written chunk and the selections inside one chunk but the all-zero (unwritten) one are read here
    assert read_here == len(chunk_selections(SHAPE, CHUNKS)) - 1 + 3


@pytest.mark.parametrize("compressor", [{"id": "blosc", "cname": "zstd", "clevel": 1}, None])
def test_zarr_v2_arrays(tmp_path: Path, compressor: dict[str, Any] | None) -> None:
    from numcodecs import Blosc

    values = volume("float32", seed=3)
    array = v2(tmp_path / "b.zarr", values, Blosc(cname="zstd", clevel=1) if compressor else None)
    reader = ChunkReader.of(array)
    assert reader is not None
    for selection in chunk_selections(SHAPE, CHUNKS):
        got = Metered(array)[selection]
        np.testing.assert_array_equal(got, array[selection])
        np.testing.assert_array_equal(got, values[selection])


@pytest.mark.parametrize(
    "codecs",
    [
        {"compressors": ZstdCodec(level=1)},  # numcodecs would decode a short frame into a bigger buffer silently
        {"compressors": GzipCodec(level=1)},
        {"serializer": BytesCodec(endian="big")},
        {"shards": (10, 16, 12)},
        {"filters": [zarr.codecs.TransposeCodec(order=(2, 1, 0))]},
    ],
    ids=["zstd", "gzip", "big-endian", "sharded", "transposed"],
)
def test_what_it_does_not_check_is_read_by_zarr(tmp_path: Path, codecs: dict[str, Any]) -> None:
    values = volume("float32", seed=5)
    array = v3(tmp_path / "c.zarr", values, **codecs)
    assert ChunkReader.of(array) is None
    selection = chunk_selections(SHAPE, CHUNKS)[-1]
    np.testing.assert_array_equal(Metered(array)[selection], values[selection])


def chunk_file(array: zarr.Array, at: tuple[int, ...]) -> Path:
    return Path(str(array.store_path.store.root)) / array.metadata.encode_chunk_key(at)


def test_a_chunk_of_another_size_is_refused_not_decoded_into_part_of_the_block(tmp_path: Path) -> None:
    """A blosc frame of the wrong size (here a chunk of a smaller array) would leave the rest of the block
    as whatever memory held: it must be an error naming the chunk's file."""
    array = v3(tmp_path / "d.zarr", volume("float32"), compressors=BloscCodec(cname="zstd"))
    small = zarr.create_array(str(tmp_path / "e.zarr"), shape=(5, 8, 3), chunks=(5, 8, 3), dtype="float32",
                              compressors=BloscCodec(cname="zstd"))  # fmt: skip
    small[...] = 1.0
    target = chunk_file(array, (1, 1, 1))
    target.write_bytes(chunk_file(small, (0, 0, 0)).read_bytes())
    with pytest.raises(InputError) as info:
        Metered(array, "the test array")[5:10, 8:16, 6:12]
    message = str(info.value)
    assert str(target) in message and "chunk (1, 1, 1)" in message and "\n" not in message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_chunks_are_one_line_naming_the_file(tmp_path: Path, damage: str) -> None:
    array = v3(tmp_path / "f.zarr", volume("uint16"), compressors=BloscCodec(cname="lz4"))
    target = chunk_file(array, (2, 2, 1))
    data = target.read_bytes()
    target.write_bytes({"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 4, "empty": b""}[damage])
    with pytest.raises(InputError) as info:
        Metered(array)[10:13, 16:20, 6:12]
    assert str(target) in str(info.value) and "\n" not in str(info.value)


def test_blocks_are_new_arrays_each_read(tmp_path: Path) -> None:
    """No buffer is shared between reads: a block a task keeps is never overwritten by the next read."""
    values = volume("float32", seed=7)
    array = v3(tmp_path / "g.zarr", values, compressors=BloscCodec(cname="zstd"))
    metered = Metered(array)
    first = metered[5:10, 0:8, 0:6]
    kept = first.copy()
    second = metered[5:10, 8:16, 0:6]
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(second, values[5:10, 8:16, 0:6])


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize(
    ("dtype", "compressor"),
    [
        ("int32", BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")),
        ("uint8", BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")),
        ("float32", BloscCodec(cname="blosclz", clevel=9, shuffle="noshuffle")),
        ("uint16", None),
    ],
)
def test_written_chunks_are_zarrs_own_files(tmp_path: Path, dtype: str, compressor: Any) -> None:
    """Every chunk written here is byte for byte the file zarr writes for the same values (edge chunks
    padded with the fill value, chunks of fill values not stored), and zarr reads the values back."""
    from cvplgraph.io.chunks import ChunkWriter

    values = volume(dtype, seed=11)
    values[5:10, 8:16, 6:12] = 0  # a second chunk of fill values, inside
    ours = zarr.create_array(str(tmp_path / "ours.zarr"), shape=SHAPE, chunks=CHUNKS, dtype=dtype,
                             compressors=compressor, fill_value=0)  # fmt: skip
    theirs = zarr.create_array(str(tmp_path / "theirs.zarr"), shape=SHAPE, chunks=CHUNKS, dtype=dtype,
                               compressors=compressor, fill_value=0)  # fmt: skip
    theirs[...] = values
    writer = ChunkWriter.of(ours)
    assert writer is not None
    ours[5:10, 8:16, 6:12] = np.ones((5, 8, 6), dtype=dtype)  # an earlier chunk, to be removed as zarr would
    for selection in chunk_selections(SHAPE, CHUNKS):
        assert writer.write(selection, values[selection])
    files = {p.relative_to(tmp_path / "ours.zarr"): p.read_bytes() for p in (tmp_path / "ours.zarr").rglob("c/**/*")
             if p.is_file()}  # fmt: skip
    expected = {p.relative_to(tmp_path / "theirs.zarr"): p.read_bytes()
                for p in (tmp_path / "theirs.zarr").rglob("c/**/*") if p.is_file()}  # fmt: skip
    assert files.keys() == expected.keys() and len(files) == len(chunk_selections(SHAPE, CHUNKS)) - 2
    assert all(files[k] == expected[k] for k in files)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "ours.zarr"), mode="r")[...], values)
    assert not list((tmp_path / "ours.zarr").rglob("*.partial"))


def test_the_writer_refuses_what_is_not_one_whole_chunk(tmp_path: Path) -> None:
    from cvplgraph.io.chunks import ChunkWriter

    array = zarr.create_array(str(tmp_path / "h.zarr"), shape=SHAPE, chunks=CHUNKS, dtype="int32",
                              compressors=BloscCodec(cname="lz4"))  # fmt: skip
    writer = ChunkWriter.of(array)
    assert writer is not None
    block = np.ones((5, 8, 6), dtype=np.int32)
    assert not writer.write((slice(1, 6), slice(0, 8), slice(0, 6)), block)  # not aligned
    assert not writer.write((slice(0, 10), slice(0, 8), slice(0, 6)), np.ones((10, 8, 6), np.int32))  # two chunks
    assert not writer.write((slice(0, 5), slice(0, 8), slice(0, 6)), block.astype(np.int64))  # another dtype
    assert not writer.write((slice(10, 13), slice(16, 20), slice(12, 17)), block)  # the edge chunk is smaller
    assert not list((tmp_path / "h.zarr").rglob("c/**/*"))
    for codecs in ({"compressors": ZstdCodec()}, {"shards": (10, 16, 12)}):
        other = zarr.create_array(str(tmp_path / f"o{len(codecs)}{next(iter(codecs))}.zarr"), shape=SHAPE,
                                  chunks=CHUNKS, dtype="int32", **codecs)  # fmt: skip
        assert ChunkWriter.of(other) is None


def test_every_chunk_is_written_where_the_array_asks_for_it(tmp_path: Path) -> None:
    """Arrays created with ``write_empty_chunks`` (tables, block counts) keep chunks of fill values."""
    from cvplgraph.io.chunks import ChunkWriter

    array = zarr.create_array(str(tmp_path / "k.zarr"), shape=(10,), chunks=(4,), dtype="int64",
                              compressors=BloscCodec(cname="lz4"), config={"write_empty_chunks": True})  # fmt: skip
    writer = ChunkWriter.of(array)
    assert writer is not None
    for start in (0, 4, 8):
        assert writer.write((slice(start, min(start + 4, 10)),), np.zeros(min(4, 10 - start), np.int64))
    assert sorted(p.name for p in (tmp_path / "k.zarr" / "c").iterdir()) == ["0", "1", "2"]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "k.zarr"), mode="r")[...], np.zeros(10))
