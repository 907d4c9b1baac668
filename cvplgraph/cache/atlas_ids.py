"""The distinct region ids of an atlas annotation, remembered by the atlas's fingerprint.

Checking an atlas against its structure table before any compute needs the ids its annotation
holds: one pass over an atlas-sized volume (~10^7 voxels, seconds). The answer is kept in this
process and as ``<cache>/atlas/<fingerprint>.json``, so later plans and runs of any spec using the
same atlas files with the same placement skip the pass. The fingerprint covers every file's size
and mtime or ETag (:func:`cvplgraph.cache.fingerprint.fingerprint_atlas`), so a replaced annotation
is read again. The file is a convenience: a cache that cannot be read or written (read-only, an
object store without permission) costs the pass again, never the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import fsspec
import numpy as np

log = logging.getLogger(__name__)
FORMAT = "cvplgraph-atlas-ids/1"
_known: dict[str, np.ndarray] = {}


def ids_url(cache_url: str, fingerprint: str) -> str:
    """Where the ids of the atlas with ``fingerprint`` are kept in the cache at ``cache_url``."""
    return f"{cache_url.rstrip('/')}/atlas/{fingerprint}.json"


def atlas_ids(cache_url: str, fingerprint: str, compute: Callable[[], np.ndarray], source: str = "") -> np.ndarray:
    """The sorted distinct ids of an atlas: remembered in this process, else read from the cache, else
    computed by ``compute()`` and remembered in both (a failed write is logged at debug level and ignored)."""
    if fingerprint in _known:
        return _known[fingerprint]
    url = ids_url(cache_url, fingerprint)
    ids = _read(url)
    if ids is None:
        ids = np.asarray(compute(), dtype=np.int64)
        document = {"format": FORMAT, "annotation": source, "ids": ids.tolist()}
        try:
            fs, path = fsspec.core.url_to_fs(url)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            fs.pipe_file(path, json.dumps(document).encode())
        except Exception as exc:  # noqa: BLE001 - a read-only or unreachable cache must not stop the run
            log.debug("cannot keep the atlas ids at %s: %s", url, exc)
    _known[fingerprint] = ids
    return ids


def _read(url: str) -> np.ndarray | None:
    try:
        with fsspec.open(url, "rt", encoding="utf-8") as f:
            document = json.load(f)
    except Exception:  # noqa: BLE001 - absent, unreadable or damaged: computed again
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("ids"), list):
        return None
    return np.asarray(document["ids"], dtype=np.int64)
