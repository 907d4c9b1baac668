"""Writing cache stores: resumable, never replaced, shared safely by concurrent runs.

Arrays go to ``stores/<key>/<layout>.ome.zarr``: opened or created, never
replaced, written by one task per block that records its chunks afterwards
(:mod:`cvplgraph.cache.resume`). A rerun leaves recorded blocks out of the graph and
hands consumers a value whose recorded blocks are read back from the store.
Tables and block counts are small: one task writes them into a folder of their
own per run (``stores/<key>/<run>.zarr``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cvplgraph.cache.resume import Records, layout_name
from cvplgraph.errors import CacheError, DamagedStore, InputError
from cvplgraph.io.records import expand
from cvplgraph.io.stores import (
    align,
    block_regions,
    block_writes,
    create_array,
    describe,
    levels,
    read_array,
    write_block,
    zarr_location,
)
from cvplgraph.io.tables import TABLE_TYPES, read_value, store_suffix, write_counts, write_table
from cvplgraph.spec.model import StoreSpec
from cvplgraph.types import PortType


class NotFusable(Exception):
    """A store a fused task cannot write block by block; the lowering lowers that chain op by op."""


@dataclass
class CachedWrite:
    """The lazy writes of one cache store, and how much of it an earlier run already wrote."""

    store: str  # path relative to the cache root
    writes: list[Any]
    records: Records | None  # chunk completion records (arrays only)
    blocks_done: int = 0  # blocks left out: every chunk already recorded
    resumed: xr.DataArray | None = None  # the value with recorded blocks read from the store, when any

    @property
    def blocks(self) -> int:
        """Write tasks in this run."""
        return len(self.writes)


def write_cached_value(
    cache_url: str, key: str, value: Any, kind: PortType, store: StoreSpec, name: str
) -> CachedWrite:
    """Lazy writes that store ``value`` of type ``kind`` in the cache under ``key``."""
    if kind.is_array:
        return write_cached_array(cache_url, key, value, kind, store, name)
    rel = f"stores/{key}/{uuid.uuid4().hex[:12]}{store_suffix(kind)}"
    url = f"{cache_url.rstrip('/')}/{rel}"
    if kind in TABLE_TYPES:
        return CachedWrite(rel, [write_table(url, value, kind)], None)
    if kind is PortType.BlockCounts:
        return CachedWrite(rel, [write_counts(url, value)], None)
    raise InputError(f"no storage for values of type {kind}")


def write_cached_array(
    cache_url: str, key: str, value: xr.DataArray, kind: PortType, store: StoreSpec, name: str
) -> CachedWrite:
    """Lazy, resumable writes of ``value`` to ``stores/<key>/<layout>.ome.zarr``.

    Blocks whose chunks are all recorded are left out of the graph (dask then
    computes only what the other blocks need); when level 0 has such blocks,
    consumers and the next pyramid levels read them from the store.
    """
    pyramid = levels(value.data, kind, store)
    shapes = [(tuple(a.shape), c) for a, c in pyramid]
    out, group, records = _new_store(cache_url, key, value, kind, store, name, shapes)
    codec = dict(store.compressor)
    for level in range(len(pyramid)):
        aligned, chunks = pyramid[level]
        array = _open_or_create_array(group, str(level), aligned, chunks, codec)
        done = records.done(level)
        tasks = block_writes(aligned, array, chunks, done, partial(records.marker_url, level))
        out.blocks_done += aligned.npartitions - len(tasks)
        out.writes += tasks
        if level == 0 and len(tasks) < aligned.npartitions and aligned is value.data:
            # what an interrupted run wrote is read back: by consumers and by the next pyramid levels
            spliced = _splice(value.data, array, chunks, done)
            pyramid[1:] = levels(spliced, kind, store)[1:]
            out.resumed = value.copy(data=spliced)  # ops' hints stay: they describe the same values
    return out


@dataclass(frozen=True)
class BlockTarget:
    """Where a fused task writes its block of a cached array: the level's array and the records of its chunks.
    The block's region and record are worked out where the block is written, from its first voxel: a whole
    brain's graph is built without 10⁵ regions and record names."""

    array: zarr.Array
    records: Records

    def write(self, block: np.ndarray, starts: np.ndarray) -> int:
        """:func:`cvplgraph.io.stores.write_block` of ``block``, whose first voxel is ``starts``."""
        chunks = tuple(int(c) for c in self.array.chunks)
        region = tuple(slice(int(s), int(s) + n) for s, n in zip(starts, block.shape))
        ranges = tuple((r.start // c, -(-r.stop // c)) for r, c in zip(region, chunks))
        return write_block(block, self.array, region, self.records.marker_url(0, ranges))


def fused_array_targets(
    cache_url: str, key: str, value: xr.DataArray, kind: PortType, store: StoreSpec, name: str
) -> tuple[CachedWrite, BlockTarget]:
    """The store of a node whose blocks a fused task writes (one level, stored in its blocks: see
    :mod:`cvplgraph.engine.fuse`), created now like :func:`write_cached_array`'s, and where each block goes."""
    aligned, chunks = align(value.data, None)
    if aligned is not value.data:
        raise NotFusable(f"{name}: blocks of unequal sizes")
    out, group, records = _new_store(cache_url, key, value, kind, store, name, [(tuple(value.shape), chunks)])
    array = _open_or_create_array(group, "0", value.data, chunks, dict(store.compressor))
    return out, BlockTarget(array, records)


def _new_store(
    cache_url: str, key: str, value: xr.DataArray, kind: PortType, store: StoreSpec, name: str, shapes: list[Any]
) -> tuple[CachedWrite, zarr.Group, Records]:
    """The store of ``value`` with levels of ``shapes`` ((shape, chunks) each): named by its layout, its
    records prepared, its group created (or opened: an earlier run with the same layout) and described."""
    codec = dict(store.compressor)
    dtype = str(value.data.dtype)
    layout = layout_name(shapes, dtype, codec)
    rel = f"stores/{key}/{layout}.ome.zarr"
    records = Records.of(cache_url, key, layout, shapes)
    records.prepare(dtype, codec)
    group = _open_or_create_group(f"{cache_url.rstrip('/')}/{rel}")
    describe(group, value, kind, store, name)
    return CachedWrite(rel, [], records), group, records


def read_cached(cache_url: str, store: str, kind: PortType) -> Any:
    """The value of a committed cache store (``store`` relative to the cache root), read lazily. An array's
    chunks that the entry's checksums list as written must exist when read (:class:`DamagedStore`
    otherwise, never the fill value); tables check their own chunks."""
    url = f"{cache_url.rstrip('/')}/{store}"
    if not kind.is_array:
        return read_value(url, kind)
    fs, root = fsspec.core.url_to_fs(f"{url}.chunks.json")
    try:
        level0 = json.loads(fs.cat_file(root))["levels"][0]
    except FileNotFoundError:
        return read_array(url)  # an entry from before chunk checksums: nothing to check against
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise DamagedStore(f"{url}.chunks.json: unreadable ({exc.__class__.__name__}: {exc})", url) from None
    stored = frozenset(tuple(int(i) for i in index.split(".")) for index, crc in level0.items() if crc is not None)
    return read_array(url, stored=stored)


def _splice(data: da.Array, array: zarr.Array, chunks: tuple[int, ...], done: set[tuple[int, ...]]) -> da.Array:
    """``data`` whose blocks with every chunk recorded are read from ``array`` instead of computed.

    Consumers of a resumed node then need only the missing blocks computed
    (dask culls the rest of the graph).
    """
    name = "resumed-" + tokenize(data.name, array.store_path, sorted(done))
    layer: dict[Any, Any] = {}
    for index, region, ranges in block_regions(data.chunks, chunks):
        recorded = all(chunk in done for chunk in expand(ranges))
        layer[(name, *index)] = (_read_region, array, region) if recorded else (data.name, *index)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])  # type: ignore[list-item]
    return da.Array(graph, name, data.chunks, dtype=data.dtype)


def _read_region(array: zarr.Array, region: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(array[region])


def _open_or_create_group(url: str) -> zarr.Group:
    try:
        try:
            return zarr.open_group(zarr_location(url), mode="a")
        except zarr.errors.ContainsGroupError:  # a concurrent run created it a moment ago
            return zarr.open_group(zarr_location(url), mode="r+")
    except OSError as exc:
        raise CacheError(f"{url}: cannot create the store ({exc})") from None


def _open_or_create_array(
    group: zarr.Group, path: str, data: da.Array, chunks: tuple[int, ...], codec: dict[str, Any]
) -> zarr.Array:
    try:
        return create_array(group, path, data, chunks, codec)
    except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError, FileExistsError):
        pass  # written (in part) by an earlier or concurrent run with the same layout: same values
    array = group[path]
    if not isinstance(array, zarr.Array) or array.shape != data.shape or tuple(array.chunks) != chunks:
        raise CacheError(f"{group.store}: array {path} does not have the layout its name promises; remove it")
    return array
