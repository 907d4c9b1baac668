"""Table and block-count stores: zarr groups with one array per column and their geometry in the group
attributes, every chunk stored (an absent chunk is damage, never zeros); and :func:`read_value`, which reads
any stored value by its type."""

from __future__ import annotations

import json
import uuid
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
from cvplgraph.values import DIMS, BlockCounts, Geometry, Table, per_part, unit_attrs


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


def write_table(url: str, table: Table, kind: PortType) -> Delayed:
    """The lazy write of ``table`` to ``url``: a Points table as a Parquet dataset, each partition written by
    the task that has it (:func:`write_partitions`); a region table (small, one partition) as a zarr group."""
    if kind is PortType.Points:
        return write_partitions(url, table)
    return dask.delayed(_write_table, pure=False)(url, table.frame, table.geometry)


# --- Points tables: Parquet datasets, one file per partition ------------------------------------------------
# A whole brain's table (10⁸ rows, ~10 GB) is never in one process: each partition is written where it is
# computed and read back partition by partition. The folder is what pandas and dask read
# (``pandas.read_parquet(folder)``); ``_cvplgraph.json`` in it (a name Parquet readers skip) holds the
# geometry, the columns and every partition's rows, written last (a folder without it was not finished).

#: The document that describes a partitioned table, beside its partitions.
PARTITIONED = "_cvplgraph.json"
#: How a partitioned table's store is named (a table store of any other name is a zarr group).
PARTITIONED_SUFFIX = ".parquet"


def is_partitioned(store: str) -> bool:
    """Whether the table store at ``store`` (a path or URL) is a partitioned table (a Parquet dataset)."""
    return store.rstrip("/").endswith(PARTITIONED_SUFFIX)


def store_suffix(kind: PortType) -> str:
    """The name ending of a new table store of ``kind``."""
    return PARTITIONED_SUFFIX if kind is PortType.Points else ".zarr"


def finished_marker(store: str) -> str:
    """The file a table store has once it is whole: written last."""
    return PARTITIONED if is_partitioned(store) else "zarr.json"


def part_file(url: str, k: int) -> str:
    return f"{url.rstrip('/')}/part-{k:05d}.parquet"


def write_partitions(url: str, table: Table) -> Delayed:
    """One task per partition writing it, then one writing the description (the value is the row count)."""
    written = per_part(_write_part, table.parts, url, pure=False, numbered=True)
    return dask.delayed(_describe_parts, pure=False)(url, table.geometry, *written)


