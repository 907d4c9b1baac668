"""Whole chunks of plain zarr arrays on a local disk, read and written without zarr's copies.

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

Writing is the mirror image (:class:`ChunkWriter`, zarr v3 arrays only): a block's chunk is encoded with
the array's own blosc settings (the call zarr makes, so the files are byte for byte zarr's) and written to
a temporary file renamed into place, as zarr's local store does; a chunk of fill values is not stored
(an earlier one is removed), as zarr does unless ``write_empty_chunks`` is set. Writing a 16 MiB labels
block through zarr touched about 100 MiB of fresh memory in a worker (56 ms); here it touches the chunk
and its encoded bytes. tests/io/test_chunks.py compares both readers and both writers chunk by chunk.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

#: Bytes of blosc's header; its bytes 4–8 hold the decoded size, 12–16 the encoded size (little-endian).
_BLOSC_HEADER = 16


def _blosc(config: dict[str, Any] | None) -> Any:
    """The blosc configuration of a compressor (``{}`` for none), or None when it is not blosc."""
    if config is None:
        return {}
    if str(config.get("id") or config.get("name")) != "blosc":
        return None
    return dict(config.get("configuration") or config)


def _v3_blosc(metadata: Any) -> Any:
    codecs = [codec.to_dict() for codec in metadata.codecs]
    if not codecs or codecs[0].get("name") != "bytes" or len(codecs) > 2:
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian")
    if endian not in (None, sys.byteorder):
        return None
    return _blosc(codecs[1]) if len(codecs) == 2 else {}


def _v2_blosc(metadata: Any) -> Any:
    if metadata.filters or metadata.order != "C":
        return None
    compressor = metadata.compressor
    return _blosc(None if compressor is None else compressor.get_config())


def _plain(array: Any, formats: tuple[int, ...]) -> tuple[Path, dict[str, Any]] | None:
    """The chunk folder and blosc configuration (``{}``: uncompressed) of an array this module reads or
    writes itself, or None."""
    try:
        from zarr.storage import LocalStore

        store, dtype, metadata = array.store_path.store, np.dtype(array.dtype), array.metadata
        if not isinstance(store, LocalStore) or dtype.hasobject or not dtype.isnative:
            return None
        if metadata.zarr_format not in formats or type(metadata.chunk_grid).__name__ != "RegularChunkGrid":
            return None
        blosc = _v3_blosc(metadata) if metadata.zarr_format == 3 else _v2_blosc(metadata)
    except Exception:  # noqa: BLE001 - metadata this module does not know: zarr reads and writes it
        return None
    return None if blosc is None else (Path(store.root) / array.store_path.path, blosc)


def _in_one_chunk(
    index: tuple[Any, ...], shape: tuple[int, ...], chunks: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[Any, ...], bool] | None:
    """For a selection (slices with step 1, integers; one per axis) that lies inside one chunk: the chunk's
    coordinates, the selection within the chunk, and whether it is the whole chunk (an edge chunk: up to
    the array's end). None for any other selection."""
    if len(index) != len(chunks):
        return None
    coords, local, whole = [], [], True
    for sel, size, chunk in zip(index, shape, chunks):
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
        offset = at * chunk
        coords.append(at)
        local.append(slice(start - offset, stop - offset) if isinstance(sel, slice) else start - offset)
        whole = whole and isinstance(sel, slice) and start == offset and stop == min(offset + chunk, size)
    return tuple(coords), tuple(local), whole


_local = threading.local()


def _scratch(nbytes: int) -> np.ndarray:
    """``nbytes`` of this thread's buffer for encoded chunks (grown when a chunk needs more, never shared
    between threads): a worker reading chunk after chunk reuses its pages instead of faulting in new ones."""
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.size < nbytes:
        buffer = _local.buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes]


