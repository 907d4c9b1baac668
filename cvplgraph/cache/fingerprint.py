"""Fingerprints of raw inputs: what their key is made of.

By default a store is fingerprinted from its metadata documents and the
listing of the selected level's chunk objects (path, size, mtime or ETag), so a
rewritten chunk changes the key without reading any pixel data. The
selection (channel, time point, level, crop, intensity range) is part of the
key too; working chunks are not, because every op is chunk-invariant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import fsspec

from cvplgraph.cache.keys import digest
from cvplgraph.errors import InputError
from cvplgraph.io.atlas import files_of
from cvplgraph.io.ngff import virtual_params
from cvplgraph.io.stores import axis_names, child_array, multiscales, open_group
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


@dataclass(frozen=True)
class Survey:
    """What planning learns about the raw input from its metadata and listing (no pixel read)."""

    key: str  # the input node's key
    url: str  # the selected level's array
    absent: int  # chunk objects of the selection that the store lacks (zarr reads them as the fill value)
    total: int  # chunk objects the selection reads
    examples: tuple[str, ...]  # the first few absent chunks' keys
    fill_value: Any = 0
    nbytes: int = 0  # bytes of the selection as stored (voxels × the dtype's size)

    def note(self) -> str | None:
        """One line for ``plan`` and the run record, when chunks are absent."""
        if not self.absent:
            return None
        shown = ", ".join(self.examples) + (", …" if self.absent > len(self.examples) else "")
        return (f"{self.url}: {self.absent:,} of {self.total:,} chunks absent ({shown}), read as the fill value "
                f"{self.fill_value}; [input] missing_chunks = \"error\" refuses such an input")  # fmt: skip


def survey_input(spec: InputSpec) -> Survey:
    """The raw input node's key, and the chunks of its selection missing from the store."""
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
    level_url = f"{spec.url.rstrip('/')}/{path}"
    wanted = _selected_chunks(array, axis_names(ms, array.ndim), spec)
    if virtual_params(attrs) is not None:  # chunks rendered from the parameters (in attrs, so in the key)
        key = digest({"input": meta, "virtual": True, "selection": selection})
        absent: list[str] = []
    else:
        listing = _listing(level_url, content=spec.fingerprint == "content")
        key = digest({"input": meta, "chunks": listing, "selection": selection})
        present = {p for p, _, _ in listing}
        absent = [k for k in wanted if k not in present]
    voxels = math.prod(_selected_shape(array.shape, axis_names(ms, array.ndim), spec))
    return Survey(key, level_url, len(absent), len(wanted), tuple(absent[:3]), array.fill_value,
                  voxels * array.dtype.itemsize)  # fmt: skip


def _selected_shape(shape: tuple[int, ...], names: list[str], spec: InputSpec) -> list[int]:
    """The z, y, x extent a run reads (one channel, one time point, the crop)."""
    crop = dict(zip("zyx", spec.crop)) if spec.crop else {}
    out = []
    for axis, size in zip(names, shape):
        if axis in crop:
            start, stop = crop[axis]
            out.append(max(0, (size if stop < 0 else min(stop, size)) - start))
        elif axis in ("z", "y", "x"):
            out.append(size)
    return out


def _selected_chunks(array: Any, names: list[str], spec: InputSpec) -> list[str]:
    """Keys (relative to the array) of the chunk objects a run reads: those meeting the selection's
    channel, time point and crop; shards where the array is sharded (its objects)."""
    grid = getattr(array, "shards", None) or array.chunks
    crop = dict(zip("zyx", spec.crop)) if spec.crop else {}
    ranges = []
    for axis, size, step in zip(names, array.shape, grid):
        if axis in crop:
            start, stop = crop[axis]
            stop = size if stop < 0 else min(stop, size)
            ranges.append(range(start // step, max(start // step, -(-stop // step))))
        elif axis in ("z", "y", "x"):
            ranges.append(range(-(-size // step)))
        else:
            pick = {"c": spec.channel, "t": spec.timepoint}.get(axis, 0)
            ranges.append(range(pick // step, pick // step + 1))
    return [array.metadata.encode_chunk_key(at) for at in itertools.product(*ranges)]


def fingerprint_input(spec: InputSpec) -> str:
    """Key of the raw input node."""
    return survey_input(spec).key


def fingerprint_atlas(spec: AtlasSpec) -> str:
    """Key of an atlas input: the listing of every file it reads, and how it is placed in sample space."""
    files = files_of(spec)
    listing = {
        role: _listing(path) for role, path in sorted(files.items()) if path and (role != "metadata" or _exists(path))
    }
    options: dict[str, object] = {
        "hemisphere_values": list(spec.hemisphere_values),
        "scale": list(spec.scale) if spec.scale else None,
        "translation": list(spec.translation) if spec.translation else None,
        "transpose": list(spec.transpose),
    }
    if spec.orientation:  # only when set: the keys of atlases placed by transpose stay what they were
        options["orientation"] = spec.orientation
    return digest({"atlas": listing, "options": options})


def _exists(path: str) -> bool:
    fs, root = fsspec.core.url_to_fs(path)
    return bool(fs.exists(root))
