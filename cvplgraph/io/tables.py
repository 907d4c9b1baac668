"""Table and block-count stores: zarr groups with one array per column and their geometry in the group
attributes, every chunk stored (an absent chunk is damage, never zeros); and :func:`read_value`, which reads
any stored value by its type."""

from __future__ import annotations

from typing import Any

import dask
import fsspec
import numpy as np
import pandas as pd
import zarr
from dask.delayed import Delayed

from cvplgraph.errors import CacheError, DamagedStore, InputError
from cvplgraph.io.meter import READ, WRITTEN, count
from cvplgraph.io.stores import child_array, create_group, cvplgraph_attrs, open_group, read_array, zarr_location
from cvplgraph.types import PortType
from cvplgraph.values import DIMS, BlockCounts, Geometry, Table, unit_attrs


def _write_table(url: str, frame: pd.DataFrame, geometry: Geometry) -> int:
    try:
        return _write_columns(url, frame, geometry)
    except OSError as exc:  # a full disk, a quota, a lost mount: named, never a traceback
        raise CacheError(f"{url}: writing the table failed ({exc.strerror or exc}); expected room to write "
                         "(disk full?); nothing was committed for it") from None  # fmt: skip


#: The dimension of every column of a table store (named so that ``xarray.open_zarr`` opens the store as a
#: Dataset, the cell or row index as its dimension, as :meth:`~cvplgraph.values.Table.to_xarray` names it).
TABLE_DIM = "cell"


def _write_columns(url: str, frame: pd.DataFrame, geometry: Geometry) -> int:
    import asyncio
    import warnings

    import zarr.api.asynchronous
    from zarr.core.sync import sync

    columns = {}
    for column in frame.columns:
        values = frame[column].to_numpy()
        if values.dtype == object:  # text columns (region names): fixed-width unicode, which zarr stores
            values = values.astype(str)
        columns[column] = values

    async def write_all() -> zarr.Group:  # every column at once: zarr's file writes wait on threads, mostly
        group = await zarr.api.asynchronous.open_group(store=zarr_location(url), mode="w")
        await asyncio.gather(*(
            group.create_array(column, data=values, chunks=(max(1, min(len(values), 1 << 20)),), config=EVERY_CHUNK,
                               dimension_names=[TABLE_DIM], attributes=unit_attrs(column))
            for column, values in columns.items()
        ))  # fmt: skip
        return zarr.Group(group)

    with warnings.catch_warnings():  # zarr flags fixed-width unicode as not yet in the v3 spec
        warnings.simplefilter("ignore")
        group = sync(write_all())
    group.attrs["cvplgraph"] = {
        "type": "Points",
        "columns": list(frame.columns),
        "rows": len(frame),
        "geometry": geometry.to_dict(),
        "every_chunk": True,
    }
    count(WRITTEN, int(frame.memory_usage(deep=False).sum()))
    return len(frame)


def write_table(url: str, table: Table) -> Delayed:
    return dask.delayed(_write_table, pure=False)(url, table.frame, table.geometry)


#: Tables and block counts store every chunk, fill values too, so that an absent chunk is damage, never zeros
#: (their stores say so with ``every_chunk``; older ones are read unchecked).
EVERY_CHUNK: Any = {"write_empty_chunks": True}  # zarr ArrayConfigParams


def _column(group: zarr.Group, name: str, url: str) -> np.ndarray:
    """A column (every chunk read); with ``every_chunk`` set, a chunk absent after the read raises
    :class:`DamagedStore` instead of passing for fill values."""
    array = child_array(group, name, url)
    values = np.asarray(array[:])
    if cvplgraph_attrs(group).get("every_chunk"):
        fs, root = fsspec.core.url_to_fs(url)
        for at in np.ndindex(*(-(-s // c) for s, c in zip(array.shape, array.chunks))):
            path = f"{array.store_path.path}/{array.metadata.encode_chunk_key(at)}"
            if not fs.exists(f"{root.rstrip('/')}/{path}"):
                raise DamagedStore(f"{url}: chunk {path} is missing (deleted while the run read it?)", url)
    return values


def _read_frame(url: str, columns: list[str]) -> pd.DataFrame:
    group = open_group(url)
    frame = pd.DataFrame({c: _column(group, c, url) for c in columns})
    count(READ, int(frame.memory_usage(deep=False).sum()))
    return frame


def read_table(url: str) -> Table:
    """A stored Points table; the rows are read lazily, when the run needs them."""
    meta = cvplgraph_attrs(open_group(url))
    frame = dask.delayed(_read_frame, pure=True)(url, list(meta["columns"]))
    return Table(frame, Geometry.from_dict(meta["geometry"]))


def _write_counts(url: str, counts: np.ndarray, block: tuple[int, int, int], geometry: Geometry) -> int:
    group = create_group(url)
    group.create_array("counts", data=counts, config=EVERY_CHUNK, dimension_names=list(DIMS))  # blocks along z, y, x
    count(WRITTEN, counts.nbytes)
    group.attrs["cvplgraph"] = {
        "type": "BlockCounts",
        "block": list(block),
        "total": int(counts.sum()),
        "geometry": geometry.to_dict(),
        "every_chunk": True,
    }
    return int(counts.sum())


def write_counts(url: str, value: BlockCounts) -> Delayed:
    return dask.delayed(_write_counts, pure=False)(url, value.counts, value.block, value.geometry)


def read_counts(url: str) -> BlockCounts:
    meta = cvplgraph_attrs(open_group(url))
    counts = dask.delayed(_read_counts, pure=True)(url)
    block = (int(meta["block"][0]), int(meta["block"][1]), int(meta["block"][2]))
    return BlockCounts(counts, block, Geometry.from_dict(meta["geometry"]))


def _read_counts(url: str) -> np.ndarray:
    counts = _column(open_group(url), "counts", url)
    count(READ, counts.nbytes)
    return counts


#: Types carried as a :class:`~cvplgraph.values.Table` and stored as a zarr group of columns.
TABLE_TYPES = (PortType.Points, PortType.RegionTable)


def read_value(url: str, kind: PortType) -> Any:
    if kind.is_array:
        return read_array(url)
    if kind in TABLE_TYPES:
        return read_table(url)
    if kind is PortType.BlockCounts:
        return read_counts(url)
    raise InputError(f"no storage for values of type {kind}")
