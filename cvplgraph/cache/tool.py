"""`cvplgraph cache`: list, show, verify and garbage-collect cache entries."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from cvplgraph.cache.lease import leased_keys
from cvplgraph.cache.manifest import Entry, Manifest
from cvplgraph.io.stores import child_array, chunk_checksum, multiscales, zarr_location
from cvplgraph.io.tables import is_partitioned, partition_problems
from cvplgraph.types import PortType


@dataclass(frozen=True)
class Problem:
    entry: Entry
    reason: str


def _array_problems(manifest: Manifest, entry: Entry, deep: bool) -> list[str]:
    url = manifest.store_url(entry.store)
    try:
        group = zarr.open_group(zarr_location(url), mode="r")
        count = len(multiscales(dict(group.attrs.asdict()), url)["datasets"])
        levels = [child_array(group, str(i), url) for i in range(count)]
    except Exception as exc:  # noqa: BLE001 — any failure to open is what verify reports
        return [f"store unreadable ({exc.__class__.__name__}: {exc})"]
    first = levels[0]
    if entry.shape is not None and list(first.shape) != entry.shape:
        return [f"level 0 has shape {list(first.shape)}, the entry says {entry.shape}"]
    if entry.dtype is not None and str(first.dtype) != entry.dtype:
        return [f"level 0 has dtype {first.dtype}, the entry says {entry.dtype}"]
    try:
        sums = json.loads(manifest.fs.cat_file(f"{manifest.root}/{entry.store}.chunks.json"))["levels"]
    except FileNotFoundError:
        return []  # an entry from before chunk checksums: metadata is all there is to check
    out = []
    for level, (array, recorded) in enumerate(zip(levels, sums)):
        present = {
            p.rsplit("/c/", 1)[-1].replace("/", ".")
            for p in manifest.fs.find(f"{manifest.root}/{entry.store}/{level}/c")
        }
        for index, checksum in recorded.items():
            if checksum is None:
                continue
            if index not in present:
                out.append(f"level {level} chunk {index} is missing")
            elif deep:
                at = tuple(int(i) for i in index.split("."))
                region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(at, array.chunks))
                try:
                    values = np.asarray(array[region])
                except Exception as exc:  # noqa: BLE001 — undecodable bytes are damage
                    out.append(f"level {level} chunk {index} cannot be decoded ({exc.__class__.__name__})")
                    continue
                if chunk_checksum(values) != checksum:
                    out.append(f"level {level} chunk {index} has other values than were written")
    return out


def _table_problems(manifest: Manifest, entry: Entry, deep: bool) -> list[str]:
    url = manifest.store_url(entry.store)
    try:
        if is_partitioned(url):  # a Points table in partitions
            return partition_problems(url, deep)
        group = zarr.open_group(zarr_location(url), mode="r")
        arrays = [child_array(group, name, url) for name in group.array_keys()]
        if deep:
            for array in arrays:
                np.asarray(array[:])
    except Exception as exc:  # noqa: BLE001
        return [f"store unreadable ({exc.__class__.__name__}: {exc})"]
    return [] if arrays else ["store holds no arrays"]


def verify(manifest: Manifest, *, deep: bool = False) -> list[Problem]:
    """Re-check every committed entry; damaged ones are moved out of the manifest (recomputed next run)."""
    problems = []
    for entry in sorted(manifest.entries(), key=lambda e: e.created):
        check = _array_problems if PortType(entry.type).is_array else _table_problems
        found = check(manifest, entry, deep)
        if found:
            reason = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
            manifest.invalidate(entry.key, reason)
            problems.append(Problem(entry, reason))
    return problems


def garbage(
    entries: list[Entry],
    *,
    keep: set[str] | None = None,
    max_age_days: float | None = None,
    max_bytes: int | None = None,
) -> list[Entry]:
    """Entries to remove: not in ``keep`` (when given), older than the age budget, then the oldest
    beyond the size budget. Entries in ``keep`` are never removed."""
    entries = sorted(entries, key=lambda e: e.created)
    now = time.time()
    doomed = []
    for entry in entries:
        if keep is not None and entry.key in keep:
            continue
        unreachable = keep is not None
        too_old = max_age_days is not None and now - entry.created > max_age_days * 86400
        if unreachable or too_old:
            doomed.append(entry)
    if max_bytes is not None:
        left = [e for e in entries if e not in doomed]
        total = sum(e.bytes for e in left)
        for entry in left:  # oldest first
            if total <= max_bytes:
                break
            if keep is not None and entry.key in keep:
                continue
            doomed.append(entry)
            total -= entry.bytes
    return doomed


@dataclass(frozen=True)
class Orphan:
    """Something in the cache that no entry describes."""

    path: str  # relative to the cache root
    bytes: int
    reason: str


def orphans(manifest: Manifest, committed: set[str], *, grace_seconds: float) -> list[Orphan]:
    """Stores and records without an entry (``committed``: the keys that have one), last written
    more than ``grace_seconds`` ago (a run still writing them is younger), and records left beside
    committed entries; never those of a key a live lease names (read after listing: a run writes
    its lease before it creates a store, so a store listed here has its lease seen here).

    What a key was last written is the newest modification time among its chunk records and
    checkpoints and the metadata of its stores: records are added all through a run, so a long
    run's store counts as alive for as long as it makes progress.
    """
    fs, root = manifest.fs, manifest.root
    found: dict[str, list[str]] = {}
    for folder in ("stores", "partial"):
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{root}/{folder}", detail=False)]
        except FileNotFoundError:
            continue
        for name in names:  # stores/<key>/… (older caches: stores/<key>.ome.zarr), partial/<key>/…
            found.setdefault(name.split(".", 1)[0], []).append(f"{folder}/{name}")
    in_use = leased_keys(manifest)
    now = time.time()
    out = []
    for key, paths in sorted(found.items()):
        if key in in_use:
            continue
        if key in committed:
            out += [Orphan(p, manifest.bytes_under(p), "records of a committed entry") for p in paths
                    if p.startswith("partial/")]  # fmt: skip
            continue
        idle = now - max(_modified(fs, f"{root}/{p}") for p in paths)
        if idle >= grace_seconds:
            out += [Orphan(p, manifest.bytes_under(p), f"no entry, last written {age(idle)} ago") for p in paths]
    return out


def _modified(fs: Any, path: str) -> float:
    """Newest modification time of the files that say a run is alive: every file under
    ``partial/<key>``; the folder's own entries and each store's top-level metadata under ``stores``."""
    if "/partial/" in path:
        infos = list(fs.find(path, detail=True).values())
    else:
        infos = fs.ls(path, detail=True) if fs.isdir(path) else [fs.info(path)]
        infos += [fs.info(f"{i['name']}/zarr.json") for i in list(infos) if fs.exists(f"{i['name']}/zarr.json")]
    times = [_mtime(info) for info in infos] + [0.0]
    return max(t for t in times if t is not None)


def _mtime(info: dict[str, Any]) -> float | None:
    stamp = info.get("mtime", info.get("LastModified"))
    if stamp is None:
        return None  # a folder on an object store
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)


def age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"
