"""Atlas inputs: a region-id label volume, its structure table and optional hemispheres.

An atlas is read lazily, block by block, from one of three layouts:

- an OME-Zarr label image (``.ome.zarr`` / ``.zarr``; voxel size and offset from
  its NGFF metadata);
- a TIFF stack (voxel size from the spec's ``scale``), read a few pages at a time;
- a BrainGlobe atlas folder (``annotation.tiff``, ``hemispheres.tiff``,
  ``structures.csv`` or ``structures.json``, ``metadata.json`` whose
  ``resolution`` gives the voxel size);

or, by ``name``, from the local BrainGlobe folder (:mod:`cvplgraph.io.brainglobe`). An atlas that
declares its orientation (BrainGlobe's) is turned to the image's ``orientation``: axes permuted and
flipped where a letter of the same pair differs (``asr`` → ``psl`` flips all three).

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

from cvplgraph.errors import InputError
from cvplgraph.io.brainglobe import LocalAtlas, find_atlas, symmetric_hemispheres
from cvplgraph.io.stores import read_array
from cvplgraph.spec.model import ORIENTATION_PAIRS, AtlasSpec
from cvplgraph.values import LEFT, RIGHT, Atlas, Geometry, wrap

STRUCTURE_COLUMNS = ["id", "acronym", "name", "parent_id", "depth", "path"]
TIFF_SUFFIXES = (".tif", ".tiff")


# --- files -----------------------------------------------------------------------------------


def _is_brainglobe(url: str) -> bool:
    return Path(url).is_dir() and (Path(url) / "annotation.tiff").exists()


def files_of(spec: AtlasSpec, local: LocalAtlas | None = None) -> dict[str, str]:
    """The annotation, structure table and hemisphere files the spec points to (resolved defaults);
    ``local``: the named atlas, when the caller has found it already."""
    if spec.name:
        files = (local or find_atlas(spec.name, spec.version)).files
        return {**files, "structures": spec.structures or files["structures"],
                "hemispheres": spec.hemispheres or files["hemispheres"]}  # fmt: skip
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

    try:
        array = read_array(url)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{url}: not a readable OME-Zarr label image ({exc})") from None
    g = Geometry.of(array)
    return array.data, g.scale, g.translation


@dataclass(frozen=True)
class Orientation:
    """How a file's axes become the sample's (z, y, x): ``axes[k]`` is the file axis of sample axis ``k``,
    ``flips[k]`` whether it runs the other way."""

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)


def orientation_of(spec: AtlasSpec, declared: str, source: str) -> Orientation:
    """The spec's ``transpose``, or the turn from the atlas's ``declared`` orientation to the spec's."""
    if sorted(spec.transpose) != [0, 1, 2]:
        raise InputError(f"{source}: transpose must be a permutation of [0, 1, 2], got {list(spec.transpose)}")
    if not spec.orientation or spec.orientation == declared:
        return Orientation(tuple(spec.transpose))  # type: ignore[arg-type]
    if not declared:
        raise InputError(f"{source}: the atlas declares no orientation (only BrainGlobe atlases do), so "
                         f"orientation = {spec.orientation!r} cannot be applied; expected transpose = [z, y, x file "
                         "axes] instead")  # fmt: skip
    axes, flips = [], []
    for letter in spec.orientation:
        pair = next(p for p in ORIENTATION_PAIRS if letter in p)
        axis = next(i for i, c in enumerate(declared) if c in pair)
        axes.append(axis)
        flips.append(declared[axis] != letter)
    return Orientation(tuple(axes), tuple(flips))  # type: ignore[arg-type]


def _to_sample(data: da.Array, turn: Orientation, path: str, chunks: tuple[int, int, int]) -> da.Array:
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D label volume, got shape {data.shape}")
    if turn.axes != (0, 1, 2):
        data = data.transpose(turn.axes)
    if any(turn.flips):
        data = data[tuple(slice(None, None, -1) if f else slice(None) for f in turn.flips)]
    return data.rechunk(tuple(min(c, s) for c, s in zip(chunks, data.shape)))


def _file_chunks(turn: Orientation, chunks: tuple[int, int, int]) -> tuple[int, int, int]:
    """The spec's sample-space chunks along the file's axes (how many TIFF pages or zarr planes to read)."""
    out = [64, 64, 64]
    for k, axis in enumerate(turn.axes):
        out[axis] = chunks[k]
    return tuple(out)  # type: ignore[return-value]


