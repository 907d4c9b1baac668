"""The values that flow along edges, and their physical geometry.

Array ports (Image, Mask, Labels, Density) travel as ``xarray.DataArray`` with
dims ``("z", "y", "x")`` backed by dask, coordinates in µm and
``attrs = {"scale": [...], "translation": [...]}``. Points travel as a
:class:`Table` (a lazy pandas DataFrame plus the geometry of the volume it was
measured in); BlockCounts as :class:`BlockCounts`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.delayed import Delayed

from cvplgraph.errors import OpError
from cvplgraph.kernels import graph_sources, keys_token

if TYPE_CHECKING:
    import pandas as pd

    from cvplgraph.registry import OpDef

DIMS = ("z", "y", "x")


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel grid sits in physical space (µm)."""

    shape: tuple[int, int, int]
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def of(cls, array: xr.DataArray) -> Geometry:
        scale = array.attrs.get("scale", (1.0, 1.0, 1.0))
        translation = array.attrs.get("translation", (0.0, 0.0, 0.0))
        return cls(tuple(int(s) for s in array.shape), tuple(map(float, scale)), tuple(map(float, translation)))  # type: ignore[arg-type]

    def coords(self) -> dict[str, pd.Index]:
        """The µm position of every voxel centre, per axis, as the index xarray keeps (given as an index,
        xarray does not look for unit-aware arrays among them: that lookup imports pint where it is
        installed, a tenth of a second of every run)."""
        return {d: pd.Index(self.translation[i] + self.scale[i] * np.arange(self.shape[i]), name=d)
                for i, d in enumerate(DIMS)}  # fmt: skip

    def to_um(self, voxels: np.ndarray) -> np.ndarray:
        """(N, 3) voxel coordinates → (N, 3) µm."""
        return np.asarray(self.translation) + np.asarray(voxels, dtype=float) * np.asarray(self.scale)

    def to_voxel(self, um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) µm → the (N, 3) int64 index of the voxel holding each point, and whether it is inside.

        Voxel ``i`` is centred at ``translation + i * scale`` (OME-NGFF) and covers
        ``[centre - scale / 2, centre + scale / 2)``; a point on a face belongs to
        the voxel after it. Indices of points outside the grid are clipped to it,
        so they can be used to index (mask them with ``inside``).
        """
        um = np.asarray(um, dtype=np.float64).reshape(-1, 3)
        index = np.floor((um - np.asarray(self.translation)) / np.asarray(self.scale) + 0.5)
        inside = np.all((index >= 0) & (index < np.asarray(self.shape)), axis=1)
        return np.clip(index, 0, np.asarray(self.shape) - 1).astype(np.int64), inside

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {"shape": list(self.shape), "scale": list(self.scale), "translation": list(self.translation)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(tuple(d["shape"]), tuple(d["scale"]), tuple(d["translation"]))  # type: ignore[arg-type]


#: Units of the columns of cvplgraph's tables, by name (CF-style strings that pint also reads); a column
#: not named here has none (counts, ids, names, intensities scaled to [0, 1]).
COLUMN_UNITS = {
    "z_um": "micrometer", "y_um": "micrometer", "x_um": "micrometer",
    "volume_um3": "micrometer ** 3",
    "z": "voxel", "y": "voxel", "x": "voxel", "volume_voxels": "voxel",
    "volume_mm3": "millimeter ** 3", "volume_mm3_inclusive": "millimeter ** 3",
    "density_per_mm3": "1 / millimeter ** 3", "density_inclusive_per_mm3": "1 / millimeter ** 3",
    **{f"bbox_{axis}_{end}": "voxel" for axis in DIMS for end in ("min", "max")},
}  # fmt: skip


def unit_attrs(column: str) -> dict[str, Any]:
    """``{"units": …}`` for a column :data:`COLUMN_UNITS` names, else ``{}``."""
    unit = COLUMN_UNITS.get(column)
    return {} if unit is None else {"units": unit}


def with_units(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a ``units`` attribute on every variable and coordinate :data:`COLUMN_UNITS` names."""
    for name in list(ds.variables):
        ds[name].attrs.update(unit_attrs(str(name)))
    return ds


