"""Files written so that a reader sees all of a file or none of it, and the records a block's
write leaves behind it: which chunks it wrote, with their checksums (see
:mod:`cvplgraph.cache.resume` for how runs read them back)."""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Iterable

import fsspec

#: How often a write whose folder vanished under it is tried again.
RETRIES = 5

#: Half-open chunk-index ranges, one per axis.
Ranges = tuple[tuple[int, int], ...]


def expand(ranges: Ranges) -> Iterable[tuple[int, ...]]:
    """Every chunk index inside ``ranges``."""
    return itertools.product(*(range(a, b) for a, b in ranges))


def mark(url: str, checksums: dict[str, str | None]) -> None:
    """Record a written range (runs inside the write task, after the write) with its chunks' checksums."""
    write_atomically(url, json.dumps(checksums, separators=(",", ":")).encode())


def write_atomically(url: str, body: bytes) -> None:
    """Write ``body`` so that readers see all of it or nothing, even if the writer is killed."""
    if "://" in url and not url.startswith("file://"):
        fs, path = fsspec.core.url_to_fs(url)
        if "file" not in fs.protocol:
            fs.pipe_file(path, body)  # an object store's PUT is atomic
            return
    else:  # a local path: plain os calls, this runs once per written block
        path = url.removeprefix("file://")
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")  # not a marker name: ignored if left by a kill
    for attempt in range(RETRIES):
        try:
            _write_file(tmp, body)
            os.replace(tmp, path)
            return
        except FileNotFoundError:
            # a concurrent run that committed this key cleared the records folder (with our temporary file in
            # it, perhaps between the write and the rename): make it again and write again
            if attempt == RETRIES - 1:
                raise
            os.makedirs(folder, exist_ok=True)


def _write_file(path: str, body: bytes) -> None:
    with open(path, "wb") as file:
        file.write(body)
