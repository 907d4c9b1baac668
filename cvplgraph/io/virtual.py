"""Virtual volumes: whole-brain-sized synthetic images whose blocks are made when read, with their truth.

A virtual volume is never stored. Any block of it is rendered on demand from the seed alone, so a
2,000 × 8,000 × 11,000 voxel volume (≈ 350 GB as uint16) costs no disk and no memory beyond the block
being read. Rehearsing a whole-brain run on one machine needs exactly that, plus the true number of
cells in every block, cheaply, without rendering anything.

Model
-----
Cells sit on a jittered cubic grid of sites in physical space (µm, ``spacing_um`` apart; site ``k``
along an axis is nominally at ``(k + 0.5) * spacing_um``). Sites are grouped in tiles of
:data:`TILE` × :data:`TILE` × :data:`TILE`; each tile draws its sites' presence (``occupancy``), jitter
(at most ``jitter`` × spacing per axis) and brightness from a generator seeded by ``(seed, tile
index)`` only. The cells therefore depend on neither the chunking nor the order blocks are read in, and
the cells of any box are found by drawing the few tiles that meet it. A cell is kept when its centre
lies inside the volume (voxel ``i`` centred at ``i * voxel_size``, owning ``[i − ½, i + ½)``).

A voxel's value is ``background + Σ brightness · gaussian(σ = radius_um / 2)`` over the cells whose
±4 σ box meets the block, plus gaussian noise (windows, at offsets drawn from ``(seed, block start)``,
of a bank of 4 M values drawn from the seed once per process),
scaled to the dtype (uint16: ``round(clip(v, 0, 1) · 4095)``, a 12-bit camera's range). With ``noise
= 0`` the value of a voxel does not depend on the chunking either.

The truth of a block is the cells whose centre's voxel lies in it: what a per-block count of found
centroids reports (:func:`block_truth`), summed without rendering for any region (:func:`truth_count`).

As a zarr store
---------------
:class:`VirtualStore` is a read-only zarr store holding the metadata of an OME-Zarr image (one level,
``0``, uncompressed chunks) whose chunks it renders when asked: ``zarr.open_array(store=VirtualStore(v),
path="0")`` reads like any array. :func:`write_virtual` writes those metadata files to a folder (a few
KB), with the volume's parameters under the group's ``cvplgraph.virtual`` attribute; cvplgraph opens
such a folder as an input whose chunks come from the store (other OME-Zarr readers find no chunk files
and show the fill value, 0: the group's description says so).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import MemoryStore

from cvplgraph.blobs import BOX_SIGMAS, add_blobs
from cvplgraph.errors import InputError
from cvplgraph.io.ngff import VIRTUAL, ngff_metadata
from cvplgraph.types import PortType
from cvplgraph.values import DIMS, Geometry

#: Sites per tile along each axis: the unit of drawing (a tile's cells come from one seeded generator).
TILE = 8
#: uint16 volumes store values 0–1 as 0–4095.
UINT16_FULL = 4095.0


@dataclass(frozen=True)
class VirtualVolume:
    """A synthetic volume of any size whose blocks are rendered when read (see the module docstring)."""

    shape: tuple[int, int, int]
    chunks: tuple[int, int, int] = (64, 256, 256)
    voxel_size: tuple[float, float, float] = (4.0, 1.5, 1.5)
    spacing_um: float = 30.0
    occupancy: float = 0.7
    jitter: float = 0.2  # of the spacing, per axis: blobs stay apart
    radius_um: float = 5.5
    brightness: tuple[float, float] = (0.5, 0.9)
    background: float = 0.08
    noise: float = 0.02
    seed: int = 0
    dtype: str = "uint16"

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1 or len(self.chunks) != 3 or min(self.chunks) < 1:
            raise ValueError(f"shape and chunks are 3 positive sizes, got {self.shape} and {self.chunks}")
        if not 0.0 <= self.occupancy <= 1.0 or not 0.0 <= self.jitter < 0.5 or self.spacing_um <= 0:
            raise ValueError("occupancy in [0, 1], jitter in [0, 0.5) and spacing_um > 0 are expected")
        if self.dtype not in ("uint16", "float32"):
            raise ValueError(f"dtype uint16 or float32, got {self.dtype!r}")

    @property
    def geometry(self) -> Geometry:
        """The grid in µm: voxel ``i`` centred at ``i * voxel_size`` (translation 0)."""
        return Geometry(self.shape, self.voxel_size, (0.0, 0.0, 0.0))

    def to_dict(self) -> dict[str, Any]:
        """The parameters as JSON values (what a virtual store's attributes keep)."""
        return json.loads(json.dumps(asdict(self)))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> VirtualVolume:
        """The volume of :meth:`to_dict`'s parameters; one line naming ``where`` when they are not valid."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        try:
            if unknown:
                raise ValueError(f"unknown parameter(s) {', '.join(unknown)}")
            tuples = {k: tuple(v) for k, v in values.items() if isinstance(v, list)}
            return cls(**{**values, **tuples})
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: not valid virtual volume parameters ({exc}); expected those "
                             f"`cvplgraph synth --virtual` writes: {', '.join(sorted(known))}") from None  # fmt: skip

    # --- cells ------------------------------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int, int]:
        """Blocks along z, y, x."""
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))  # type: ignore[return-value]

    def _tile(self, tile: tuple[int, int, int]) -> np.ndarray:
        """The cells of one tile: (n, 4) float64 rows ``z_um, y_um, x_um, brightness`` (present sites only)."""
        rng = np.random.default_rng([self.seed, *tile])
        n = TILE**3
        present = rng.random(n) < self.occupancy
        jitter = rng.uniform(-self.jitter, self.jitter, size=(n, 3))
        brightness = rng.uniform(*self.brightness, size=n)
        local = np.stack(np.meshgrid(*[np.arange(TILE)] * 3, indexing="ij"), axis=-1).reshape(n, 3)
        sites = np.asarray(tile) * TILE + local
        um = (sites + 0.5 + jitter) * self.spacing_um
        return np.column_stack([um, brightness])[present]

    def cells_in(self, low_um: Sequence[float], high_um: Sequence[float]) -> np.ndarray:
        """The cells of the volume whose centre lies in the µm box [low, high): (n, 4) rows ``z_um, y_um,
        x_um, brightness``, in tile order (the same for any chunking)."""
        return np.concatenate([np.empty((0, 4)), *self._cells_by_tile(low_um, high_um)])

    def _cells_by_tile(self, low_um: Sequence[float], high_um: Sequence[float]) -> Iterator[np.ndarray]:
        """The cells of :meth:`cells_in`, one tile at a time."""
        low, high = np.asarray(low_um, dtype=np.float64), np.asarray(high_um, dtype=np.float64)
        extent_low, extent_high = self.extent_um()
        low, high = np.maximum(low, extent_low), np.minimum(high, extent_high)
        reach = self.jitter * self.spacing_um
        first = np.maximum(np.floor((low - reach) / self.spacing_um - 0.5), 0).astype(np.int64) // TILE
        last = np.floor((high + reach) / self.spacing_um - 0.5).astype(np.int64) // TILE
        for tile in itertools.product(*(range(int(a), int(b) + 1) for a, b in zip(first, last))):
            cells = self._tile(tile)  # type: ignore[arg-type]
            yield cells[np.all((cells[:, :3] >= low) & (cells[:, :3] < high), axis=1)]

    def extent_um(self) -> tuple[np.ndarray, np.ndarray]:
        """The µm box the voxels cover: from the first voxel's low face to the last voxel's high face."""
        voxel = np.asarray(self.voxel_size)
        return -voxel / 2, (np.asarray(self.shape) - 0.5) * voxel

    def block_location(self, block: Sequence[int]) -> list[tuple[int, int]]:
        """The (start, stop) voxels of block ``block`` along z, y, x."""
        return [(b * c, min((b + 1) * c, s)) for b, c, s in zip(block, self.chunks, self.shape)]

    def block_cells(self, block: Sequence[int]) -> np.ndarray:
        """The cells whose centre's voxel lies in ``block``: its truth, (n, 4) as :meth:`cells_in`."""
        voxel = np.asarray(self.voxel_size)
        location = self.block_location(block)
        low = (np.array([a for a, _ in location]) - 0.5) * voxel
        high = (np.array([b for _, b in location]) - 0.5) * voxel
        return self.cells_in(low, high)

    # --- voxels -----------------------------------------------------------------------------------

    def render(self, block: Sequence[int]) -> np.ndarray:
        """Block ``block`` of the volume, rendered from the seed (the same values at every call)."""
        location = self.block_location(block)
        voxel = np.asarray(self.voxel_size)
        out = np.full([b - a for a, b in location], self.background, dtype=np.float32)
        margin = BOX_SIGMAS * self.radius_um / 2.0 + 1e-6
        low = (np.array([a for a, _ in location]) - 0.5) * voxel - margin
        high = (np.array([b for _, b in location]) - 0.5) * voxel + margin
        cells = self.cells_in(low, high)
        if len(cells):
            rows = np.vstack([(cells[:, :3] / voxel).T, np.full(len(cells), self.radius_um), cells[:, 3]])
            add_blobs(out, location, rows, self.voxel_size)
        if self.noise > 0:
            _add_noise(out, self.seed, self.noise, [a for a, _ in location])
        if self.dtype == "float32":
            return out
        np.clip(out, 0.0, 1.0, out=out)
        out *= np.float32(UINT16_FULL)
        out += np.float32(0.5)  # then truncated: rounded, without a temporary
        return out.astype(np.uint16)

    def blocks(self) -> Iterator[tuple[int, int, int]]:
        """Every block index, in C order."""
        return itertools.product(*(range(n) for n in self.grid))  # type: ignore[return-value]


#: Gaussian noise values drawn once per (seed, noise level) and process; blocks read windows of them.
NOISE_BANK = 1 << 22


@functools.lru_cache(maxsize=4)
def _noise_bank(seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng([seed, 1 << 32])
    bank = rng.standard_normal(NOISE_BANK, dtype=np.float32)
    bank *= np.float32(noise)
    return bank


def _add_noise(out: np.ndarray, seed: int, noise: float, start: Sequence[int]) -> None:
    """Gaussian noise added to ``out`` in place: windows of a bank drawn once (16 MB), at offsets drawn from
    ``(seed, the block's first voxel)``; drawing 4 M values for every block read would cost more than the
    pipeline's own work on it."""
    bank = _noise_bank(seed, noise)
    rng = np.random.default_rng([seed, 1 << 33, *start])
    flat = out.reshape(-1)
    for first in range(0, flat.size, NOISE_BANK // 2):
        part = flat[first : first + NOISE_BANK // 2]
        offset = int(rng.integers(0, NOISE_BANK - part.size + 1))
        part += bank[offset : offset + part.size]


def block_truth(volume: VirtualVolume) -> np.ndarray:
    """The true number of cells of every block, shaped like the block grid (no voxel is rendered)."""
    counts = np.zeros(volume.grid, dtype=np.int64)
    for block in volume.blocks():
        counts[block] = len(volume.block_cells(block))
    return counts


def truth_count(volume: VirtualVolume) -> int:
    """The number of cells in the whole volume, drawn tile by tile (memory: one tile)."""
    low, high = volume.extent_um()
    return int(sum(len(cells) for cells in volume._cells_by_tile(low.tolist(), high.tolist())))


# --- as a zarr store ------------------------------------------------------------------------------

_CHUNK_KEY = re.compile(r"^0/c/(\d+)/(\d+)/(\d+)$")


def metadata_documents(volume: VirtualVolume) -> dict[str, bytes]:
    """The ``zarr.json`` files of the OME-Zarr group of ``volume`` and of its level ``0``, made by zarr."""
    documents: dict[str, Buffer] = {}
    group = zarr.open_group(store=MemoryStore(documents), mode="w")
    group.attrs.update(ngff_metadata(volume.geometry, 1, PortType.Image, "virtual"))
    group.attrs["cvplgraph"] = {
        "type": str(PortType.Image),
        VIRTUAL: volume.to_dict(),
        "description": "a virtual volume: its chunks are rendered on read by cvplgraph (cvplgraph.io.virtual); "
        "readers that look for chunk files find none and show 0",
    }
    group.create_array("0", shape=volume.shape, chunks=volume.chunks, dtype=volume.dtype,
                       dimension_names=list(DIMS), compressors=None, fill_value=0)  # fmt: skip
    return {key: value.to_bytes() for key, value in documents.items()}


class VirtualStore(MemoryStore):
    """A read-only zarr store of ``volume``: its metadata in memory, each chunk rendered when read."""

    def __init__(self, volume: VirtualVolume) -> None:
        buffers = {k: default_buffer_prototype().buffer.from_bytes(v) for k, v in metadata_documents(volume).items()}
        super().__init__(buffers, read_only=True)
        self.volume = volume

    def _chunk(self, key: str) -> tuple[int, int, int] | None:
        found = _CHUNK_KEY.match(key)
        if found is None:
            return None
        block = tuple(int(g) for g in found.groups())
        return block if all(b < n for b, n in zip(block, self.volume.grid)) else None  # type: ignore[return-value]

    def chunk_bytes(self, block: tuple[int, int, int]) -> bytes:
        """Chunk ``block`` as zarr stores it: the whole chunk shape (an edge chunk padded with 0), little-endian."""
        values = self.volume.render(block)
        if values.shape != tuple(self.volume.chunks):
            padded = np.zeros(self.volume.chunks, dtype=values.dtype)
            padded[tuple(slice(0, n) for n in values.shape)] = values
            values = padded
        return values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        block = self._chunk(key)
        if block is None:
            return await super().get(key, prototype, byte_range)
        raw = self.chunk_bytes(block)
        if isinstance(byte_range, RangeByteRequest):
            raw = raw[byte_range.start : byte_range.end]
        elif isinstance(byte_range, OffsetByteRequest):
            raw = raw[byte_range.offset :]
        elif isinstance(byte_range, SuffixByteRequest):
            raw = raw[-byte_range.suffix :]
        return (prototype or default_buffer_prototype()).buffer.from_bytes(raw)

    async def exists(self, key: str) -> bool:
        return self._chunk(key) is not None or await super().exists(key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VirtualStore) and other.volume == self.volume

    def __hash__(self) -> int:
        return hash(self.volume)


def write_virtual(url: str, volume: VirtualVolume) -> None:
    """The metadata of ``volume``'s OME-Zarr image in the folder ``url`` (no chunk is written)."""
    root = Path(url)
    if root.exists() and any(root.iterdir()):
        raise InputError(f"{url}: exists and is not empty; expected a new folder for the virtual volume")
    for key, document in metadata_documents(volume).items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(document)


def virtual_array(params: dict[str, Any], url: str, stored: zarr.Array) -> zarr.Array:
    """The level array of the virtual volume described at ``url``, read through its :class:`VirtualStore`;
    it must be the array the folder's metadata describes (shape, chunks, dtype)."""
    volume = VirtualVolume.from_dict(params, url)
    array = zarr.open_array(store=VirtualStore(volume), path="0", mode="r")
    if (array.shape, array.chunks, array.dtype) != (stored.shape, stored.chunks, stored.dtype):
        raise InputError(f"{url}: the stored level 0 ({stored.shape}, chunks {stored.chunks}, {stored.dtype}) is not "
                         f"the virtual volume its parameters make ({array.shape}, chunks {array.chunks}, "
                         f"{array.dtype}); expected the folder as `cvplgraph synth --virtual` wrote it")  # fmt: skip
    return array


__all__ = ["TILE", "VirtualStore", "VirtualVolume", "block_truth", "truth_count", "virtual_array", "write_virtual"]
