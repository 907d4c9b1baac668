"""OME-Zarr stores: reading the raw input, writing and reading arrays block by block.

Images, masks and labels are written as OME-NGFF 0.5 multiscale groups (zarr
v3), labels with ``image-label`` metadata; inputs are read in NGFF 0.4 (zarr
v2) or 0.5 (zarr v3). Writes are lazy (one dask task per block) so they join the
run's single graph. Tables and block counts are in :mod:`cvplgraph.io.tables`.
"""

from __future__ import annotations

import itertools
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from cvplgraph.errors import CacheError, DamagedStore, InputError
from cvplgraph.io.meter import WRITTEN, Metered, count, read_zarr
from cvplgraph.io.ngff import ngff_metadata, virtual_params
from cvplgraph.io.records import Ranges, expand, mark
from cvplgraph.io.virtual import virtual_array
from cvplgraph.spec.model import InputSpec, StoreSpec
from cvplgraph.types import PortType
from cvplgraph.values import DIMS, Geometry, wrap

# --- reading OME-Zarr -------------------------------------------------------------------------


def zarr_location(url: str) -> str:
    """What to hand zarr: ``file://`` URLs become plain paths (zarr's local store creates
    folders as it writes; fsspec's local filesystem does not)."""
    return url[len("file://") :] if url.startswith("file://") else url


def create_group(url: str) -> zarr.Group:
    """A new, empty group at ``url`` (replacing anything there)."""
    try:
        return zarr.open_group(zarr_location(url), mode="w")
    except OSError as exc:
        raise CacheError(f"{url}: cannot create the store ({exc})") from None


def open_group(url: str, mode: str = "r") -> zarr.Group:
    try:
        return zarr.open_group(zarr_location(url), mode=mode)  # type: ignore[arg-type]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError) as exc:
        raise InputError(f"{url}: not a readable zarr group ({exc.__class__.__name__}: {exc})") from None


def child_array(group: zarr.Group, path: str, url: str) -> zarr.Array:
    """The array at ``path`` inside ``group``, or an InputError naming what is missing."""
    try:
        node = group[path]
    except KeyError:
        raise InputError(f"{url}: array {path!r} is missing") from None
    if not isinstance(node, zarr.Array):
        raise InputError(f"{url}: {path!r} is a group, expected an array")
    return node


def cvplgraph_attrs(group: zarr.Group) -> dict[str, Any]:
    """The ``cvplgraph`` attributes of a table or block-count store."""
    meta = group.attrs.get("cvplgraph")
    if not isinstance(meta, dict):
        raise InputError(f"{group.store_path}: not a cvplgraph table store (no 'cvplgraph' attributes)")
    return meta


def multiscales(attrs: dict[str, Any], url: str) -> dict[str, Any]:
    """The first ``multiscales`` entry of NGFF 0.5 (``attrs["ome"]``) or 0.4 metadata."""
    meta = attrs.get("ome", attrs)
    ms = meta.get("multiscales")
    if not ms:
        raise InputError(f"{url}: no OME-NGFF 'multiscales' metadata; expected an OME-Zarr image")
    return ms[0]


