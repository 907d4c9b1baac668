"""Checkpoints: small intermediate results an op keeps so that a resumed run need not redo them.

An op whose output needs a global first pass (connected components: every block's faces feed
one lookup table) wraps that pass's small result in :func:`cvplgraph.hooks.checkpoint`; the
engine installs a :class:`FolderCheckpointer` for every cached node it builds. While the executor
builds a node to be cached, the wrapped value is saved to
``partial/<key>/checkpoints/<name>.npy`` as soon as it is computed; if an interrupted run
already saved it, the saved copy is loaded instead and the first pass drops out of the graph.
An op that reduces every block to a small result before merging them (the per-block
statistics behind centroids) wraps the list of block results in :func:`cvplgraph.hooks.checkpoint_blocks`:
each block's result is saved to ``partial/<key>/checkpoints/<name>/<i>`` (see :func:`pack`) as it is
computed, and a resumed run loads the saved ones and computes only the others.
Outside a run (or for a node that is not cached) both return their value unchanged.

``name`` must say everything the value depends on besides the node's key (for example the
working chunk grid), because keys do not cover working chunks.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from numcodecs import Zstd

from cvplgraph.cache.lease import leases
from cvplgraph.cache.manifest import Manifest
from cvplgraph.cache.resume import partial_url
from cvplgraph.errors import CvplError
from cvplgraph.hooks import checkpointing
from cvplgraph.io.records import write_atomically
from cvplgraph.kernels import graph_sources, keys_token

#: Scratch folders are ``partial/<SCRATCH><lease id>`` (see :func:`scratch_url`).
SCRATCH = "scratch-"
#: Fast and, on mostly-background faces, ~300× smaller than the raw bytes.
_CODEC = Zstd(level=1)


class FolderCheckpointer:
    """The :class:`cvplgraph.hooks.Checkpointer` of a cached node: checkpoints in ``folder`` (an fsspec URL)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder.rstrip("/")

    def value(self, name: str, value: Delayed) -> Delayed:
        """``value`` (a Delayed numpy array), saved when computed, or loaded if an earlier run saved it."""
        url = f"{self.folder}/{name}.npy"
        fs, path = fsspec.core.url_to_fs(url)
        if fs.exists(path):
            return dask.delayed(_load, pure=True)(url, dask_key_name=f"checkpoint-load-{tokenize(url)}")
        return dask.delayed(_save, pure=True)(value, url)

    def blocks(self, name: str, values: list[Delayed]) -> list[Delayed]:
        """Per-block results (Delayed tuples of numpy arrays), each saved when computed, or loaded if an
        earlier run saved it (one listing of the folder decides which)."""
        url = f"{self.folder}/{name}"
        fs, path = fsspec.core.url_to_fs(url)
        try:
            saved = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
        except FileNotFoundError:
            saved = set()
        layer_name = f"checkpoint-block-{tokenize(url, keys_token(sorted(saved)), keys_token([v.key for v in values]))}"
        layer: dict[Any, Any] = {}
        needed = []
        for i, value in enumerate(values):
            file = str(i)
            if file in saved:
                layer[(layer_name, i)] = (_load_parts, f"{url}/{file}")
            else:
                layer[(layer_name, i)] = (_save_parts, value.key, f"{url}/{file}")
                needed.append(value)
        graph = HighLevelGraph.from_collections(layer_name, layer, dependencies=graph_sources(needed))
        return [Delayed(key, graph, layer=layer_name) for key in layer]

    def spill(self, name: str, blocks: da.Array, after: Delayed) -> da.Array:
        """``blocks`` saved to ``<name>/<i>`` as each is computed (a task that keeps nothing in memory) and
        read back from there once ``after`` is computed; blocks an earlier run saved are only read."""
        url = f"{self.folder}/{name}"
        fs, path = fsspec.core.url_to_fs(url)
        try:
            saved = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
        except FileNotFoundError:
            saved = set()
        # effects: fresh keys per run
        token = tokenize(url, keys_token(sorted(saved)), blocks.name, after.key, uuid.uuid4())
        save, load = f"spill-save-{token}", f"spill-load-{token}"
        layer: dict[Any, Any] = {}
        for i, index in enumerate(itertools.product(*map(range, blocks.numblocks))):
            file = f"{url}/{i}"
            if str(i) in saved:
                layer[(load, *index)] = (_unspill, file, None, after.key)
            else:
                layer[(save, i)] = (_spill, (blocks.name, *index), file)
                layer[(load, *index)] = (_unspill, file, (save, i), after.key)
        graph = HighLevelGraph.from_collections(load, layer, dependencies=[blocks, after])  # type: ignore[list-item]
        return da.Array(graph, load, blocks.chunks, dtype=blocks.dtype, meta=blocks._meta)


def _spill(block: np.ndarray, url: str) -> int:
    write_atomically(url, pack((block,)))
    return int(block.size)  # small: the block itself is not kept


def _unspill(url: str, saved: int | None, after: Any) -> np.ndarray:
    (block,) = unpack(_read(url))
    return block


def keep_block(block: np.ndarray, url: str, nonzero: np.ndarray | None = None) -> None:
    """Keep a block computed inside a fused task (see :mod:`cvplgraph.engine.fuse`) for :func:`read_kept`.

    ``nonzero``: the flat indices of the block's non-zero values, ascending, when the caller has them; the
    block is then kept as those indices and values (a mask's labels are mostly 0: a 16 MiB block of labels
    is a few hundred KiB to write and read back), provided they are all of its non-zero values."""
    flat = block.reshape(-1)
    if nonzero is not None and nonzero.size == np.count_nonzero(block) and np.all(values := flat[nonzero]):
        # as many non-zero values as listed, and none of those listed is 0: the listed are all of them
        write_atomically(url, pack((np.asarray(block.shape, dtype=np.int64), nonzero, values, flat[:0])))
        return
    _spill(block, url)


