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
    """A zarr array whose reads count as bytes read; :func:`read_zarr` wraps it for dask."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, index: Any) -> Any:
        values = self.array[index]
        count(READ, values.nbytes)
        return values


def read_zarr(array: Any, reader: Metered | None = None) -> Any:
    """``dask.array.from_zarr(array)`` with every chunk read counted (same chunks, same name);
    ``reader``: a :class:`Metered` of ``array`` that does more on each read."""
    import dask.array as da
    import numpy as np
    from dask.base import tokenize

    name = "from-zarr-" + tokenize(array, None, {}, array.chunks)
    meta = np.empty((0,) * array.ndim, dtype=array.dtype)
    return da.from_array(reader or Metered(array), array.chunks, name=name, meta=meta)