def _transforms(items: Sequence[dict[str, Any]], ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for t in items or ():
        if t.get("type") == "scale":
            scale = scale * np.asarray(t["scale"], dtype=float)
        elif t.get("type") == "translation":
            translation = translation + np.asarray(t["translation"], dtype=float)
    return scale, translation


def axis_names(ms: dict[str, Any], ndim: int) -> list[str]:
    axes = ms.get("axes")
    if not axes:  # NGFF ≤ 0.3: fixed order ending in z, y, x
        return list("tczyx"[-ndim:])
    return [a["name"] if isinstance(a, dict) else str(a) for a in axes]


def read_input(spec: InputSpec) -> xr.DataArray:
    """The raw image as a lazy float32 (z, y, x) DataArray in [0, 1] with physical coordinates."""
    return open_input(spec)[0]


def open_input(spec: InputSpec) -> tuple[xr.DataArray, Delayed | None]:
    """:func:`read_input`, and the lazy number of non-finite voxels it replaces (None when it replaces none).

    Non-finite values (NaN, ±Inf) exist only in float images; each block is checked where it is
    read, inside the compute: ``nonfinite = "error"`` stops the run naming the block,
    ``"zero"`` reads them as the image's 0 and counts them. Integer images are not checked.
    """
    group = open_group(spec.url)
    ms = multiscales(group.attrs.asdict(), spec.url)
    datasets = ms["datasets"]
    if spec.level >= len(datasets):
        raise InputError(f"{spec.url}: level {spec.level} requested but the store has {len(datasets)} level(s)")
    ds = datasets[spec.level]
    array = child_array(group, ds["path"], spec.url)
    params = virtual_params(group.attrs.asdict())
    if params is not None:  # a virtual volume: its chunks are rendered when read, not stored
        array = virtual_array(params, spec.url, array)
    names = axis_names(ms, array.ndim)
    if not set(DIMS) <= set(names):
        raise InputError(f"{spec.url}: axes {names} lack one of z, y, x")
    scale, translation = _transforms(ds.get("coordinateTransformations", []), array.ndim)
    gscale, gtrans = _transforms(ms.get("coordinateTransformations", []), array.ndim)
    scale, translation = scale * gscale, translation * gscale + gtrans
    label = f"level {spec.level} of {spec.url}"
    where = f"{spec.url} level {spec.level}"
    replaced = None
    if names == list(DIMS) and not spec.crop and not spec.chunks and not (
        np.issubdtype(array.dtype, np.floating) and spec.nonfinite != "error"
    ):  # the common whole-brain case: each chunk read, checked and scaled in one task (a graph built fast)
        data = read_zarr(array, label, post=UnitFloat.of(array.dtype, spec.intensity_range, where))
    else:
        data, scale, translation, replaced = _selected(spec, read_zarr(array, label), names, scale, translation, where)
        data = to_unit_float(data, spec.intensity_range)
    geometry = Geometry(tuple(int(s) for s in data.shape), tuple(scale.tolist()), tuple(translation.tolist()))  # type: ignore[arg-type]
    return wrap(data, geometry, name="input"), replaced


def _selected(
    spec: InputSpec, data: Any, names: list[str], scale: np.ndarray, translation: np.ndarray, where: str
) -> tuple[da.Array, np.ndarray, np.ndarray, Delayed | None]:
    """The read array ``data`` with the spec's channel and timepoint picked, axes in z, y, x order, cropped,
    rechunked and checked for non-finite values; its scale and translation; the lazy count of the values
    replaced (None when none are)."""
    index: list[Any] = []
    for axis, size in zip(names, data.shape):
        if axis in DIMS:
            index.append(slice(None))
            continue
        pick = {"c": spec.channel, "t": spec.timepoint}.get(axis, 0)
        if pick >= size:
            raise InputError(f"{spec.url}: {axis}={pick} requested but axis {axis!r} has size {size}")
        index.append(pick)
    data = data[tuple(index)]
    keep = [i for i, a in enumerate(names) if a in DIMS]
    order = [names[i] for i in keep]
    axes = [order.index(d) for d in DIMS]
    if axes != [0, 1, 2]:
        data = data.transpose(axes)
    zyx = [keep[order.index(d)] for d in DIMS]
    scale, translation = scale[zyx], translation[zyx]
    origin = [0, 0, 0]
    if spec.crop:
        sl = []
        for (start, stop), size, axis in zip(spec.crop, data.shape, DIMS):
            stop = size if stop < 0 else stop
            if start >= size or stop > size:
                raise InputError(f"{spec.url}: crop {axis} = [{start}, {stop}] exceeds the axis size {size}")
            sl.append(slice(start, stop))
        translation = translation + scale * np.array([s.start for s in sl])
        origin = [s.start for s in sl]
        data = data[tuple(sl)]
    if spec.chunks:
        data = data.rechunk(spec.chunks)
    replaced = None
    if np.issubdtype(data.dtype, np.floating):  # integers hold no NaN: no check, no cost
        low = spec.intensity_range[0] if spec.intensity_range else 0.0  # read as the image's 0
        raw, data = data, data.map_blocks(_finite, where, tuple(origin), spec.nonfinite, low, dtype=data.dtype)
        if spec.nonfinite != "error":  # a task per block beside the replacing one: both share the block read
            counts = raw.map_blocks(_count_nonfinite, chunks=(1, 1, 1), dtype=np.int64).sum()
            replaced = counts.to_delayed().ravel()[0]  # a Delayed: a run's compute takes no array among its delayeds
    return data, scale, translation, replaced


def _finite(
    block: np.ndarray, where: str, origin: tuple[int, ...], mode: str, fill: float, block_info: Any = None
) -> np.ndarray:
    """``block`` with its non-finite values replaced by ``fill`` (``mode`` "zero"), or an InputError naming it."""
    if _sum_is_finite(block):  # the common case
        return block
    bad = ~np.isfinite(block)
    if not bad.any():
        return block
    if mode != "error":
        return np.where(bad, block.dtype.type(fill), block)
    info = (block_info or {}).get(0, {})
    location = info.get("array-location") or [(0, n) for n in block.shape]
    voxels = ", ".join(f"{d} {o + a}:{o + b}" for d, o, (a, b) in zip(DIMS, origin, location))
    nan = int(np.isnan(block).sum())
    raise InputError(
        f"{where}: block {tuple(info.get('chunk-location', ()))} (voxels {voxels}) holds {int(bad.sum())} "
        f"non-finite value(s) ({nan} NaN, {int(bad.sum()) - nan} ±Inf); expected finite intensities (a broken "
        'conversion?). Fix the store, or set [input] nonfinite = "zero" to read them as 0'
    )


def _count_nonfinite(block: np.ndarray) -> np.ndarray:
    """The number of non-finite values of a raw block, as a (1, 1, 1) array."""
    n = 0 if _sum_is_finite(block) else np.count_nonzero(~np.isfinite(block))
    return np.full((1, 1, 1), n, dtype=np.int64)


def _sum_is_finite(block: np.ndarray) -> bool:
    """True when ``block``'s sum is finite, which proves every value finite (a NaN or ±Inf makes it NaN or
    ±Inf) in one pass with no mask; False may also be an overflow, so callers check the values then."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(block, axis=None)))


def _unit_range(dtype: np.dtype, intensity_range: tuple[float, float] | None) -> tuple[float, float] | None:
    """The intensities read as 0 and 1: the declared range, else the integer dtype's; None for a float image
    without a declared range (read as it is)."""
    if intensity_range is not None:
        return intensity_range
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(max(info.min, 0)), float(info.max)
    if np.issubdtype(dtype, np.floating):
        return None
    raise InputError(f"unsupported input dtype {dtype}; expected an integer or float image")


def to_unit_float(data: da.Array, intensity_range: tuple[float, float] | None) -> da.Array:
    """Scale to float32 in [0, 1] by the declared range, else by the integer dtype's range."""
    bounds = _unit_range(data.dtype, intensity_range)
    if bounds is None:
        return data if data.dtype == np.float32 else data.astype(np.float32)
    low, high = bounds
    scale = np.float32(1.0 / (high - low))
    return da.clip((data.astype(np.float32) - np.float32(low)) * scale, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class UnitFloat:
    """What a read chunk becomes, in the read's task: checked for NaN/±Inf (float images; the run stops at the
    first block that holds any) and scaled to float32 in [0, 1] as :func:`to_unit_float` scales it, value for
    value."""

    check: bool
    low: float | None
    scale: float
    where: str
    dtype: np.dtype = np.dtype(np.float32)

    @classmethod
    def of(cls, dtype: np.dtype, intensity_range: tuple[float, float] | None, where: str) -> UnitFloat:
        bounds = _unit_range(dtype, intensity_range)
        scale = 1.0 if bounds is None else float(np.float32(1.0 / (bounds[1] - bounds[0])))
        return cls(bool(np.issubdtype(dtype, np.floating)), None if bounds is None else bounds[0], scale, where)

    def __call__(self, block: np.ndarray, index: tuple[int, ...], slices: tuple[slice, ...]) -> np.ndarray:
        if self.check:
            info = {0: {"chunk-location": index, "array-location": [(s.start, s.stop) for s in slices]}}
            block = _finite(block, self.where, (0, 0, 0), "error", 0.0, block_info=info)
        if self.low is None:
            return block.astype(np.float32, copy=False)
        out = block.astype(np.float32)
        out -= np.float32(self.low)
        out *= np.float32(self.scale)
        return np.clip(out, 0, 1, out=out)


# --- writing OME-Zarr -------------------------------------------------------------------------


def compressors(options: dict[str, Any]) -> list[Any]:
    cid = options.get("id", "blosc")
    if cid == "blosc":
        return [
            BloscCodec(
                cname=options.get("cname", "zstd"),
                clevel=int(options.get("clevel", 3)),
                shuffle="bitshuffle" if options.get("shuffle") == "bit" else "shuffle",
            )
        ]
    if cid == "zstd":
        return [ZstdCodec(level=int(options.get("level", options.get("clevel", 3))))]
    if cid == "gzip":
        return [GzipCodec(level=int(options.get("level", options.get("clevel", 5))))]
    return []


def downsample(data: da.Array, kind: PortType) -> da.Array:
    """One pyramid step: ×2 along every axis longer than 1; mean for images, nearest for labels."""
    factors = {a: 2 if s > 1 else 1 for a, s in enumerate(data.shape)}
    if kind.is_label:
        return data[tuple(slice(None, None, f) for f in factors.values())]
    chunks = tuple(max(f, c - c % f) for c, f in zip((c[0] for c in data.chunks), factors.values()))
    return da.coarsen(np.mean, data.rechunk(chunks), factors, trim_excess=True).astype(data.dtype)


def align(data: da.Array, store_chunks: tuple[int, ...] | None) -> tuple[da.Array, tuple[int, ...]]:
    """``data`` rechunked (only if needed) so its blocks cover whole stored chunks, and the stored chunk shape."""
    chunks = tuple(min(c, s) for c, s in zip(store_chunks or tuple(c[0] for c in data.chunks), data.shape))
    if all(all(c % k == 0 for c in cs[:-1]) for cs, k in zip(data.chunks, chunks)):
        return data, chunks
    return data.rechunk(chunks), chunks


def levels(data: da.Array, kind: PortType, store: StoreSpec) -> list[tuple[da.Array, tuple[int, ...]]]:
    """Every pyramid level to store (aligned to its stored chunks), and its chunk shape."""
    out = []
    for level in range(store.multiscale):
        if level:
            data = downsample(data, kind)
        out.append(align(data, store.chunks))
    return out


def describe(group: zarr.Group, value: xr.DataArray, kind: PortType, store: StoreSpec, name: str) -> None:
    group.attrs.update(ngff_metadata(Geometry.of(value), store.multiscale, kind, name))
    # the stored chunking may suit display (e.g. 1 × 4096 × 4096); reading back for computation
    # restores the working chunking
    group.attrs["cvplgraph"] = {"type": str(kind), "working_chunks": [list(c) for c in value.data.chunks]}


def write_array(url: str, value: xr.DataArray, kind: PortType, store: StoreSpec, name: str) -> list[Any]:
    """Create the OME-Zarr group at ``url`` now (replacing anything there); return the lazy writes of its levels.

    For declared outputs. Cache stores use :func:`cvplgraph.cache.store.write_cached_array`,
    which never replaces anything and resumes.
    """
    group = create_group(url)
    describe(group, value, kind, store, name)
    writes = []
    for level, (aligned, chunks) in enumerate(levels(value.data, kind, store)):
        writes += block_writes(
            aligned, create_array(group, str(level), aligned, chunks, dict(store.compressor)), chunks
        )
    return writes


def create_array(
    group: zarr.Group, path: str, data: da.Array, chunks: tuple[int, ...], codec: dict[str, Any]
) -> zarr.Array:
    """A new level array in ``group`` for ``data`` stored in ``chunks`` (fill value 0)."""
    return group.create_array(
        path,
        shape=data.shape,
        chunks=chunks,
        dtype=data.dtype,
        dimension_names=list(DIMS),
        compressors=compressors(codec),
        fill_value=0,
    )


def block_regions(
    chunks: tuple[tuple[int, ...], ...], stored: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...], Ranges]]:
    """For every block of a dask chunking (C order): its index, its region, and the stored chunks it covers."""
    axes = []
    for sizes, c in zip(chunks, stored):
        edges = np.cumsum((0, *sizes)).tolist()
        axes.append([(i, slice(lo, hi), (lo // c, -(-hi // c))) for i, (lo, hi) in enumerate(zip(edges, edges[1:]))])
    for picked in itertools.product(*axes):  # per axis once, then combined (transposed by zip): a microsecond a block
        index, region, ranges = zip(*picked)
        yield index, region, ranges


def block_writes(
    aligned: da.Array,
    array: zarr.Array,
    chunks: tuple[int, ...],
    done: set[tuple[int, ...]] = frozenset(),  # type: ignore[assignment]
    marker: Callable[[Ranges], str] | None = None,
) -> list[Delayed]:
    """One task per block writing its chunks (then, with ``marker``, recording them), except
    blocks whose chunks are all in ``done``; each task as a Delayed.

    Delayed, not ``da.store``: dask (2026.8) misorders results when one
    ``compute`` mixes arrays and delayed objects. The tasks share one graph
    layer built here (a ``dask.delayed`` call per block tokenizes its
    arguments, which costs more than the layer for thousands of blocks).
    """
    # a fresh name per call: writes are effects, and a scheduler that still holds a finished task of the
    # same key (a client reused across runs) would hand back its result instead of writing again
    name = "write_block-" + tokenize(aligned.name, str(array.store_path), sorted(done), marker is None, uuid.uuid4())
    layer: dict[Any, Any] = {}
    for index, region, ranges in block_regions(aligned.chunks, chunks):
        if done and all(chunk in done for chunk in expand(ranges)):
            continue
        url = marker(ranges) if marker is not None else None
        layer[(name, *index)] = (write_block, (aligned.name, *index), array, region, url)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[aligned])  # type: ignore[list-item]
    return [Delayed(key, graph, layer=name) for key in layer]


def write_block(block: np.ndarray, array: zarr.Array, region: tuple[slice, ...], marker: str | None) -> int:
    """Write one block's chunks, then record them as done (in this order: a kill in between rewrites them).

    The record holds a checksum of every chunk's values (None for a chunk of
    fill values, which zarr does not store), for ``cvplgraph cache verify``.
    Whole chunks of plain arrays are written by :class:`~cvplgraph.io.chunks.ChunkWriter` (zarr's bytes,
    without zarr's copies), the rest by zarr.
    """
    from cvplgraph.io.chunks import ChunkWriter

    try:
        chunks = tuple(int(c) for c in array.chunks)
        origin = [r.start for r in region]
        writer = ChunkWriter.of(array)
        if writer is None:
            array[region] = block
        sums: dict[str, str | None] = {}
        for offset in np.ndindex(*(-(-n // c) for n, c in zip(block.shape, chunks))):
            local = tuple(slice(o * c, min((o + 1) * c, n)) for o, c, n in zip(offset, chunks, block.shape))
            part = block[local]
            empty = not part.any()
            if writer is not None:
                target = tuple(slice(s + p.start, s + p.stop) for s, p in zip(origin, local))
                if not writer.write(target, part, nonzero=not empty):
                    array[target] = part
            if marker is not None:
                index = ".".join(str(s // c + o) for s, c, o in zip(origin, chunks, offset))
                sums[index] = None if empty else chunk_checksum(part)
        count(WRITTEN, block.nbytes)
        if marker is not None:
            mark(marker, sums)
    except OSError as exc:  # a full disk, a quota, a lost mount: named, never a traceback
        where = "×".join(f"{r.start}:{r.stop}" for r in region)
        raise CacheError(f"{array.store_path}: writing the block {where} failed ({exc.strerror or exc}); "
                         "expected room to write (disk full?); nothing was committed for it") from None  # fmt: skip
    return 1


def chunk_checksum(values: np.ndarray) -> str:
    """CRC-32 of a chunk's values (C order), independent of how the chunk is compressed."""
    return f"{zlib.crc32(np.ascontiguousarray(values).reshape(-1).view(np.uint8).data):08x}"  # no copy of a C chunk


class _Checked(Metered):
    """A stored array whose chunks listed in ``stored`` must exist: zarr reads an absent chunk as the fill
    value, so a chunk deleted under a reader would pass for zeros. Checked after the read: a chunk
    present then was present during the read (chunks are deleted, never written back)."""

    def __init__(self, array: zarr.Array, url: str, stored: frozenset[tuple[int, ...]]) -> None:
        super().__init__(array)
        self.url, self.stored = url, stored

    def __getitem__(self, index: Any) -> Any:
        try:
            values = super().__getitem__(index)
        except InputError as exc:  # undecodable bytes in a cache store: damage, recomputed like an absent chunk
            raise DamagedStore(str(exc), self.url) from None
        at = tuple(s.start // c for s, c in zip(index, self.array.chunks))
        if at in self.stored:
            key = self.array.metadata.encode_chunk_key(at)
            path = f"{self.array.store_path.path}/{key}".lstrip("/")
            fs, root = fsspec.core.url_to_fs(self.url)
            if not fs.exists(f"{root.rstrip('/')}/{path}"):
                raise DamagedStore(f"{self.url}: chunk {path} is missing, yet the cache recorded it as written "
                                   "(deleted while the run read it?)", self.url)  # fmt: skip
        return values


def read_array(
    url: str, level: int = 0, *, working: bool = True, stored: frozenset[tuple[int, ...]] | None = None
) -> xr.DataArray:
    """One level of a stored array; level 0 comes back in the chunks it was computed in
    (``working=False``: in the stored chunks, as a viewer wants them). ``stored``: the chunk indices
    known to hold data; reading one of them that is absent raises :class:`DamagedStore`."""
    group = open_group(url)
    attrs: dict[str, Any] = dict(group.attrs.asdict())
    ms = multiscales(attrs, url)
    ds = ms["datasets"][level]
    scale, translation = _transforms(ds["coordinateTransformations"], 3)
    array = child_array(group, ds["path"], url)
    data = read_zarr(array) if stored is None else read_zarr(array, reader=_Checked(array, url, stored))
    ours: dict[str, Any] = attrs.get("cvplgraph") or {}
    chunks: list[list[int]] | None = ours.get("working_chunks") if working and level == 0 else None
    if chunks and [sum(c) for c in chunks] == list(data.shape) and tuple(map(tuple, chunks)) != data.chunks:
        data = data.rechunk(tuple(tuple(c) for c in chunks))
    return wrap(data, Geometry(tuple(data.shape), tuple(scale.tolist()), tuple(translation.tolist())))  # type: ignore[arg-type]