def _open_volume(
    path: str, spec: AtlasSpec, turn: Orientation
) -> tuple[da.Array, tuple[float, ...] | None, tuple[float, ...] | None]:
    """A label volume in sample orientation, with the voxel size and offset its file declares."""
    if path.lower().endswith(TIFF_SUFFIXES):
        data = _lazy_tiff(path, pages_per_chunk=max(1, _file_chunks(turn, spec.chunks)[0]))
        return _to_sample(data, turn, path, spec.chunks), None, None
    if spec.name:  # a level of a BrainGlobe pyramid: its voxel size is the atlas's resolution, set by the caller
        return _to_sample(_lazy_level(path, _file_chunks(turn, spec.chunks)), turn, path, spec.chunks), None, None
    data, scale, translation = _lazy_zarr(path)
    return _to_sample(data, turn, path, spec.chunks), scale, translation


def _lazy_level(path: str, chunks: tuple[int, int, int]) -> da.Array:
    import zarr

    try:
        array = zarr.open_array(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several kinds for a damaged store
        raise InputError(f"{path}: not a readable zarr array ({exc})") from None
    return da.from_zarr(array, chunks=tuple(max(c, s) for c, s in zip(chunks, array.chunks)))


def _brainglobe_metadata(metadata: str) -> dict[str, Any]:
    try:
        meta = json.loads(Path(metadata).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{metadata}: not readable JSON ({exc})") from None
    resolution = meta.get("resolution")
    if resolution is not None and not (isinstance(resolution, list) and len(resolution) == 3):
        raise InputError(f"{metadata}: expected resolution = [z, y, x] µm, got {resolution!r}")
    return dict(meta)


def read_atlas(spec: AtlasSpec) -> Atlas:
    """The atlas of ``spec`` as lazy arrays in sample space plus its structure table."""
    local = find_atlas(spec.name, spec.version) if spec.name else None
    files = files_of(spec, local)
    meta = local_metadata(local) if local else _brainglobe_metadata(files["metadata"]) if "metadata" in files else {}
    turn = orientation_of(spec, str(meta.get("orientation", "")).lower(), files["annotation"])
    annotation, scale, translation = _open_volume(files["annotation"], spec, turn)
    if not np.issubdtype(annotation.dtype, np.integer):
        raise InputError(
            f"{files['annotation']}: region ids are stored as {annotation.dtype}; expected an integer "
            "label volume (uint32: ids above 2**24 do not survive float32)"
        )
    if meta.get("resolution") and spec.scale is None:
        scale = tuple(float(meta["resolution"][a]) for a in turn.axes)
    scale = spec.scale or scale
    if scale is None:
        raise InputError(f"{files['annotation']}: the voxel size is unknown; set scale = [z, y, x] in µm")
    translation = spec.translation or translation or (0.0, 0.0, 0.0)
    geometry = Geometry(tuple(int(s) for s in annotation.shape), tuple(scale), tuple(translation))  # type: ignore[arg-type]
    hemispheres = None
    if files["hemispheres"]:
        hemi, _, _ = _open_volume(files["hemispheres"], spec, turn)
    elif local is not None and local.symmetric:  # BrainGlobe ships none: split at the midline, as it does
        split = symmetric_hemispheres(local.shape, local.orientation, _file_chunks(turn, spec.chunks))
        hemi = _to_sample(split, turn, files["annotation"], spec.chunks)
    if files["hemispheres"] or (local is not None and local.symmetric):
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
    if local is not None and local.frame is not None and not spec.structures:
        structures = structure_table(local.frame, files["structures"])
    else:
        structures = read_structures(files["structures"])
    ids = wrap(annotation.astype(np.uint32) if annotation.dtype != np.uint32 else annotation, geometry, name="atlas")
    return Atlas(ids, hemispheres, structures, files["annotation"], files["structures"], axes=turn.axes,
                 flips=turn.flips)  # fmt: skip


def local_metadata(local: LocalAtlas) -> dict[str, Any]:
    """A named atlas's resolution and orientation, as a BrainGlobe folder's ``metadata.json`` gives them."""
    return {"resolution": list(local.resolution), "orientation": local.orientation}


def region_ids(atlas: Atlas) -> np.ndarray:
    """The sorted distinct ids of the annotation: one ``np.unique`` per block (dask's threads here), merged.

    An atlas is ~10^7 voxels (the Allen 25 µm annotation 7.7 × 10^7): a few seconds, which is why the
    engine remembers the answer by the atlas's fingerprint.
    """
    blocks = [dask.delayed(np.unique, pure=True)(b) for b in atlas.annotation.data.to_delayed().ravel()]
    parts = dask.compute(*blocks, scheduler="threads")
    return np.unique(np.concatenate([np.empty(0, np.uint32), *parts]))


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
    return structure_table(frame, path)


def structure_table(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    """Columns ``id, acronym, name`` and a tree (``structure_id_path`` or ``parent_structure_id``) →
    :data:`STRUCTURE_COLUMNS`; ``path`` names the source in messages."""
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
