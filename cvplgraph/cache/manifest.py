"""The cache's index: one JSON entry per key, beside the stores.

Layout under the cache URL::

    manifest/<key>.json     what made the store, written only once it is complete
    stores/<key>.ome.zarr   arrays (OME-Zarr)
    stores/<key>.zarr       tables and block counts

An entry that exists always describes a complete store: writes are committed
after the run's single compute returns, each entry written to a temporary
name and moved into place.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import fsspec

from cvplgraph.errors import CacheError
from cvplgraph.types import PortType

_PORT_TYPES = [str(t) for t in PortType]


@dataclass(frozen=True)
class Entry:
    """What the cache knows about one stored value."""

    key: str
    node: str
    op: str
    version: int
    params: dict[str, Any]
    inputs: dict[str, str]  # port → input key
    type: str
    store: str  # path relative to the cache root
    store_options: dict[str, Any] = field(default_factory=dict)
    shape: list[int] | None = None
    dtype: str | None = None
    chunks: list[int] | None = None
    bytes: int = 0
    seconds: float = 0.0  # wall time of the run's compute that produced it
    created: float = 0.0  # when the entry was committed (Unix time)
    spec: str = ""
    # provenance
    cvplgraph_version: str = ""
    op_versions: dict[str, int] = field(default_factory=dict)  # every op upstream, this one included
    input_fingerprints: dict[str, str] = field(default_factory=dict)  # raw input name → key
    started: float = 0.0
    finished: float = 0.0
    host: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


#: The JSON types each field of an entry may hold (a float field accepts an integer).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    f.name: {"str": (str,), "int": (int,), "float": (int, float), "dict[str, Any]": (dict,), "dict[str, str]": (dict,),
             "dict[str, int]": (dict,), "list[int] | None": (list, type(None)),
             "str | None": (str, type(None))}[str(f.type)]
    for f in fields(Entry)
}  # fmt: skip
_REQUIRED = [f.name for f in fields(Entry) if f.default is MISSING and f.default_factory is MISSING]


class BadEntry(CacheError):
    """A manifest entry file that is no entry: not UTF-8, not JSON, or not an entry's fields and types."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        cache = path.rsplit("/manifest/", 1)[0]
        super().__init__(
            f"{path}: unreadable cache entry ({reason}); `cvplgraph cache verify --cache {cache}` moves it to "
            "invalid/ (or delete the file), then the next run computes that node again"
        )


def parse_entry(data: bytes, path: str) -> Entry:
    """The entry an entry file's bytes hold; :class:`BadEntry` naming ``path`` and what is wrong."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadEntry(path, f"byte {exc.start} is not UTF-8; expected a JSON object") from None
    except json.JSONDecodeError as exc:
        raise BadEntry(path, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(document, dict):
        raise BadEntry(path, f"expected a JSON object, got a {type(document).__name__}")
    missing = [name for name in _REQUIRED if name not in document]
    if missing:
        raise BadEntry(path, f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(document) - set(_FIELD_TYPES))
    if unknown:
        raise BadEntry(path, f"unknown field(s) {', '.join(unknown)}")
    for name, value in document.items():
        kinds = _FIELD_TYPES[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise BadEntry(path, f"field {name}: expected {expected}, got {value!r:.40}")
    if document["type"] not in _PORT_TYPES:
        raise BadEntry(path, f"field type: expected one of {', '.join(_PORT_TYPES)}, got {document['type']!r:.40}")
    return Entry(**document)


#: Written at the cache root before a run first writes there (and with every entry): marks a folder as
#: a cache (the Cache Directory Tagging convention, so backup tools skip it too); `cache gc` deletes
#: nothing in a folder without it.
MARKER = "CACHEDIR.TAG"
MARKER_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by cvplgraph: the folder holds its cache.\n"
)


def confined(store: str) -> bool:
    """Whether an entry's ``store`` is a relative path that stays inside the cache root."""
    if not isinstance(store, str) or not store or store.startswith(("/", "\\")) or "://" in store:
        return False
    normal = posixpath.normpath(store)
    return normal not in (".", "..") and not normal.startswith("../")


