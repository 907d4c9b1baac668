"""What an op may ask of the run that builds it, without knowing the run's machinery.

Ops with a global first pass (connected components, the per-block statistics behind
centroids) wrap that pass's small results in :func:`checkpoint` and
:func:`checkpoint_blocks`. Outside a run both return their values unchanged; while the
engine builds a cached node it installs a :class:`Checkpointer` (the cache's, which
saves each value when computed and loads what an interrupted run saved) with
:func:`checkpointing`. Ops import only this module, never the cache.

``name`` must say everything the value depends on besides the node's key (for example
the working chunk grid), because keys do not cover working chunks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Protocol


class Checkpointer(Protocol):
    """Keeps an op's intermediate results for a resumed run (see :mod:`cvplgraph.cache.checkpoint`)."""

    def value(self, name: str, value: Any) -> Any:
        """``value`` (a Delayed numpy array), saved when computed, or loaded if saved before."""
        ...

    def blocks(self, name: str, values: list[Any]) -> list[Any]:
        """Per-block results (Delayed tuples of numpy arrays), each saved or loaded the same way."""
        ...

    def spill(self, name: str, blocks: Any, after: Any) -> Any:
        """``blocks`` (a dask array) saved block by block as computed, and the same array read back from
        the saved blocks once ``after`` (a Delayed) exists."""
        ...


_ACTIVE: ContextVar[Checkpointer | None] = ContextVar("cvplgraph_checkpointer", default=None)


@contextlib.contextmanager
def checkpointing(checkpointer: Checkpointer) -> Iterator[None]:
    """Ops built inside keep their checkpoints with ``checkpointer``."""
    token = _ACTIVE.set(checkpointer)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def checkpoint(name: str, value: Any) -> Any:
    """``value`` kept by the active checkpointer, or unchanged outside a cached node's build."""
    active = _ACTIVE.get()
    return value if active is None else active.value(name, value)


def spill(name: str, blocks: Any, after: Any) -> Any:
    """``blocks`` (a dask array an op needs again after a global step ``after``) saved by the active
    checkpointer as each block is computed and read back from there once ``after`` exists, instead of
    being computed a second time (with everything upstream); None outside a cached node's build,
    where the op recomputes them. Memory stays bounded by the block: no block waits in memory for
    ``after``."""
    active = _ACTIVE.get()
    return None if active is None else active.spill(name, blocks, after)


def checkpoint_blocks(name: str, values: list[Any]) -> list[Any]:
    """Per-block ``values`` kept by the active checkpointer, or unchanged outside a cached node's build."""
    active = _ACTIVE.get()
    return values if active is None else active.blocks(name, values)