def _write_part(frame: pd.DataFrame, url: str, k: int) -> tuple[int, list[str], int]:
    """Partition ``k`` as a Parquet file of the table at ``url`` (written to a temporary name, then renamed): its
    rows, columns and bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = part_file(url, k)
    try:
        fs, target = fsspec.core.url_to_fs(path)
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
        with fs.open(tmp, "wb") as f:
            # no dictionary pages: float columns gain nothing from them, and writing them costs 3× the rest
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), f, use_dictionary=False)
        fs.mv(tmp, target)
    except OSError as exc:  # a full disk, a quota, a lost mount: named, never a traceback
        raise CacheError(f"{path}: writing a partition of the table failed ({exc.strerror or exc}); expected room "
                         "to write (disk full?); nothing was committed for it") from None  # fmt: skip
    nbytes = int(frame.memory_usage(deep=False).sum())
    count(WRITTEN, nbytes)
    return len(frame), [str(c) for c in frame.columns], nbytes


def _describe_parts(url: str, geometry: Geometry, *written: tuple[int, list[str], int]) -> int:
    rows = [n for n, _, _ in written]
    document = {"type": "Points", "columns": written[0][1], "rows": sum(rows), "partitions": rows,
                "geometry": geometry.to_dict()}  # fmt: skip
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root.rstrip('/')}/{PARTITIONED}", json.dumps(document, indent=1).encode())
    return sum(rows)


def partitioned_meta(url: str) -> dict[str, Any] | None:
    """The description of a partitioned table at ``url``, or None when the store is a zarr table."""
    fs, root = fsspec.core.url_to_fs(url)
    try:
        return json.loads(fs.cat_file(f"{root.rstrip('/')}/{PARTITIONED}"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DamagedStore(f"{url}/{PARTITIONED}: unreadable ({exc})", url) from None


def read_part(url: str, k: int, columns: list[str] | None = None) -> pd.DataFrame:
    """Partition ``k`` of the partitioned table at ``url`` (only ``columns``, when given)."""
    import pyarrow.parquet as pq

    path = part_file(url, k)
    try:
        fs, target = fsspec.core.url_to_fs(path)
        with fs.open(target, "rb") as f:
            frame = pq.read_table(f, columns=columns).to_pandas()
    except FileNotFoundError:
        missing = f"{path}: a partition of the table is missing (deleted while the run read it?)"
        raise DamagedStore(missing, url) from None
    except OSError as exc:
        raise DamagedStore(f"{path}: a partition of the table is unreadable ({exc})", url) from None
    count(READ, int(frame.memory_usage(deep=False).sum()))
    return frame


def points_dataset(url: str) -> Any:
    """The partitioned Points table at ``url`` as an xarray Dataset of dask-backed columns (dimension ``cell``):
    the columns of a run's table, read partition by partition (and column by column) only when asked for.

    The ``cell`` dimension has no coordinate (rows are numbered by position): an index would be an array of every
    row in this process, 0.8 GB at 10⁸ cells (the client's only growth with the cells that memray found)."""
    import dask.array as da
    import pyarrow.parquet as pq
    import xarray as xr
    from dask.base import tokenize

    from cvplgraph.values import with_units

    meta = partitioned_meta(url)
    if meta is None:
        raise DamagedStore(f"{url}: {PARTITIONED} is missing; expected a partitioned table", url)
    with fsspec.open(part_file(url, 0), "rb") as f:
        schema = pq.read_schema(f)
    sizes = tuple(int(n) for n in meta["partitions"])
    columns = {}
    for column in meta["columns"]:  # a column is one graph layer, a chunk per partition (no call per partition)
        dtype = np.dtype(schema.field(column).type.to_pandas_dtype())
        name = f"column-{tokenize(url, column, sizes)}"
        layer = {(name, k): (_column_of, url, k, column) for k in range(len(sizes))}
        columns[column] = (TABLE_DIM, da.Array(layer, name, chunks=(sizes,), dtype=dtype))
    ds = with_units(xr.Dataset(columns))
    ds.attrs.update(meta["geometry"])
    return ds


def _column_of(url: str, k: int, column: str) -> np.ndarray:
    return read_part(url, k, [column])[column].to_numpy()


def partition_problems(url: str, deep: bool) -> list[str]:
    """What is wrong with the partitioned table at ``url`` (files missing; with ``deep``, rows unreadable or not
    the rows its description lists)."""
    meta = partitioned_meta(url)
    if meta is None:
        return [f"{PARTITIONED} is missing"]
    fs, _ = fsspec.core.url_to_fs(url)
    out = []
    for k, rows in enumerate(meta["partitions"]):
        path = part_file(url, k)
        if not fs.exists(fsspec.core.url_to_fs(path)[1]):
            out.append(f"partition {k} ({path}) is missing")
        elif deep and len(read_part(url, k)) != rows:
            out.append(f"partition {k} holds other rows than were written")
    return out


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
    """A stored Points or region table; the rows are read lazily, partition by partition, when the run needs
    them."""
    parted = partitioned_meta(url) if is_partitioned(url) else None
    if parted is not None:
        parts = tuple(dask.delayed(read_part, pure=True)(url, k) for k in range(len(parted["partitions"])))
        return Table(parts, Geometry.from_dict(parted["geometry"]))
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
