"""Whole chunks of plain zarr arrays on a local disk, decoded straight into a new numpy array.

A block of cvplgraph's work is usually one chunk of its store. zarr-python reads such a chunk into a
``bytes`` object, decodes it into another one and copies that into the array it returns: three buffers
of the chunk's size, the first two allocated by ``malloc``. In a dask worker, where distributed sets
``MALLOC_TRIM_THRESHOLD_`` (which also pins glibc's mmap threshold at 128 KiB), each of those is a fresh
``mmap`` paid for in 4 KiB page faults: reading a 16 MiB chunk took 40 ms there against 14.5 ms in a
plain process (docs/benchmarks.md, "Reading chunks"). This reader reads the file into a numpy buffer and
lets the codec decode into the numpy array it returns, so a chunk costs two numpy allocations (which numpy
backs with huge pages where the kernel allows) and no copy.

It applies only where the result is certain to be zarr's own: a local store; zarr v3 with the ``bytes``
codec in the machine's byte order and at most a blosc codec after it (no sharding, no transpose, no
checksum codec), or zarr v2 with no filters, C order and blosc or no compressor; a selection inside one
chunk; a blosc header that states the chunk's size (numcodecs decodes a smaller frame into a larger
buffer without complaint, so zstd and gzip, whose sizes this reader does not check, stay with zarr).
Everything else, and a chunk that is not on disk (zarr's fill value then), is read by zarr.
tests/io/test_chunks.py compares both readers chunk by chunk.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

#: Bytes of blosc's header; its bytes 4–8 hold the decoded size, 12–16 the encoded size (little-endian).
_BLOSC_HEADER = 16


def _decoder(config: dict[str, Any] | None) -> Any:
    """The numcodecs codec for a compressor's configuration (None: no compression), or False when unknown."""
    if config is None:
        return None
    if str(config.get("id") or config.get("name")) != "blosc":
        return False
    from numcodecs import Blosc

    return Blosc()  # decoding needs no settings: they are in each chunk's header


def _v3_decoder(metadata: Any) -> Any:
    codecs = [codec.to_dict() for codec in metadata.codecs]
    if not codecs or codecs[0].get("name") != "bytes" or len(codecs) > 2:
        return False
    endian = (codecs[0].get("configuration") or {}).get("endian")
    if endian not in (None, sys.byteorder):
        return False
    return _decoder(codecs[1]) if len(codecs) == 2 else None


def _v2_decoder(metadata: Any) -> Any:
    if metadata.filters or metadata.order != "C":
        return False
    compressor = metadata.compressor
    return _decoder(None if compressor is None else compressor.get_config())


class ChunkReader:
    """Reads selections that lie inside one chunk of ``array``; :meth:`of` says whether it applies."""

    def __init__(self, array: Any, root: Path, decoder: Any) -> None:
        self.array, self.root, self.decoder = array, root, decoder
        self.chunks = tuple(int(c) for c in array.chunks)
        self.dtype = np.dtype(array.dtype)

    @classmethod
    def of(cls, array: Any) -> ChunkReader | None:
        """A reader for ``array``, or None when zarr must read it (see the module docstring)."""
        try:
            from zarr.storage import LocalStore

            store = array.store_path.store
            if not isinstance(store, LocalStore) or np.dtype(array.dtype).hasobject:
                return None
            if not np.dtype(array.dtype).isnative:
                return None
            metadata = array.metadata
            decoder = _v3_decoder(metadata) if metadata.zarr_format == 3 else _v2_decoder(metadata)
            if decoder is False or type(metadata.chunk_grid).__name__ != "RegularChunkGrid":
                return None
        except Exception:  # noqa: BLE001 - metadata this reader does not know: zarr reads it
            return None
        return cls(array, Path(store.root) / array.store_path.path, decoder)

    def read(self, index: tuple[Any, ...]) -> np.ndarray | None:
        """The values of ``index`` (slices and integers, one per axis), or None when zarr must read them:
        a selection across chunks, a step, or a chunk not on disk."""
        if len(index) != len(self.chunks):
            return None
        coords, local, full = [], [], True
        for sel, size, chunk in zip(index, self.array.shape, self.chunks):
            if isinstance(sel, slice):
                start, stop, step = sel.indices(size)
                if step != 1 or stop <= start:
                    return None
            elif isinstance(sel, (int, np.integer)):
                start = int(sel) + size if int(sel) < 0 else int(sel)
                stop = start + 1
            else:
                return None
            at = start // chunk
            if (stop - 1) // chunk != at:
                return None
            coords.append(at)
            offset = at * chunk
            local.append(slice(start - offset, stop - offset) if isinstance(sel, slice) else start - offset)
            full = full and isinstance(sel, slice) and start == offset and stop - offset == chunk
        path = self.root / self.array.metadata.encode_chunk_key(tuple(coords))
        try:
            with open(path, "rb", buffering=0) as file:
                nbytes = file.seek(0, 2)
                file.seek(0)
                raw = np.empty(nbytes, dtype=np.uint8)
                if file.readinto(raw.data) != nbytes:
                    raise OSError(f"{path}: short read")
        except FileNotFoundError:
            return None  # zarr's fill value, by zarr
        values = np.empty(self.chunks, dtype=self.dtype)
        if self.decoder is None:
            if nbytes != values.nbytes:
                raise ValueError(f"{nbytes} bytes for a chunk of {values.nbytes} bytes")
            values.reshape(-1).view(np.uint8)[:] = raw
        else:
            header = raw[:_BLOSC_HEADER].tobytes()
            decoded, encoded = int.from_bytes(header[4:8], "little"), int.from_bytes(header[12:16], "little")
            if nbytes < _BLOSC_HEADER or decoded != values.nbytes or encoded != nbytes:
                raise ValueError(f"not a blosc frame of this chunk: its header says {decoded} bytes encoded in "
                                 f"{encoded}, the file holds {nbytes}, a chunk is {values.nbytes}")  # fmt: skip
            self.decoder.decode(raw, out=values.reshape(-1).view(np.uint8))
        return values if full else np.ascontiguousarray(values[tuple(local)])


__all__ = ["ChunkReader"]
