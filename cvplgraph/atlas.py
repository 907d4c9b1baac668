"""Atlas inputs: a region-id label volume, its structure table and optional hemispheres.

An atlas is read lazily, block by block, from one of three layouts:

- an OME-Zarr label image (``.ome.zarr`` / ``.zarr``; voxel size and offset from
  its NGFF metadata);
- a TIFF stack (voxel size from the spec's ``scale``), read a few pages at a time;
- a BrainGlobe atlas folder (``annotation.tiff``, ``hemispheres.tiff``,
  ``structures.csv`` or ``structures.json``, ``metadata.json`` whose
  ``resolution`` gives the voxel size).

Region ids stay integers end to end (ids above 2**24 exist; a float would merge
them), so an atlas stored as float is rejected. Hemisphere volumes are recoded
to 1 = left, 2 = right, 0 = neither, from the spec's ``hemisphere_values``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from .errors import InputError
from .values import DIMS, Geometry, wrap

LEFT, RIGHT = 1, 2
#: Ids of the explicit rows for points that no region holds.
OUTSIDE_BRAIN, OUTSIDE_ATLAS = 0, -1
STRUCTURE_COLUMNS = ["id", "acronym", "name", "parent_id", "depth", "path"]
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class AtlasSpec:
    """Where an atlas is and how it sits in sample space (see docs/spec.md, ``[inputs.NAME]``)."""

    url: str
    structures: str = ""  # CSV or BrainGlobe JSON; default: the BrainGlobe folder's
    hemispheres: str = ""  # label volume of the annotation's shape; default: the folder's, if any
    hemisphere_values: tuple[int, int] = (LEFT, RIGHT)  # the stored values of (left, right)
    scale: tuple[float, float, float] | None = None  # µm per voxel along sample (z, y, x)
    translation: tuple[float, float, float] | None = None  # µm of the first voxel's centre
    transpose: tuple[int, int, int] = (0, 1, 2)  # file axes that become sample (z, y, x)
    chunks: tuple[int, int, int] = (64, 64, 64)  # working chunks in sample orientation


@dataclass(frozen=True)
class Atlas:
    """An atlas in sample space: the Atlas port type.

    ``annotation`` holds uint32 region ids (0 = no region), ``hemispheres``
    1 = left, 2 = right, 0 = neither (or None), both on the same grid;
    ``structures`` has :data:`STRUCTURE_COLUMNS` (``path`` a tuple of ids
    from the root to the region); ``source`` names the files for messages.
    """

    annotation: xr.DataArray
    hemispheres: xr.DataArray | None
    structures: pd.DataFrame
    source: str
    structures_file: str = ""

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self.annotation)


# --- files -----------------------------------------------------------------------------------


def _is_brainglobe(url: str) -> bool:
    return Path(url).is_dir() and (Path(url) / "annotation.tiff").exists()


def files_of(spec: AtlasSpec) -> dict[str, str]:
    """The annotation, structure table and hemisphere files the spec points to (resolved defaults)."""
    if _is_brainglobe(spec.url):
        folder = Path(spec.url)
        table = next((folder / n for n in ("structures.csv", "structures.json") if (folder / n).exists()), None)
        hemi = folder / "hemispheres.tiff"
        return {
            "annotation": str(folder / "annotation.tiff"),
            "structures": spec.structures or str(table or folder / "structures.csv"),
            "hemispheres": spec.hemispheres or (str(hemi) if hemi.exists() else ""),
            "metadata": str(folder / "metadata.json"),
        }
    if not spec.structures:
        raise InputError(f'{spec.url}: an atlas needs a structure table; set structures = "structures.csv"')
    return {"annotation": spec.url, "structures": spec.structures, "hemispheres": spec.hemispheres}


def _tiff_pages(path: str, start: int, stop: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return np.asarray(tif.asarray(key=range(start, stop)))


def _lazy_tiff(path: str, pages_per_chunk: int) -> da.Array:
    """A TIFF stack as a dask array read ``pages_per_chunk`` pages (file axis 0) at a time."""
    import tifffile

    if not Path(path).exists():
        raise InputError(f"{path}: does not exist")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            pages = len(series.pages)
    except Exception as exc:  # tifffile raises several types for unreadable files
        raise InputError(f"{path}: not a readable TIFF ({exc})") from None
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or pages != shape[0]:
        raise InputError(f"{path}: expected a 3-D stack of 2-D pages, got shape {shape}")
    blocks = []
    for start in range(0, shape[0], pages_per_chunk):
        stop = min(start + pages_per_chunk, shape[0])
        part = dask.delayed(_tiff_pages, pure=True)(path, start, stop)
        blocks.append(da.from_delayed(part, shape=(stop - start, *shape[1:]), dtype=dtype))
    return da.concatenate(blocks, axis=0)


def _lazy_zarr(url: str) -> tuple[da.Array, tuple[float, ...], tuple[float, ...]]:
    from .storage import read_array

    try:
        array = read_array(url)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{url}: not a readable OME-Zarr label image ({exc})") from None
    g = Geometry.of(array)
    return array.data, g.scale, g.translation


def _to_sample(data: da.Array, spec: AtlasSpec, path: str, chunks: tuple[int, int, int]) -> da.Array:
    if sorted(spec.transpose) != [0, 1, 2]:
        raise InputError(f"{path}: transpose must be a permutation of [0, 1, 2], got {list(spec.transpose)}")
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D label volume, got shape {data.shape}")
    if tuple(spec.transpose) != (0, 1, 2):
        data = data.transpose(spec.transpose)
    return data.rechunk(tuple(min(c, s) for c, s in zip(chunks, data.shape)))


def _open_volume(path: str, spec: AtlasSpec) -> tuple[da.Array, tuple[float, ...] | None, tuple[float, ...] | None]:
    """A label volume in sample orientation, with the voxel size and offset its file declares."""
    if path.lower().endswith(TIFF_SUFFIXES):
        data = _lazy_tiff(path, pages_per_chunk=max(1, spec.chunks[spec.transpose.index(0)]))
        return _to_sample(data, spec, path, spec.chunks), None, None
    data, scale, translation = _lazy_zarr(path)
    return _to_sample(data, spec, path, spec.chunks), scale, translation


def _brainglobe_resolution(metadata: str) -> tuple[float, ...] | None:
    try:
        meta = json.loads(Path(metadata).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"{metadata}: not readable JSON ({exc})") from None
    resolution = meta.get("resolution")
    if not (isinstance(resolution, list) and len(resolution) == 3):
        raise InputError(f"{metadata}: expected resolution = [z, y, x] µm, got {resolution!r}")
    return tuple(float(r) for r in resolution)


def read_atlas(spec: AtlasSpec) -> Atlas:
    """The atlas of ``spec`` as lazy arrays in sample space plus its structure table."""
    files = files_of(spec)
    annotation, scale, translation = _open_volume(files["annotation"], spec)
    if not np.issubdtype(annotation.dtype, np.integer):
        raise InputError(
            f"{files['annotation']}: region ids are stored as {annotation.dtype}; expected an integer "
            "label volume (uint32: ids above 2**24 do not survive float32)"
        )
    if "metadata" in files and spec.scale is None:
        found = _brainglobe_resolution(files["metadata"])
        scale = tuple(found[a] for a in spec.transpose) if found else None
    scale = spec.scale or scale
    if scale is None:
        raise InputError(f"{files['annotation']}: the voxel size is unknown; set scale = [z, y, x] in µm")
    translation = spec.translation or translation or (0.0, 0.0, 0.0)
    geometry = Geometry(tuple(int(s) for s in annotation.shape), tuple(scale), tuple(translation))  # type: ignore[arg-type]
    hemispheres = None
    if files["hemispheres"]:
        hemi, _, _ = _open_volume(files["hemispheres"], spec)
        if hemi.shape != annotation.shape:
            raise InputError(
                f"{files['hemispheres']}: hemisphere volume has shape {tuple(hemi.shape)} (after transpose); "
                f"expected the annotation's {tuple(annotation.shape)}"
            )
        if not np.issubdtype(hemi.dtype, np.integer):
            raise InputError(f"{files['hemispheres']}: hemisphere values are {hemi.dtype}; expected integers")
        left, right = spec.hemisphere_values
        coded = da.map_blocks(_recode, hemi.rechunk(annotation.chunks), left, right, dtype=np.uint8)
        hemispheres = wrap(coded, geometry, name="hemispheres")
    structures = read_structures(files["structures"])
    ids = wrap(annotation.astype(np.uint32) if annotation.dtype != np.uint32 else annotation, geometry, name="atlas")
    return Atlas(ids, hemispheres, structures, files["annotation"], files["structures"])


def _recode(block: np.ndarray, left: int, right: int) -> np.ndarray:
    return np.where(block == left, LEFT, np.where(block == right, RIGHT, 0)).astype(np.uint8)


# --- the structure table ---------------------------------------------------------------------


def _path_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(int(v) for v in value)
    return tuple(int(v) for v in str(value).strip("/").split("/") if v)


def read_structures(path: str) -> pd.DataFrame:
    """A structure table (Allen/BrainGlobe CSV or BrainGlobe JSON) → :data:`STRUCTURE_COLUMNS`."""
    try:
        if path.lower().endswith(".json"):
            frame = pd.DataFrame(json.loads(Path(path).read_text(encoding="utf-8")))
        else:
            frame = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(f"{path}: structure table does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable structure table ({exc})") from None
    missing = [c for c in ("id", "acronym", "name") if c not in frame.columns]
    has_tree = "structure_id_path" in frame.columns or "parent_structure_id" in frame.columns
    if missing or not has_tree:
        need = missing + ([] if has_tree else ["structure_id_path or parent_structure_id"])
        raise InputError(f"{path}: structure table lacks column(s) {', '.join(need)}; has {list(frame.columns)}")
    ids = pd.to_numeric(frame["id"], errors="coerce")
    if ids.isna().any() or (ids < 0).any() or ids.duplicated().any():
        bad = frame["id"][ids.isna() | (ids < 0) | ids.duplicated()].tolist()[:5]
        raise InputError(f"{path}: region ids must be unique integers ≥ 0, got {bad}")
    ids = ids.astype(np.int64)
    if "structure_id_path" in frame.columns:
        paths = [_path_tuple(p) for p in frame["structure_id_path"]]
    else:
        parents = dict(zip(ids, pd.to_numeric(frame["parent_structure_id"], errors="coerce")))
        paths = []
        for i in ids:
            chain = [int(i)]
            while not pd.isna(parents.get(chain[-1])) and len(chain) <= len(parents):
                chain.append(int(parents[chain[-1]]))
            paths.append(tuple(reversed(chain)))
    for i, p in zip(ids, paths):
        if not p or p[-1] != i:
            raise InputError(f"{path}: the path of region {i} does not end in its id: {'/'.join(map(str, p))}")
    return pd.DataFrame(
        {
            "id": ids.to_numpy(),
            "acronym": frame["acronym"].astype(str).to_numpy(),
            "name": frame["name"].astype(str).to_numpy(),
            "parent_id": np.array([p[-2] if len(p) > 1 else -1 for p in paths], dtype=np.int64),
            "depth": np.array([len(p) - 1 for p in paths], dtype=np.int64),
            "path": paths,
        }
    )


def ancestors(structures: pd.DataFrame) -> pd.DataFrame:
    """Pairs (ancestor, region) for every region and each id on its path, itself included."""
    pairs = [(a, int(i)) for i, p in zip(structures["id"], structures["path"]) for a in p]
    return pd.DataFrame(pairs, columns=["ancestor", "id"])


# --- lookups -----------------------------------------------------------------------------------


def block_bounds(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    """Per axis, the first voxel of every block and the end of the last."""
    return [np.concatenate([[0], np.cumsum(c)]) for c in chunks]


def lookup_points(um: Any, atlas: Atlas) -> Any:
    """Lazy (region id, hemisphere code) arrays for points at ``um`` ((N, 3) µm, a numpy array or Delayed).

    Region −1 marks points outside the atlas volume; hemisphere 0 = none. One
    task sorts the points by atlas block; each atlas block then answers for its
    own points (a block without points returns at once), so memory is bounded
    by the atlas block and the point table.
    """
    geometry = atlas.geometry
    bounds = block_bounds(atlas.annotation.data.chunks)
    part = dask.delayed(_partition, pure=True)(um, geometry, bounds)
    annotation = atlas.annotation.data.to_delayed().ravel()
    hemispheres = (
        atlas.hemispheres.data.to_delayed().ravel() if atlas.hemispheres is not None else [None] * len(annotation)
    )
    picked = [
        dask.delayed(_pick, pure=True)(ids, hemi, dask.delayed(_getitem, pure=True)(part, k))
        for k, (ids, hemi) in enumerate(zip(annotation, hemispheres))
    ]
    return dask.delayed(_assemble, pure=True)(part, *picked)


def _partition(um: np.ndarray, geometry: Geometry, bounds: list[np.ndarray]) -> dict[Any, Any]:
    """Points inside the atlas grouped by block: ``{block number: (rows, local voxel index)}``."""
    index, inside = geometry.to_voxel(np.asarray(um, dtype=np.float64).reshape(-1, 3))
    rows = np.flatnonzero(inside)
    grid = tuple(len(b) - 1 for b in bounds)
    blocks = [np.searchsorted(b, index[rows, a], side="right") - 1 for a, b in enumerate(bounds)]
    flat = np.ravel_multi_index(tuple(blocks), grid) if rows.size else np.empty(0, np.int64)
    order = np.argsort(flat, kind="stable")
    out: dict[Any, Any] = {"n": len(index)}
    for group in np.split(order, np.flatnonzero(np.diff(flat[order])) + 1) if rows.size else []:
        b = np.unravel_index(int(flat[group[0]]), grid)
        start = np.array([bounds[a][b[a]] for a in range(3)])
        out[int(flat[group[0]])] = (rows[group], index[rows[group]] - start)
    return out


def _getitem(part: dict[Any, Any], k: int) -> Any:
    return part.get(k)


def _pick(ids: np.ndarray, hemi: np.ndarray | None, entry: Any) -> Any:
    if entry is None:
        return None
    rows, local = entry
    where = tuple(local.T)
    return rows, np.asarray(ids)[where], (np.asarray(hemi)[where] if hemi is not None else None)


def _assemble(part: dict[Any, Any], *picked: Any) -> tuple[np.ndarray, np.ndarray]:
    region = np.full(part["n"], OUTSIDE_ATLAS, dtype=np.int64)
    hemi = np.zeros(part["n"], dtype=np.uint8)
    for entry in picked:
        if entry is None:
            continue
        rows, ids, hemis = entry
        region[rows] = ids
        if hemis is not None:
            hemi[rows] = hemis
    return region, hemi


def voxel_counts(atlas: Atlas, within: Geometry | None = None) -> Any:
    """Lazy table (id, hemisphere code, voxels) of every region and hemisphere, exact, block by block.

    With ``within`` (an image grid), only atlas voxels whose centre lies inside
    that grid's extent count: the part of each region that was imaged.
    """
    annotation = atlas.annotation.data
    hemi_blocks = atlas.hemispheres.data.to_delayed().ravel() if atlas.hemispheres is not None else None
    bounds = block_bounds(annotation.chunks)
    grid = tuple(len(b) - 1 for b in bounds)
    parts = []
    for k, block in enumerate(annotation.to_delayed().ravel()):
        keep = None
        if within is not None:
            b = np.unravel_index(k, grid)
            keep = [_inside_axis(atlas.geometry, within, a, int(bounds[a][b[a]]), int(bounds[a][b[a] + 1]))
                    for a in range(3)]  # fmt: skip
        parts.append(dask.delayed(_count_block)(block, hemi_blocks[k] if hemi_blocks is not None else None, keep))
    return dask.delayed(_merge_counts)(*parts)


def _inside_axis(atlas: Geometry, image: Geometry, axis: int, start: int, stop: int) -> np.ndarray:
    """Which atlas voxels ``start..stop`` along ``axis`` have their centre inside the image's extent."""
    centres = atlas.translation[axis] + atlas.scale[axis] * np.arange(start, stop)
    low = image.translation[axis] - image.scale[axis] / 2
    high = image.translation[axis] + image.scale[axis] * (image.shape[axis] - 0.5)
    return (centres >= low) & (centres < high)


def _count_block(
    ids: np.ndarray, hemi: np.ndarray | None, keep: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    keys = ids.astype(np.uint64) * np.uint64(4)
    if hemi is not None:
        keys += hemi.astype(np.uint64)
    if keep is not None:
        keys = keys[np.ix_(*keep)]
    return np.unique(keys, return_counts=True)


def _merge_counts(*parts: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    keys = np.concatenate([np.empty(0, np.uint64)] + [p[0] for p in parts])
    counts = np.concatenate([np.empty(0, np.int64)] + [p[1] for p in parts])
    unique, inverse = np.unique(keys, return_inverse=True)
    total = np.bincount(inverse, weights=counts, minlength=unique.size).astype(np.int64)
    return pd.DataFrame(
        {"id": (unique // np.uint64(4)).astype(np.int64), "hemi": (unique % np.uint64(4)).astype(np.int64),
         "voxels": total}
    )  # fmt: skip


__all__ = ["DIMS", "Atlas", "AtlasSpec", "read_atlas", "read_structures", "lookup_points", "voxel_counts"]