def read_kept(url: str, after: Any) -> np.ndarray:
    """A block :func:`keep_block` kept, read once ``after`` (the end of the pass that kept it) exists."""
    parts = unpack(_read(url))
    if len(parts) == 1:  # kept whole
        return parts[0]
    shape, nonzero, values, empty = parts  # kept sparse: its shape, where it is non-zero, what, its dtype
    block = np.zeros(tuple(int(n) for n in shape), dtype=empty.dtype)
    block.reshape(-1)[nonzero] = values
    return block


@dataclass(frozen=True)
class Spilled:
    """A fused task's small results for one chain (the pass's summary, then each reduce's partial: tuples of
    arrays), written to ``<url>.<k>`` as the task made them instead of held by the worker until the global
    step: a whole brain's are gigabytes (10⁸ objects' partial sums), a block's are not. ``head`` is the
    summary's first array, kept (a few numbers, e.g. the block's label count)."""

    url: str
    head: np.ndarray

    def load(self, k: int) -> tuple[np.ndarray, ...]:
        return load_spilled(self.url, k)


def load_spilled(url: str, k: int) -> tuple[np.ndarray, ...]:
    """Item ``k`` of what :func:`spill_results` wrote to ``url`` (read by its url alone, without the handle)."""
    return unpack(_read(f"{url}.{k}"))


def spill_results(url: str, results: tuple[tuple[np.ndarray, ...], ...]) -> Spilled:
    """``results`` written beside each other as ``<url>.<k>`` (see :class:`Spilled`; the first write makes the
    run's scratch folder)."""
    for k, parts in enumerate(results):
        write_atomically(f"{url}.{k}", pack(parts))
    return Spilled(url, np.asarray(results[0][0]))


def scratch_url(cache_url: str, lease_id: str) -> str:
    """The folder a run spills into (:class:`Spilled`): named by its lease, so that a later run can tell a killed
    run's folder (its lease dead) from a running one's."""
    return partial_url(cache_url, f"{SCRATCH}{lease_id}")


def clear_dead_scratch(manifest: Manifest) -> None:
    """Remove the scratch folders of runs that were killed (their lease is dead; see :mod:`cvplgraph.cache.lease`)."""
    fs, root = manifest.fs, manifest.root
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{root}/partial", detail=False)]
    except FileNotFoundError:
        return
    folders = [n for n in names if n.startswith(SCRATCH)]
    if folders:
        live = {lease.id for lease in leases(manifest)[0]}
        for name in folders:
            if name.removeprefix(SCRATCH) not in live:
                remove_scratch(partial_url(manifest.url, name))


def remove_scratch(url: str) -> None:
    """A run's scratch folder and everything in it (nothing when it was never made). Best effort: after a failure,
    tasks still running may write into it while it goes; what is left has no entry and no lease, and
    ``cache gc`` removes it."""
    fs, path = fsspec.core.url_to_fs(url)
    with contextlib.suppress(OSError):
        fs.rm(path, recursive=True)


def scope(folder: str) -> contextlib.AbstractContextManager[None]:
    """Checkpoints of ops built inside go to ``folder``."""
    return checkpointing(FolderCheckpointer(folder))


def _save(array: np.ndarray, url: str) -> np.ndarray:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    write_atomically(url, buffer.getvalue())
    return array


class CheckpointGone(CvplError):
    """A checkpoint the graph was built to load has vanished: a concurrent run computing the same
    node committed it and cleared its checkpoints (see :func:`cvplgraph.engine.execute.execute`)."""


def _read(url: str) -> bytes:
    fs, path = fsspec.core.url_to_fs(url)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        raise CheckpointGone(f"{url}: the checkpoint was removed during the run") from None


def _load(url: str) -> np.ndarray:
    return np.load(io.BytesIO(_read(url)), allow_pickle=False)


def _save_parts(parts: tuple[np.ndarray, ...], url: str) -> tuple[np.ndarray, ...]:
    write_atomically(url, pack(parts))
    return parts


def _load_parts(url: str) -> tuple[np.ndarray, ...]:
    return unpack(_read(url))


def pack(parts: tuple[np.ndarray, ...]) -> bytes:
    """Arrays as bytes: a JSON header (dtype and shape of each) and their zstd-compressed values.

    Not ``np.savez``: for the thousands of small per-block results of a run,
    loading a zip archive costs ~50× more than this (0.9 ms against 0.02 ms).
    """
    arrays = [np.asarray(p) for p in parts]
    header = json.dumps([[a.dtype.str, list(a.shape)] for a in arrays]).encode()
    raw = b"".join(a.tobytes(order="C") for a in arrays)
    body = _CODEC.encode(raw) if raw else b""  # numcodecs' Zstd cannot decode what it makes of no bytes
    return len(header).to_bytes(4, "little") + header + body


def unpack(data: bytes) -> tuple[np.ndarray, ...]:
    """The arrays :func:`pack` wrote."""
    size = int.from_bytes(data[:4], "little")
    header = json.loads(data[4 : 4 + size])
    body = bytes(_CODEC.decode(data[4 + size :])) if len(data) > 4 + size else b""
    out, start = [], 0
    for dtype, shape in header:
        count = math.prod(shape)
        out.append(np.frombuffer(body, dtype=dtype, count=count, offset=start).reshape(tuple(shape)))
        start += count * np.dtype(dtype).itemsize
    return tuple(out)
