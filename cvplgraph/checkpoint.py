"""Checkpoints: small intermediate results an op keeps so that a resumed run need not redo them.

An op whose output needs a global first pass (connected components: every block's faces feed
one lookup table) wraps that pass's small result in :func:`checkpoint`. While the executor
builds a node to be cached, the wrapped value is saved to
``partial/<key>/checkpoints/<name>.npy`` as soon as it is computed; if an interrupted run
already saved it, the saved copy is loaded instead and the first pass drops out of the graph.
Outside a run (or for a node that is not cached) :func:`checkpoint` returns its value unchanged.

``name`` must say everything the value depends on besides the node's key (for example the
working chunk grid), because keys do not cover working chunks.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from contextvars import ContextVar

import dask
import fsspec
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from .resume import write_atomically

_SCOPE: ContextVar[str | None] = ContextVar("cvplgraph_checkpoint_scope", default=None)


@contextlib.contextmanager
def scope(folder: str) -> Iterator[None]:
    """Checkpoints made inside go to ``folder`` (an fsspec URL)."""
    token = _SCOPE.set(folder.rstrip("/"))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def checkpoint(name: str, value: Delayed) -> Delayed:
    """``value`` (a Delayed numpy array), saved when computed, or loaded if an earlier run saved it."""
    folder = _SCOPE.get()
    if folder is None:
        return value
    url = f"{folder}/{name}.npy"
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        return dask.delayed(_load, pure=True)(url, dask_key_name=f"checkpoint-load-{tokenize(url)}")
    return dask.delayed(_save, pure=True)(value, url)


def _save(array: np.ndarray, url: str) -> np.ndarray:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    write_atomically(url, buffer.getvalue())
    return array


def _load(url: str) -> np.ndarray:
    fs, path = fsspec.core.url_to_fs(url)
    return np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)