class ChunkReader:
    """Reads selections that lie inside one chunk of ``array``; :meth:`of` says whether it applies."""

    def __init__(self, array: Any, root: Path, compressed: bool) -> None:
        self.array, self.root = array, root
        self.decoder = None
        if compressed:
            from numcodecs import Blosc

            self.decoder = Blosc()  # decoding needs no settings: they are in each chunk's header
        self.chunks = tuple(int(c) for c in array.chunks)
        self.dtype = np.dtype(array.dtype)

    @classmethod
    def of(cls, array: Any) -> ChunkReader | None:
        """A reader for ``array``, or None when zarr must read it (see the module docstring)."""
        plain = _plain(array, (2, 3))
        return None if plain is None else cls(array, plain[0], bool(plain[1]))

    def read(self, index: tuple[Any, ...]) -> np.ndarray | None:
        """The values of ``index`` (slices and integers, one per axis), or None when zarr must read them:
        a selection across chunks, a step, or a chunk not on disk."""
        where = _in_one_chunk(index, tuple(self.array.shape), self.chunks)
        if where is None:
            return None
        coords, local, _ = where
        path = self.root / self.array.metadata.encode_chunk_key(coords)
        values = np.empty(self.chunks, dtype=self.dtype)
        try:
            with open(path, "rb", buffering=0) as file:
                nbytes = file.seek(0, 2)
                file.seek(0)
                if self.decoder is None and nbytes != values.nbytes:
                    raise ValueError(f"{nbytes} bytes for a chunk of {values.nbytes} bytes")
                # uncompressed: straight into the block; else into this thread's buffer, reused by its next read
                raw = values.reshape(-1).view(np.uint8) if self.decoder is None else _scratch(nbytes)
                if file.readinto(raw.data) != nbytes:
                    raise OSError(f"{path}: short read")
        except FileNotFoundError:
            return None  # zarr's fill value, by zarr
        if self.decoder is not None:
            header = raw[:_BLOSC_HEADER].tobytes()
            decoded, encoded = int.from_bytes(header[4:8], "little"), int.from_bytes(header[12:16], "little")
            if nbytes < _BLOSC_HEADER or decoded != values.nbytes or encoded != nbytes:
                raise ValueError(f"not a blosc frame of this chunk: its header says {decoded} bytes encoded in "
                                 f"{encoded}, the file holds {nbytes}, a chunk is {values.nbytes}")  # fmt: skip
            self.decoder.decode(raw, out=values.reshape(-1).view(np.uint8))
        part = values[local]
        return values if part.shape == values.shape else np.ascontiguousarray(part)  # the whole chunk, or a copy


class ChunkWriter:
    """Writes whole chunks of a zarr v3 ``array`` as zarr would; :meth:`of` says whether it applies."""

    def __init__(self, array: Any, root: Path, blosc: dict[str, Any]) -> None:
        self.array, self.root = array, root
        self.chunks = tuple(int(c) for c in array.chunks)
        self.dtype = np.dtype(array.dtype)
        self.fill = np.asarray(array.metadata.fill_value, dtype=self.dtype)
        self.keep_empty = bool(array.async_array.config.write_empty_chunks)
        self.encoder = None
        if blosc:
            from numcodecs import Blosc

            shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
            self.encoder = Blosc(cname=blosc["cname"], clevel=int(blosc["clevel"]), shuffle=shuffle[blosc["shuffle"]],
                                 blocksize=int(blosc.get("blocksize", 0)), typesize=int(blosc["typesize"]))  # fmt: skip

    @classmethod
    def of(cls, array: Any) -> ChunkWriter | None:
        """A writer for ``array``, or None when zarr must write it."""
        plain = _plain(array, (3,))
        if plain is None:
            return None
        try:
            return cls(array, *plain)
        except Exception:  # noqa: BLE001 - settings this writer does not know (or lacks): zarr writes
            return None

    def write(self, region: tuple[slice, ...], values: np.ndarray, nonzero: bool | None = None) -> bool:
        """Write ``values`` as the chunk ``region`` covers exactly; False (nothing written) when ``region`` is
        not one whole chunk. ``nonzero``: whether any value is not 0, when the caller knows."""
        where = _in_one_chunk(region, tuple(self.array.shape), self.chunks)
        if where is None or not where[2] or values.shape != tuple(r.stop - r.start for r in region):
            return False
        if values.dtype != self.dtype:
            return False
        path = self.root / self.array.metadata.encode_chunk_key(where[0])
        if nonzero is not None and not self.fill.any():  # a fill value of 0: what the caller knows says it
            empty = not nonzero
        else:
            empty = bool((values == self.fill).all())
        if empty and not self.keep_empty:  # zarr stores no chunk of fill values, and removes an earlier one
            path.unlink(missing_ok=True)
            return True
        if values.shape != self.chunks:  # an edge chunk: stored whole, the rest filled, as zarr does
            whole = np.full(self.chunks, self.fill, dtype=self.dtype)
            whole[tuple(slice(0, n) for n in values.shape)] = values
            values = whole
        raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        data = raw if self.encoder is None else self.encoder.encode(raw)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as file:
                file.write(data.data if isinstance(data, np.ndarray) else data)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return True


__all__ = ["ChunkReader", "ChunkWriter"]