def wrap(data: da.Array, geometry: Geometry, *, name: str | None = None) -> xr.DataArray:
    """A dask array placed in physical space as a DataArray."""
    out = xr.DataArray(
        data,
        dims=DIMS,
        coords=geometry.coords(),
        name=name,
        attrs={"scale": list(geometry.scale), "translation": list(geometry.translation), "units": "micrometer"},
    )  # "units" here: of the scale and translation, as in earlier versions
    for d in DIMS:
        out[d].attrs["units"] = "micrometer"
    return out


def like(data: da.Array, template: xr.DataArray) -> xr.DataArray:
    """``data`` with the geometry of ``template`` (same shape)."""
    return wrap(data, Geometry.of(template))


def to_dataarray(value: Any, port: str) -> xr.DataArray:
    """numpy, dask or xarray (z, y, x) → a dask-backed DataArray (unit voxel size for plain arrays)."""
    if isinstance(value, xr.DataArray):
        arr = value if isinstance(value.data, da.Array) else value.chunk()
        if arr.ndim != 3:
            raise OpError(f"input {port!r}: expected a (z, y, x) array, got dims {arr.dims}")
        return arr.rename(dict(zip(arr.dims, DIMS))) if arr.dims != DIMS else arr
    if isinstance(value, (np.ndarray, da.Array)):
        if value.ndim != 3:
            raise OpError(f"input {port!r}: expected a 3-D (z, y, x) array, got shape {value.shape}")
        data = value if isinstance(value, da.Array) else da.from_array(value, chunks=value.shape)
        return wrap(data, Geometry(tuple(int(s) for s in value.shape)))  # type: ignore[arg-type]
    raise OpError(f"input {port!r}: expected a numpy, dask or xarray array, got {type(value).__name__}")


def per_part(
    func: Callable[..., Any],
    parts: Sequence[Delayed],
    *args: Any,
    pure: bool = True,
    numbered: bool = False,
    depends: Sequence[Any] = (),
) -> list[Delayed]:
    """``func(part, *args)`` (``func(part, *args, k)`` when ``numbered``) for every partition ``k`` of ``parts``,
    lazily: one graph layer of plain tasks when ``args`` hold no dask collection, however nested (a whole brain's
    table has 10⁴ partitions, and a ``dask.delayed`` call costs ~0.2 ms), else ``dask.delayed``. ``args`` may
    name the keys of ``depends`` (collections, e.g. an atlas's blocks: each task gets their values). Keys are
    named as ``dask.delayed`` names them; not ``pure``: fresh keys (for writes)."""
    from dask.base import tokenize
    from dask.delayed import unpack_collections
    from dask.highlevelgraph import HighLevelGraph
    from dask.utils import funcname

    numbers = [(k,) if numbered else () for k in range(len(parts))]
    if unpack_collections(list(args))[1]:
        return [dask.delayed(func, pure=pure)(part, *args, *n) for part, n in zip(parts, numbers)]
    token = tokenize(func, keys_token([p.key for p in parts]), args) if pure else uuid.uuid4().hex
    name = f"{funcname(func)}-{token}"
    layer: dict[Any, Any] = {(name, k): (func, part.key, *args, *numbers[k]) for k, part in enumerate(parts)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=graph_sources([*parts, *depends]))
    return [Delayed((name, k), graph, layer=name) for k in range(len(parts))]


