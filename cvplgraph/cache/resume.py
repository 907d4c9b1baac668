"""Chunk-level completion records of stores still being written, for resuming.

zarr does not write a chunk equal to the fill value, and a killed run may leave
a chunk file half-way, so "the chunk file exists" does not mean "the chunk is
done". Each write task therefore records, after its chunks are written, one
empty marker object whose name is the range of chunk indices it wrote::

    partial/<key>/<layout>/layout.json      levels (shape, chunks), dtype, compressor
    partial/<key>/<layout>/<level>/<z0>-<z1>.<y0>-<y1>.<x0>-<x1>   {"i.j.k": checksum or null, …}

A later run with the same key and layout skips every block whose chunks are
all marked. The layout (stored shape and chunks of every pyramid level, dtype,
compressor) names both the store and its records, so a store written with
other chunks is never mixed with this one. Markers are plain objects: they
work on any fsspec filesystem, object stores included, and concurrent runs
writing the same key write the same bytes to the same chunks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from cvplgraph.cache.keys import digest
from cvplgraph.io.records import Ranges, expand

#: A level's stored shape and chunk shape.
Level = tuple[tuple[int, ...], tuple[int, ...]]


def partial_url(cache_url: str, key: str) -> str:
    """Where the records and checkpoints of ``key``'s unfinished stores live."""
    return f"{cache_url.rstrip('/')}/partial/{key}"


def checkpoints_url(cache_url: str, key: str) -> str:
    """Where the ops building ``key`` keep their checkpoints (see :mod:`cvplgraph.cache.checkpoint`)."""
    return f"{partial_url(cache_url, key)}/checkpoints"


def layout_name(levels: Sequence[Level], dtype: str, compressor: dict[str, Any]) -> str:
    """A short name for a store layout (what a chunk index means)."""
    return digest({"levels": [[list(s), list(c)] for s, c in levels], "dtype": dtype, "compressor": compressor})[:12]


def chunk_grid(level: Level) -> tuple[int, ...]:
    shape, chunks = level
    return tuple(math.ceil(s / c) for s, c in zip(shape, chunks))


def marker_name(ranges: Ranges) -> str:
    if len(ranges) == 3:  # the common case, written out: a whole brain names 10⁵ of them while its graph is built
        (a, b), (c, d), (e, f) = ranges
        return f"{a}-{b}.{c}-{d}.{e}-{f}"
    return ".".join(f"{a}-{b}" for a, b in ranges)


def parse_marker(name: str) -> Ranges | None:
    try:
        return tuple((int(a), int(b)) for a, b in (part.split("-") for part in name.split(".")))
    except ValueError:
        return None  # a stray file (an interrupted upload, an editor's backup): not a record


@dataclass(frozen=True)
class Records:
    """The completion records of one store (a key written with one layout)."""

    url: str  # fsspec URL of partial/<key>/<layout>
    levels: tuple[Level, ...]

    @classmethod
    def of(cls, cache_url: str, key: str, layout: str, levels: Sequence[Level]) -> Records:
        return cls(f"{partial_url(cache_url, key)}/{layout}", tuple(levels))

    def prepare(self, dtype: str, compressor: dict[str, Any]) -> None:
        """Create the record folders and describe the layout (before any task runs)."""
        fs, root = fsspec.core.url_to_fs(self.url)
        for level in range(len(self.levels)):
            fs.makedirs(f"{root}/{level}", exist_ok=True)
        document = {
            "levels": [{"shape": list(s), "chunks": list(c)} for s, c in self.levels],
            "dtype": dtype,
            "compressor": compressor,
        }
        fs.pipe_file(f"{root}/layout.json", json.dumps(document, indent=1).encode())

    def done(self, level: int) -> set[tuple[int, ...]]:
        """Chunk indices of ``level`` recorded as written."""
        fs, root = fsspec.core.url_to_fs(self.url)
        try:
            names = [p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/{level}", detail=False)]
        except FileNotFoundError:
            return set()
        out: set[tuple[int, ...]] = set()
        for name in names:
            ranges = parse_marker(name)
            if ranges is not None:
                out.update(expand(ranges))
        return out

    def marker_url(self, level: int, ranges: Ranges) -> str:
        return f"{self.url}/{level}/{marker_name(ranges)}"

    def fraction_done(self) -> float:
        """Share of the chunks of every level recorded as written."""
        total = sum(math.prod(chunk_grid(level)) for level in self.levels)
        done = sum(len(self.done(i)) for i in range(len(self.levels)))
        return done / total if total else 0.0

    def checksums(self) -> list[dict[str, str | None]]:
        """Per level: chunk index ("i.j.k") → checksum of its values (None: all fill value, not stored)."""
        fs, root = fsspec.core.url_to_fs(self.url)
        out: list[dict[str, str | None]] = []
        for level in range(len(self.levels)):
            sums: dict[str, str | None] = {}
            try:
                paths = [p for p in fs.ls(f"{root}/{level}", detail=False) if parse_marker(p.rsplit("/", 1)[-1])]
            except FileNotFoundError:
                paths = []
            for path in paths:
                try:
                    sums.update(json.loads(fs.cat_file(path)))
                except (FileNotFoundError, ValueError):
                    continue  # cleared by a concurrent run that committed this key: its entry stands
            out.append(dict(sorted(sums.items())))
        return out


def clear_partial(cache_url: str, key: str) -> None:
    """Remove the records and checkpoints of ``key`` (once its entry is committed)."""
    fs, root = fsspec.core.url_to_fs(partial_url(cache_url, key))
    try:
        fs.rm(root, recursive=True)
    except OSError:  # gone already, or a concurrent run of the same key is still adding records:
        pass  # leftovers of a committed key are never read again (`cache gc` removes them)


def partial_progress(cache_url: str, key: str) -> float | None:
    """The largest fraction done among unfinished stores of ``key``, or None when there are none."""
    fs, root = fsspec.core.url_to_fs(partial_url(cache_url, key))
    try:
        layouts = fs.ls(root, detail=False)
    except FileNotFoundError:
        return None
    best = None
    for path in layouts:
        try:
            document = json.loads(fs.cat_file(f"{path}/layout.json"))
        except (FileNotFoundError, ValueError):
            continue
        levels = tuple((tuple(d["shape"]), tuple(d["chunks"])) for d in document["levels"])
        records = Records(f"{partial_url(cache_url, key)}/{path.rstrip('/').rsplit('/', 1)[-1]}", levels)
        fraction = records.fraction_done()
        best = fraction if best is None else max(best, fraction)
    return best
