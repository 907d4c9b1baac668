"""Leases: what a running command reads from and writes into a cache, so that ``cache gc`` leaves it alone.

A run holds one lease, a small JSON object ``leases/<id>.json`` naming the keys whose entries it
reads and the keys whose stores it writes. It is written before the run checks (once more) that
the entries it planned to read are still there, and renewed every :data:`RENEW_SECONDS` while the
run lasts; it is removed when the run ends. ``cache gc`` removes an entry's *manifest file* first,
then reads the leases, and deletes the store only when no live lease names its key; it never
removes an entry or a leftover a live lease names. With that order a run either sees the entry
gone (and plans again) or gc sees its lease (and keeps the store):

    run:  write lease → re-check entries exist → read stores
    gc:   remove entry file → read leases → delete stores nobody leases

A lease is live while it was renewed in the last :data:`LIVE_SECONDS` (the file's modification
time: its ``LastModified`` on an object store) and, when it was written on this host, while its
process exists; a killed run's lease therefore stops protecting anything at once on the same
host, and after :data:`LIVE_SECONDS` elsewhere. No lock is taken: leases are plain objects, so the
scheme works on object stores, and a crashed run cannot block anybody.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cvplgraph.cache.manifest import Manifest

#: How often a running command renews its lease (seconds).
RENEW_SECONDS = 60.0
#: A lease not renewed for this long is dead (a run killed on another host, or a suspended one).
LIVE_SECONDS = 600.0
FOLDER = "leases"


@dataclass(frozen=True)
class Lease:
    """One running command's claim on cache keys."""

    id: str
    host: str
    pid: int
    spec: str
    reads: tuple[str, ...] = ()  # keys of committed entries it reads
    writes: tuple[str, ...] = ()  # keys of stores it writes (and will commit)
    started: float = 0.0
    renewed: float = field(default=0.0, compare=False)

    @property
    def keys(self) -> set[str]:
        return {*self.reads, *self.writes}

    def describe(self) -> str:
        return f"a run of {self.spec or '(python)'} on {self.host} (pid {self.pid})"


def _path(manifest: Manifest, lease_id: str) -> str:
    return f"{manifest.root}/{FOLDER}/{lease_id}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _mtime(info: dict[str, Any]) -> float:
    stamp = info.get("mtime", info.get("LastModified", info.get("created", 0.0)))
    return float(stamp.timestamp() if hasattr(stamp, "timestamp") else stamp)


def leases(manifest: Manifest) -> tuple[list[Lease], list[str]]:
    """The live leases of the cache, and the paths of dead ones (killed runs) that may be removed."""
    fs = manifest.fs
    try:
        found = fs.find(f"{manifest.root}/{FOLDER}", detail=True)
    except FileNotFoundError:
        return [], []
    now, here = time.time(), socket.gethostname()
    live: list[Lease] = []
    dead: list[str] = []
    for path, info in sorted(found.items()):
        if not path.endswith(".json"):
            continue
        try:
            document = json.loads(fs.cat_file(path))
            document["reads"], document["writes"] = tuple(document["reads"]), tuple(document["writes"])
            lease = Lease(**{**document, "renewed": _mtime(info)})
        except FileNotFoundError:
            continue  # its run ended while we listed
        except (ValueError, TypeError, KeyError):
            if now - _mtime(info) > LIVE_SECONDS:  # unreadable and old: nobody is writing it
                dead.append(path)
            continue  # unreadable but young: perhaps being written; it protects nothing we can name
        if now - lease.renewed > LIVE_SECONDS or (lease.host == here and not _alive(lease.pid)):
            dead.append(path)
        else:
            live.append(lease)
    return live, dead


def leased_keys(manifest: Manifest) -> dict[str, Lease]:
    """Key → a live lease naming it."""
    out: dict[str, Lease] = {}
    for lease in leases(manifest)[0]:
        for key in lease.keys:
            out.setdefault(key, lease)
    return out


class Holder:
    """A run's lease: written on :meth:`hold`, renewed by a daemon thread, removed on :meth:`release`.

    ``writable`` is False when the cache refused the lease (a read-only cache): the run then holds
    none, which is harmless for a run that writes nothing (its reads are still checked chunk by chunk).
    """

    def __init__(self, manifest: Manifest, spec: str) -> None:
        self.manifest = manifest
        self.lease = Lease(uuid.uuid4().hex[:16], socket.gethostname(), os.getpid(), spec, started=time.time())
        self.writable = True
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, reads: Iterable[str], writes: Iterable[str]) -> None:
        """Write (or rewrite) the lease naming ``reads`` and ``writes``; start renewing it."""
        self.lease = Lease(**{**asdict(self.lease), "reads": tuple(sorted(reads)), "writes": tuple(sorted(writes))})
        self._write()
        if self.held and self._thread is None:
            self._thread = threading.Thread(target=self._renew, name="cvplgraph-lease", daemon=True)
            self._thread.start()

    def _write(self) -> None:
        document = {k: v for k, v in asdict(self.lease).items() if k != "renewed"}
        body = json.dumps(document, indent=1).encode()
        fs, path = self.manifest.fs, _path(self.manifest, self.lease.id)
        try:
            fs.makedirs(f"{self.manifest.root}/{FOLDER}", exist_ok=True)
            fs.pipe_file(path, body)  # one PUT on an object store; a reader sees all of it or nothing
        except OSError:
            self.writable = False  # read-only cache: see the class docstring
            return
        self.held = True

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            self._write()

    def release(self) -> None:
        self._stop.set()
        if self.held:
            try:
                self.manifest.fs.rm(_path(self.manifest, self.lease.id))
            except OSError:
                pass  # gone already (a gc that found it stale): nothing to release
        self.held = False

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