@dataclass(frozen=True)
class Table:
    """A lazy table of objects (the Points type), in partitions.

    ``parts`` are dask Delayed objects, each yielding a pandas DataFrame with the same columns
    ``z, y, x`` (voxels), ``z_um, y_um, x_um`` and features (one Delayed is one partition); ``geometry`` is
    the voxel grid the coordinates refer to. A whole brain's table is too large for one process: the table
    ops work partition by partition (:func:`map_parts`, :func:`tree_sum`) and only what must be whole is
    gathered (``frame``: the partitions concatenated, in order).
    """

    parts: tuple[Delayed, ...]
    geometry: Geometry

    def __post_init__(self) -> None:
        if isinstance(self.parts, Delayed):  # one frame: a table of one partition
            object.__setattr__(self, "parts", (self.parts,))
        elif not self.parts:
            raise ValueError("a Table needs at least one partition")

    @property
    def frame(self) -> Delayed:
        """The whole table as one lazy DataFrame (the partitions concatenated, in order)."""
        if len(self.parts) == 1:
            return self.parts[0]
        return dask.delayed(_concat, pure=True)(*self.parts)

    def map_parts(self, func: Callable[..., Any], *args: Any) -> Table:
        """A table of the same geometry whose partition ``k`` is ``func(part_k, *args)``."""
        return Table(tuple(per_part(func, self.parts, *args)), self.geometry)

    def compute(self, **kwargs: Any) -> pd.DataFrame:
        return self.frame.compute(**kwargs)

    def to_xarray(self, frame: pd.DataFrame) -> xr.Dataset:
        # no ``cell`` coordinate, as a stored table read lazily has none (io/tables.points_dataset)
        ds = with_units(xr.Dataset.from_dataframe(frame.reset_index(drop=True).rename_axis("cell")).drop_vars("cell"))
        ds.attrs.update(self.geometry.to_dict())
        return ds


def _concat(*parts: pd.DataFrame) -> pd.DataFrame:
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


#: How many partial results one task of a :func:`tree_sum` adds up.
TREE_FANIN = 8


