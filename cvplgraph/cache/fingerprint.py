"""Fingerprints of raw inputs: what their key is made of.

By default a store is fingerprinted from its metadata documents and the
listing of the selected level's chunk objects (path, size, mtime or ETag), so a
rewritten chunk changes the key without reading any pixel data. The
selection (channel, time point, level, crop, intensity range) is part of the
key too; working chunks are not, because every op is chunk-invariant.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec

from cvplgraph.cache.keys import digest
from cvplgraph.errors import InputError
from cvplgraph.io.atlas import files_of
from cvplgraph.io.stores import child_array, multiscales, open_group
from cvplgraph.spec.model import AtlasSpec, InputSpec


def _listing(url: str, content: bool = False) -> list[tuple[str, int, str]]:
    """(path, size, stamp) of every object under ``url``; the stamp is the mtime or ETag, or with
    ``content`` a SHA-256 of the bytes (every object read once; mtimes then do not matter)."""
    fs, root = fsspec.core.url_to_fs(url)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        raise InputError(f"{url}: does not exist") from None
    rows = []
    for path, info in sorted(found.items()):
        if content:
            stamp = hashlib.sha256(fs.cat_file(path)).hexdigest()
        else:
            stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        rows.append((path[len(root) :].lstrip("/"), int(info.get("size") or 0), str(stamp)))
    return rows


def fingerprint_input(spec: InputSpec) -> str:
    """Key of the raw input node."""
    group = open_group(spec.url)
    attrs = group.attrs.asdict()
    ms = multiscales(attrs, spec.url)
    if spec.level >= len(ms["datasets"]):
        raise InputError(f"{spec.url}: level {spec.level} requested but the store has {len(ms['datasets'])} level(s)")
    path = ms["datasets"][spec.level]["path"]
    array = child_array(group, path, spec.url)
    meta: dict[str, Any] = {
        "attrs": json.loads(json.dumps(attrs, default=str)),
        "array": {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks)},
    }
    selection = {
        "channel": spec.channel,
        "timepoint": spec.timepoint,
        "level": spec.level,
        "crop": [list(c) for c in spec.crop] if spec.crop else None,
        "intensity_range": list(spec.intensity_range) if spec.intensity_range else None,
        # NaN/±Inf read as 0 change values; the default "error" does not (keys made before it stay valid)
        **({"nonfinite": spec.nonfinite} if spec.nonfinite != "error" else {}),
    }
    listing = _listing(f"{spec.url.rstrip('/')}/{path}", content=spec.fingerprint == "content")
    return digest({"input": meta, "chunks": listing, "selection": selection})


def fingerprint_atlas(spec: AtlasSpec) -> str:
    """Key of an atlas input: the listing of every file it reads, and how it is placed in sample space."""
    files = files_of(spec)
    listing = {
        role: _listing(path) for role, path in sorted(files.items()) if path and (role != "metadata" or _exists(path))
    }
    options = {
        "hemisphere_values": list(spec.hemisphere_values),
        "scale": list(spec.scale) if spec.scale else None,
        "translation": list(spec.translation) if spec.translation else None,
        "transpose": list(spec.transpose),
    }
    return digest({"atlas": listing, "options": options})


def _exists(path: str) -> bool:
    fs, root = fsspec.core.url_to_fs(path)
    return bool(fs.exists(root))
