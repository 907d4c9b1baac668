"""Bytes read and written by cvplgraph's readers and writers, counted as they happen.

Counts are decoded sizes (what the ops see, not what the store holds). In this
process they add up in :func:`local_totals`; inside a dask worker's task they
also go to distributed's fine performance metrics (``Worker.digests_total``),
where :mod:`cvplgraph.engine.progress` collects them.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from cvplgraph.errors import CvplError, InputError

READ, WRITTEN = "cvplgraph-read", "cvplgraph-written"
_lock = threading.Lock()
_totals = {READ: 0, WRITTEN: 0}


def count(label: str, nbytes: int) -> None:
    """Add ``nbytes`` to the bytes read (:data:`READ`) or written (:data:`WRITTEN`)."""
    with _lock:
        _totals[label] += int(nbytes)
    metrics = sys.modules.get("distributed.metrics")  # not imported: not in a worker
    if metrics is not None:
        metrics.context_meter.digest_metric(label, int(nbytes), "bytes")  # a no-op outside a worker's task


def local_totals() -> dict[str, int]:
    """Bytes counted in this process so far, by label."""
    with _lock:
        return dict(_totals)


class Metered:
    """A zarr array whose reads count as bytes read; :func:`read_zarr` wraps it for dask.

    A chunk that cannot be read or decoded (a damaged file, bytes from another codec) is an
    :class:`~cvplgraph.errors.InputError` naming the chunk's file, its index and the decoder's
    complaint, not a traceback from inside the codec.
    """

    def __init__(self, array: Any, label: str = "") -> None:
        from cvplgraph.io.chunks import ChunkReader

        self.array = array
        self.label = label
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.chunk_reader = ChunkReader.of(array)  # whole chunks without zarr's copies, where it applies

    def __getitem__(self, index: Any) -> Any:
        try:
            values = None
            if self.chunk_reader is not None:
                values = self.chunk_reader.read(index if isinstance(index, tuple) else (index,))
            if values is None:
                values = self.array[index]
        except CvplError:
            raise
        except Exception as exc:  # noqa: BLE001 - codecs and stores raise many types; each is named below
            raise InputError(chunk_problem(self.array, index, exc, self.label)) from None
        count(READ, values.nbytes)
        return values


def chunk_problem(array: Any, index: Any, exc: BaseException, label: str = "") -> str:
    """One line: the file of the (first) chunk a read of ``index`` touched, where it sits, and why it failed."""
    index = index if isinstance(index, tuple) else (index,)
    starts = [(s.start or 0) if isinstance(s, slice) else int(s) for s in index]
    coords = tuple(int(s) // int(c) for s, c in zip(starts, array.chunks))
    try:
        key = array.metadata.encode_chunk_key(coords)
    except Exception:  # noqa: BLE001 - an array without zarr v2/v3 metadata: the index alone
        key = ".".join(map(str, coords))
    store = str(array.store_path).removeprefix("file://").rstrip("/")
    where = label or f"array {array.path!r} of {store.removesuffix(array.path).rstrip('/')}"
    complaint = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
    return (f"{store}/{key}: chunk {coords} of {where} cannot be read ({complaint}); the file is damaged or "
            "was not written by zarr: restore it from the original data")  # fmt: skip


def read_zarr(array: Any, label: str = "", reader: Metered | None = None, post: Any = None) -> Any:
    """``dask.array.from_zarr(array)`` with every chunk read counted (same chunks); ``label`` says which array
    it is in messages (default: its path in its store); ``reader``: a :class:`Metered` of ``array`` that does
    more on each read; ``post(values, index, slices)``: what each read block becomes, in the read's own task.

    The graph is one layer of plain tasks, built in microseconds per chunk: dask's blockwise layers cost tens of
    microseconds per task to materialise, seconds for a whole brain's 10⁵ chunks (docs/scale.md)."""
    import dask.array as da
    import numpy as np
    from dask._task_spec import DataNode, Task, TaskRef
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    from cvplgraph.values import block_slices

    name = "from-zarr-" + tokenize(array, None, {}, array.chunks, post)
    chunks = da.core.normalize_chunks(array.chunks, array.shape)
    source = "original-" + name
    layer: dict[Any, Any] = {source: DataNode(source, reader or Metered(array, label))}
    ref = TaskRef(source)
    for index, slices in block_slices(chunks):
        key = (name, *index)
        layer[key] = Task(key, _read_block, ref, slices, post, index)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    meta = np.empty((0,) * array.ndim, dtype=array.dtype if post is None else post.dtype)
    return da.Array(graph, name, chunks, meta=meta)


def _read_block(reader: Any, slices: tuple[slice, ...], post: Any, index: tuple[int, ...]) -> Any:
    """One chunk, read (and made into ``post``'s value)."""
    import numpy as np

    values = np.asarray(reader[slices])
    return values if post is None else post(values, index, slices)
