"""Per-block kernels: what an op does to one block, declared beside the op so the lowering can fuse.

An op's dask expression is its meaning: ops run alone, in tests and in plugins, and every op works
without a kernel. A kernel states the same computation for one block of numpy, so that the lowering
(:mod:`cvplgraph.engine.fuse`) can run a chain of ops in **one task per block** — read → threshold →
label → faces → partial statistics — instead of one task per op and block, with the block's
intermediate arrays passed in memory and never kept. The global steps of a chain (the union of faces,
the merge of partial statistics) stay the op's own small tasks, built by its ``finish``.

Three kinds, by what a block's result depends on:

:class:`Pointwise`
    a block of the output from the same block of the input, voxel for voxel (``threshold``);
:class:`LocalPass`
    the block-local first pass of a global algorithm: the block's provisional result and a small
    summary, finished by global steps over all summaries (``connected_components``);
:class:`Reduce`
    small per-block partial results of a table, merged by one global step (``centroids``).

A fused chain gives the same bytes as the ops run one by one (tests/engine/test_fuse.py proves it
over several chunkings); the lowering falls back to the ops' own graphs wherever a chain cannot be
fused (see docs/design.md, "Fusion").
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pointwise:
    """``block(x, **params) -> y``: ``y`` has ``x``'s shape; each voxel of ``y`` from the same voxel of ``x``."""

    block: Callable[..., Any]


@dataclass(frozen=True)
class LocalPass:
    """The first pass of a global algorithm over one block, and the global steps after it.

    ``block(x, **params) -> (values, summary)``: the block's provisional values (an array of ``x``'s
    shape, e.g. labels numbered within the block) and a small summary (tuple of arrays).

    ``finish(summaries, provisional, like, kept, refs, heads, **params) -> value``: the node's value from the
    per-block summaries: ``summaries`` are the Delayed tasks that hold them (C order of blocks) and
    ``refs`` how a task names each one (a small task, run inline, that picks it out of its fused task's
    result, or reads it back from where the fused task spilled it); ``heads`` name each summary's first
    array alone, which stays in memory (it must be a few numbers, e.g. a label count: a task needing every
    block's gets them without reading back every summary); ``provisional`` is a dask array equal to the
    provisional values (computed only if a consumer needs it); ``kept(after)`` is the same array read back
    from where the fused tasks saved it, each block once ``after`` (a Delayed computed after every block)
    exists (None when they saved nothing); ``like`` is the op's input (for its geometry). The fused task
    hands every reduce the flat indices of ``x``'s non-zero voxels, so a pass's values must be non-zero
    exactly where ``x`` is.

    ``dtype``: the finished value's dtype (an array of ``x``'s shape and chunks), when it is known beforehand;
    ``plan`` then estimates the node without building its per-block graph.
    """

    block: Callable[..., Any]
    finish: Callable[..., Any]
    dtype: str | None = None


@dataclass(frozen=True)
class Reduce:
    """A table built from small per-block partial results.

    ``block(values, foreground, *others, starts) -> partial``: from the provisional values of the pass
    that feeds it, the flat indices of the block's foreground (ascending), the blocks of its other
    array inputs, and the block's first voxel in the volume.

    ``finish(blocks, refs, source, *others, **params) -> value``: the node's value from the per-block
    partials: ``blocks`` are the Delayed tasks that hold them (C order) and ``refs`` how a task names each
    one (a small task, run inline, that picks it out of its block's result or reads it back from where the
    fused task spilled it); ``source`` is the pass's value. A partial is a tuple of numpy arrays.
    """

    block: Callable[..., Any]
    finish: Callable[..., Any]


Kernel = Pointwise | LocalPass | Reduce


# --- building per-block graphs fast ------------------------------------------------------------------
# A whole brain has 10⁵ blocks: a graph layer over them must cost microseconds per block to build. Two dask
# conveniences cost far more at that size: tokenizing a list of 10⁵ keys, and naming 10⁵ Delayed objects of one
# graph as a layer's dependencies (each is checked as a collection and its graph merged).


def keys_token(keys: Sequence[Any]) -> str:
    """A token naming a sequence of task keys or small task tuples (strings, ints, functions and tuples of them),
    unique within this process: what ``tokenize(list(keys))`` is for here, at a hundredth of its cost. The keys'
    pickle (a module's function by its importable name: one function per name), a third of their text's cost;
    their text when something in them does not pickle (a local function, by its address: the token is then not
    stable across processes; nothing keeps it)."""
    try:
        data = pickle.dumps(list(keys), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        data = b"repr:" + repr(list(keys)).encode()
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def graph_sources(collections: Iterable[Any]) -> list[Any]:
    """One of ``collections`` per distinct graph and layer: the dependencies to give
    ``HighLevelGraph.from_collections`` for tasks that use many blocks of a few layers."""
    seen: dict[tuple[int, tuple[Any, ...]], Any] = {}
    for c in collections:
        seen.setdefault((id(c.__dask_graph__()), tuple(c.__dask_layers__())), c)
    return list(seen.values())