def tree_sum(parts: Sequence[Delayed], add: Callable[..., Any]) -> Delayed:
    """``add(*parts)`` as a tree of tasks adding :data:`TREE_FANIN` at a time: no task holds more than that many
    partial results (per-partition counts of a whole brain), and the sums run as the partitions come. One graph
    layer of plain tasks (a ``dask.delayed`` call per task costs ~1 ms: 2,000 of them at 10⁵ blocks)."""
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    name = f"{getattr(add, '__name__', 'add')}-{tokenize(keys_token([p.key for p in parts]), add)}"
    dsk: dict[Any, Any] = {}
    level: list[Any] = [p.key for p in parts]
    depth = 0
    while len(level) > 1:
        depth += 1
        keys = [(name, depth, i // TREE_FANIN) for i in range(0, len(level), TREE_FANIN)]
        dsk.update({k: (add, *level[i * TREE_FANIN : (i + 1) * TREE_FANIN]) for i, k in enumerate(keys)})
        level = keys
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=graph_sources(parts))
    return Delayed(level[0], graph, layer=name)


@dataclass(frozen=True)
class BlockCounts:
    """Object counts per block of a regular grid over a volume.

    ``counts`` is a Delayed numpy integer array of shape ``grid_shape``; block
    ``(i, j, k)`` covers voxels ``[i*bz, (i+1)*bz) × …`` of ``geometry``.
    """

    counts: Delayed
    block: tuple[int, int, int]
    geometry: Geometry

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return grid_shape(self.geometry.shape, self.block)

    def compute(self, **kwargs: Any) -> np.ndarray:
        return self.counts.compute(**kwargs)

    def to_xarray(self, counts: np.ndarray) -> xr.DataArray:
        """Counts with block-centre coordinates in µm and the total in attrs."""
        g = self.geometry
        coords = {}
        for i, d in enumerate(DIMS):
            starts = np.arange(self.grid_shape[i]) * self.block[i]
            ends = np.minimum(starts + self.block[i], g.shape[i])
            coords[d] = pd.Index(g.translation[i] + g.scale[i] * ((starts + ends - 1) / 2), name=d)  # see coords()
        out = xr.DataArray(counts, dims=DIMS, coords=coords, name="count")
        for d in DIMS:
            out[d].attrs["units"] = "micrometer"  # block centres
        out.attrs.update({"total": int(counts.sum()), "block": list(self.block), **g.to_dict()})
        return out


def block_start(chunks: Sequence[Sequence[int]], block_id: Sequence[int]) -> np.ndarray:
    """The first voxel of block ``block_id`` of a dask chunking, in the whole array."""
    return np.array([sum(chunks[a][: block_id[a]]) for a in range(len(block_id))])


def grid_shape(shape: Sequence[int], block: Sequence[int]) -> tuple[int, int, int]:
    """Number of blocks of size ``block`` needed to cover ``shape`` (last ones may be partial)."""
    return tuple(-(-int(s) // int(b)) for s, b in zip(shape, block))  # type: ignore[return-value]


def adapt_call(opdef: OpDef) -> Callable[..., Any]:
    """Wrap an op so it also takes numpy/dask arrays and answers in kind.

    Inside the graph ops get DataArrays; called directly on numpy arrays an op
    returns numpy (or a pandas DataFrame for Points), on dask arrays a dask array.
    """
    func = opdef.func
    array_ports = [p.name for p in opdef.inputs if any(t.is_array for t in p.types)]

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        bound = list(args)
        kinds = set()
        for i, port in enumerate(opdef.inputs):
            if i >= len(bound):
                break
            value = bound[i]
            if port.name in array_ports and value is not None and not isinstance(value, (Table, BlockCounts)):
                kinds.add(type(value))
                bound[i] = to_dataarray(value, port.name)
        result = func(*bound, **kwargs)
        if kinds and kinds <= {np.ndarray}:
            return _materialise(result)
        if kinds and kinds <= {da.Array, np.ndarray} and isinstance(result, xr.DataArray):
            return result.data
        return result

    return call


def _materialise(result: Any) -> Any:
    """Compute a small result of a direct call on in-memory numpy input."""
    if isinstance(result, xr.DataArray):
        return result.data.compute() if isinstance(result.data, da.Array) else result.values
    if isinstance(result, (Table, BlockCounts)):
        return result.compute(scheduler="threads")
    return result


def block_slices(chunks: Sequence[Sequence[int]]) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """Every block's index and its slices in the whole array (C order): per axis once, then combined and
    transposed by ``zip`` (a microsecond a block: a whole brain's graph reads 10⁵ of them)."""
    import itertools

    axes = []
    for sizes in chunks:
        edges = np.cumsum((0, *sizes)).tolist()
        axes.append(list(enumerate(itertools.starmap(slice, zip(edges, edges[1:])))))
    return [tuple(zip(*picked)) for picked in itertools.product(*axes)]  # type: ignore[misc]


__all__ = ["DIMS", "Geometry", "Table", "BlockCounts", "wrap", "like", "to_dataarray", "block_slices"]


#: Hemisphere values of an atlas in sample space.
LEFT, RIGHT = 1, 2
#: Ids of the explicit rows for points that no region holds.
OUTSIDE_BRAIN, OUTSIDE_ATLAS = 0, -1


@dataclass(frozen=True)
class Atlas:
    """An atlas in sample space: the Atlas port type.

    ``annotation`` holds uint32 region ids (0 = no region), ``hemispheres``
    1 = left, 2 = right, 0 = neither (or None), both on the same grid;
    ``structures`` has :data:`cvplgraph.io.atlas.STRUCTURE_COLUMNS` (``path`` a tuple of ids
    from the root to the region); ``source`` names the files for messages; ``ids``, when known, the
    sorted distinct ids of the annotation (what the region ops check against the structure table
    before any compute).
    """

    annotation: xr.DataArray
    hemispheres: xr.DataArray | None
    structures: pd.DataFrame
    source: str
    structures_file: str = ""
    ids: np.ndarray | None = None
    axes: tuple[int, int, int] = (0, 1, 2)  # the file axis of each sample axis (z, y, x)
    flips: tuple[bool, bool, bool] = (False, False, False)  # sample axes that run against their file axis

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self.annotation)

    def file_voxels(self, um: np.ndarray) -> np.ndarray:
        """(N, 3) µm → voxel coordinates along the atlas file's own axes (see :func:`file_voxels`)."""
        return file_voxels(um, self.geometry, self.axes, self.flips)


def file_voxels(um: np.ndarray, geometry: Geometry, axes: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """(N, 3) µm → (N, 3) float voxel coordinates along the axes of the file a grid was read from, when its
    sample axis ``k`` is file axis ``axes[k]``, reversed where ``flips[k]`` (BrainGlobe's atlas space for a
    BrainGlobe atlas): voxel centres at integers, what brainmapper calls atlas coordinates."""
    g = geometry
    index = (np.asarray(um, dtype=np.float64).reshape(-1, 3) - np.asarray(g.translation)) / np.asarray(g.scale)
    index = np.where(np.asarray(flips, dtype=bool), np.asarray(g.shape) - 1 - index, index)
    out = np.empty_like(index)
    out[:, list(axes)] = index
    return out