class Manifest:
    """Read and commit entries of the cache at ``url`` (any fsspec URL)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def store_url(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def bytes_under(self, relative: str) -> int:
        """Bytes of every object under ``relative`` (a store or a records folder); 0 when absent."""
        try:
            return int(self.fs.du(f"{self.root}/{relative}"))
        except FileNotFoundError:
            return 0

    def entry_path(self, key: str) -> str:
        return f"{self.root}/manifest/{key}.json"

    def get(self, key: str) -> Entry | None:
        """The entry of ``key``, None if there is none; :class:`BadEntry` if its file is no entry."""
        path = self.entry_path(key)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        entry = parse_entry(data, f"{self.url}/manifest/{key}.json")
        if not confined(entry.store):
            raise CacheError(f"{self.url}/manifest/{key}.json: field store: {entry.store!r} lies outside the cache; "
                             "expected a path inside it (stores/<key>); remove the entry to recompute")  # fmt: skip
        return entry

    def has_marker(self) -> bool:
        return bool(self.fs.exists(f"{self.root}/{MARKER}"))

    def write_marker(self) -> None:
        if not self.has_marker():
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(f"{self.root}/{MARKER}", MARKER_TEXT.encode())

    def remove_if_unused(self) -> None:
        """Remove the cache folder again when it holds nothing but its marker and an empty ``leases``
        folder: what a run that stopped before writing anything leaves in a cache it created."""
        try:
            names = {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)}
            if not names <= {MARKER, "leases"} or ("leases" in names and self.fs.ls(f"{self.root}/leases")):
                return
            for name in names:
                self.fs.rm(f"{self.root}/{name}", recursive=name == "leases")
            self.fs.rmdir(self.root)
        except OSError:
            pass  # something else is being written there (a concurrent run): it stays

    def entries(self) -> list[Entry]:
        """Every readable entry (see :meth:`scan` for the files that are not)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[Entry], list[BadEntry]]:
        """Every readable entry, and why each other entry file is none (an entry naming a store outside
        the cache is no entry either, and is not listed as unreadable: see :func:`confined`)."""
        try:
            paths = self.fs.glob(f"{self.root}/manifest/*.json")
        except FileNotFoundError:
            return [], []
        out, bad = [], []
        for path in paths:
            shown = f"{self.url}/manifest/{posixpath.basename(path)}"
            try:
                entry = parse_entry(self.fs.cat_file(path), shown)
            except BadEntry as exc:
                bad.append(exc)
                continue
            except OSError as exc:  # removed meanwhile (gc), or the store cannot be read
                bad.append(BadEntry(shown, f"cannot read it: {exc}"))
                continue
            if confined(entry.store):
                out.append(entry)
        return out, bad

    def set_aside(self, bad: BadEntry) -> str:
        """Move an unreadable entry file to ``invalid/`` (its bytes as they were); returns where it went."""
        name = posixpath.basename(bad.path)
        self.fs.makedirs(f"{self.root}/invalid", exist_ok=True)
        self.fs.mv(f"{self.root}/manifest/{name}", f"{self.root}/invalid/{name}")
        return f"{self.url}/invalid/{name}"

    def previous(self, node: str, spec: str) -> Entry | None:
        """The newest entry made for node ``node``, preferring ones from the same spec file."""
        same = [e for e in self.entries() if e.node == node]
        if not same:
            return None
        from_spec = [e for e in same if e.spec == spec]
        return max(from_spec or same, key=lambda e: e.created)

    def commit(self, entry: Entry) -> None:
        """Write ``entry`` (its store must be complete) under its key, atomically where the filesystem allows."""
        path = self.entry_path(entry.key)
        self.write_marker()
        self.fs.makedirs(f"{self.root}/manifest", exist_ok=True)
        tmp = f"{self.root}/manifest/.{entry.key}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "w") as f:
            f.write(entry.to_json())
        self.fs.mv(tmp, path)

    def invalidate(self, key: str, reason: str) -> None:
        """Move the entry of ``key`` to ``invalid/`` with the reason: the next run recomputes it."""
        entry = self.get(key)
        if entry is None:
            return
        document = {**json.loads(entry.to_json()), "invalid": reason, "invalidated": time.time()}
        try:
            self.fs.makedirs(f"{self.root}/invalid", exist_ok=True)
            self.fs.pipe_file(f"{self.root}/invalid/{key}.json", json.dumps(document, indent=1).encode())
            self.fs.rm(self.entry_path(key))
        except OSError as exc:
            raise CacheError(f"{self.url}/manifest/{key}.json: damaged ({reason}) but cannot be moved to invalid/ "
                             f"({exc.strerror or exc}); expected a writable cache") from None  # fmt: skip

    def remove_entry(self, entry: Entry) -> None:
        """Delete an entry's manifest file (its store goes with :meth:`remove_store`, afterwards: never an
        entry without its store)."""
        if not confined(entry.store):
            raise CacheError(f"{self.url}/manifest/{entry.key}.json: field store: {entry.store!r} lies outside the "
                             "cache; expected a path inside it; nothing removed")  # fmt: skip
        try:
            self.fs.rm(self.entry_path(entry.key))
        except FileNotFoundError:
            pass  # a concurrent gc removed it first

    def remove_store(self, entry: Entry) -> list[str]:
        """Delete the store and records of a removed entry; the paths that could not be removed, with why."""
        if not confined(entry.store):
            raise CacheError(f"{self.url}/manifest/{entry.key}.json: field store: {entry.store!r} lies outside the "
                             "cache; expected a path inside it; nothing removed")  # fmt: skip
        failed = []
        # the key's folders, and the entry's own store (older caches kept stores/<key>.ome.zarr)
        for path in (entry.store, f"stores/{entry.key}", f"partial/{entry.key}"):
            failure = self.remove_path(f"{self.root}/{path}")
            if failure:
                failed.append(failure)
        return failed

    def remove_path(self, path: str) -> str | None:
        """Delete ``path`` (under the root) and everything below it; None, or why it could not be."""
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            return None
        except OSError as exc:  # e.g. a writer adding files meanwhile: left for the next gc
            return f"{path}: {exc.strerror or exc}"
        return None

    def now(self) -> float:
        return time.time()
