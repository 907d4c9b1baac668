"""A synthetic brain: a lightsheet-like image of a crop of an atlas, with known cells per region.

:func:`write_synthetic_brain` writes, into one folder, an OME-Zarr image that
covers a crop of an atlas's physical space, a BrainGlobe-style atlas folder in
sample orientation, and the truth: every cell with the atlas region at its
centre, and the number of cells per (region, hemisphere).

Geometry
--------
Everything lives in the atlas's physical space (µm). The atlas is in sample
orientation (z, y, x) = (dorsal → ventral, anterior → posterior, left → right),
BrainGlobe orientation ``"sal"``, at translation 0: atlas voxel ``i`` is centred
at ``i * resolution``. The image has voxel size ``voxel_size`` and translation
= the crop's start, which may be negative so that part of the image lies
outside the atlas volume. A point (µm) belongs to the atlas voxel
``floor(um / resolution + 0.5)``, the convention of
:meth:`cvplgraph.values.Geometry.to_voxel`.

Model
-----
Cells come from :mod:`cvplgraph.synth` (jittered grid of sites
``spacing_um`` apart), but each site is occupied with a probability that
depends on the atlas region at the site: a value drawn deterministically from
``(seed, region id)`` in ``occupancy_range`` inside the brain, and
``outside_occupancy`` outside it (id 0) and outside the atlas volume. The image
is the synth volume plus ``tissue_brightness`` wherever the atlas says brain
(annotation > 0), clipped to [0, 1]; that term is computed block by block by
nearest-neighbour lookup in the small in-memory atlas (:func:`atlas_on_grid`),
never as a whole upsampled volume.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
from dask.base import tokenize
from dask.delayed import delayed

from .spec import StoreSpec
from .storage import write_array
from .synth import SynthParams, grid_sites, synth_volume
from .types import PortType
from .values import Geometry, wrap

__all__ = [
    "BrainAtlas",
    "BrainTruth",
    "atlas_on_grid",
    "find_atlas_folder",
    "load_allen_atlas",
    "procedural_atlas",
    "region_occupancy",
    "resolve_atlas",
    "write_atlas_folder",
    "write_synthetic_brain",
]

#: Columns of a structures table (the Allen ``structures.csv`` layout).
STRUCTURE_COLUMNS: tuple[str, ...] = (
    "id",
    "acronym",
    "name",
    "parent_structure_id",
    "depth",
    "graph_order",
    "structure_id_path",
    "color_hex_triplet",
)
#: Columns of ``cells.csv``.
CELL_COLUMNS: tuple[str, ...] = (
    "z",
    "y",
    "x",
    "z_um",
    "y_um",
    "x_um",
    "radius_um",
    "brightness",
    "region_id",
    "hemisphere",
)
#: Region id of points outside the atlas volume (0 = inside the volume, outside the brain).
OUTSIDE_ATLAS: int = -1
#: Hemisphere codes (BrainGlobe) → names used in ``regions_truth.csv``.
HEMISPHERE_NAMES: dict[int, str] = {0: "none", 1: "left", 2: "right"}

ALLEN_CITATION = "Wang et al. 2020, https://doi.org/10.1016/j.cell.2020.04.007"
Crop = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


# --------------------------------------------------------------------------- atlases


@dataclass(frozen=True)
class BrainAtlas:
    """An annotated atlas in sample orientation (z, y, x), at translation 0.

    Attributes
    ----------
    annotation : (Z, Y, X) uint32 array
        Region ids, 0 outside the brain.
    hemispheres : (Z, Y, X) uint8 array
        1 = left, 2 = right (BrainGlobe convention).
    structures : DataFrame
        The structure table (columns at least ``STRUCTURE_COLUMNS``).
    resolution_um : (3,) tuple of float
        Voxel size along (z, y, x).
    name : str
    citation : str
    source : str
        The folder it was read from, or ``"procedural"``.
    default_crop_um : three (start, stop) pairs of float
        The crop (µm, atlas space) that :func:`write_synthetic_brain` uses by default.
    structures_csv : Path or None
        The file ``structures`` was read from (copied verbatim when writing).
    """

    annotation: np.ndarray
    hemispheres: np.ndarray
    structures: pd.DataFrame
    resolution_um: tuple[float, float, float]
    name: str
    citation: str
    source: str
    default_crop_um: Crop
    structures_csv: Path | None = None

    @property
    def geometry(self) -> Geometry:
        """The atlas voxel grid in µm (translation 0)."""
        shape = tuple(int(s) for s in self.annotation.shape)
        return Geometry(shape, self.resolution_um, (0.0, 0.0, 0.0))  # type: ignore[arg-type]

    def lookup(self, um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Region id and hemisphere of each point.

        Parameters
        ----------
        um : (N, 3) array of float
            Points in atlas space (µm, z y x).

        Returns
        -------
        region_id : (N,) int64 array
            Atlas id at the nearest voxel (:meth:`Geometry.to_voxel`); ``-1``
            outside the atlas volume.
        hemisphere : (N,) int64 array
            1 / 2, or 0 outside the atlas volume.
        """
        index, inside = self.geometry.to_voxel(um)
        iz, iy, ix = index.T
        region = self.annotation[iz, iy, ix].astype(np.int64)
        hemisphere = self.hemispheres[iz, iy, ix].astype(np.int64)
        region[~inside] = OUTSIDE_ATLAS
        hemisphere[~inside] = 0
        return region, hemisphere


def find_atlas_folder(name: str = "atlas_ccf2017") -> Path | None:
    """The shared Allen atlas folder ``../shared/data/<name>``, if it exists.

    Looked for relative to the current directory and to every parent folder of
    this package (so it is found from the project root and from an installed
    checkout next to ``shared``).

    Parameters
    ----------
    name : str
        Folder name inside ``shared/data``.

    Returns
    -------
    folder : Path or None
    """
    candidates = [Path.cwd() / ".." / "shared" / "data" / name, Path.cwd() / "shared" / "data" / name]
    candidates += [parent / "shared" / "data" / name for parent in Path(__file__).resolve().parents]
    for folder in candidates:
        if (folder / "structures.csv").is_file():
            return folder.resolve()
    return None


def load_allen_atlas(folder: str | Path, resolution_um: int = 100) -> BrainAtlas:
    """Read an Allen CCFv3 folder (``annotation_<r>um.tif``, ``hemispheres_<r>um.tif``, ``structures.csv``).

    The files' axes are (left → right, anterior → posterior, dorsal → ventral);
    they are transposed ``(2, 1, 0)`` into sample orientation (z, y, x).

    Parameters
    ----------
    folder : str or Path
    resolution_um : int
        Which files to read (100 or 50 in the shared data).

    Returns
    -------
    atlas : BrainAtlas
        With a default crop that is a slab through dorsal cortex around the
        midline, starting 400 µm above the atlas volume.
    """
    import tifffile

    folder = Path(folder)
    annotation = tifffile.imread(folder / f"annotation_{resolution_um}um.tif")
    hemispheres = tifffile.imread(folder / f"hemispheres_{resolution_um}um.tif")
    if annotation.dtype != np.uint32:
        raise ValueError(f"{folder}: annotation must be uint32 region ids, got {annotation.dtype}")
    r = float(resolution_um)
    return BrainAtlas(
        annotation=np.ascontiguousarray(np.transpose(annotation, (2, 1, 0))),
        hemispheres=np.ascontiguousarray(np.transpose(hemispheres, (2, 1, 0)).astype(np.uint8)),
        structures=pd.read_csv(folder / "structures.csv"),
        resolution_um=(r, r, r),
        name=f"allen_mouse_{resolution_um}um",
        citation=ALLEN_CITATION,
        source=str(folder),
        # 2 mm deep from 400 µm above the volume, 1.5 mm anterior-posterior, 1.92 mm across the midline (5650 µm).
        default_crop_um=((-400.0, 1600.0), (4500.0, 6000.0), (4690.0, 6610.0)),
        structures_csv=folder / "structures.csv",
    )


#: Ids of the procedural atlas; CB needs more than 24 bits, like many Allen ids.
PROCEDURAL_IDS: dict[str, int] = {"CTX1": 1001, "CTX2": 1002, "NUC": 2001, "BS": 3001, "CB": 2**24 + 100}


def _procedural_structures() -> pd.DataFrame:
    """The structure table of :func:`procedural_atlas` (Allen column layout)."""
    i = PROCEDURAL_IDS
    rows = [  # id, acronym, name, parent, colour
        (997, "root", "root", None, "FFFFFF"),
        (8, "grey", "Basic cell groups and regions", 997, "BFDAE3"),
        (567, "CH", "Cerebrum", 8, "B0F0FF"),
        (315, "Isocortex", "Isocortex", 567, "70FF71"),  # a parent without voxels of its own
        (i["CTX1"], "CTX1", "Isocortex, layer 1", 315, "68C86C"),
        (i["CTX2"], "CTX2", "Isocortex, layer 2", 315, "5FB862"),
        (i["NUC"], "NUC", "Deep nucleus", 567, "98D6F9"),
        (i["BS"], "BS", "Brain stem", 8, "FF7080"),
        (i["CB"], "CB", "Cerebellum", 8, "F0F080"),
    ]
    path: dict[int, str] = {}
    depth: dict[int, int] = {}
    records = []
    for order, (sid, acronym, name, parent, colour) in enumerate(rows):
        path[sid] = (path[parent] if parent is not None else "/") + f"{sid}/"
        depth[sid] = depth[parent] + 1 if parent is not None else 0
        records.append((sid, acronym, name, parent, float(depth[sid]), float(order), path[sid], colour))
    frame = pd.DataFrame.from_records(records, columns=list(STRUCTURE_COLUMNS))
    frame["parent_structure_id"] = frame["parent_structure_id"].astype("float64")
    return frame


def procedural_atlas(resolution_um: float = 100.0) -> BrainAtlas:
    """A small atlas built in code: an ellipsoid brain (4 × 6 × 5 mm, z y x) in a 5 × 7 × 6 mm volume.

    Regions, by the normalised ellipsoid radius ``r`` (1 on the brain surface)
    of each voxel centre: the posterior 25 % of the brain along y is the
    cerebellum ``CB`` (id above 2**24); elsewhere ``0.9 < r <= 1`` is cortex
    layer 1 ``CTX1``, ``0.8 < r <= 0.9`` layer 2 ``CTX2``, ``r <= 0.35`` a deep
    nucleus ``NUC`` and the rest brain stem ``BS``. Both layers are children of
    ``Isocortex`` (315), which owns no voxels. Hemispheres: 1 (left) for x
    below the midline, 2 above.

    Parameters
    ----------
    resolution_um : float
        Isotropic voxel size of the atlas.

    Returns
    -------
    atlas : BrainAtlas
        With a default crop through the dorsal posterior brain (cortex, brain
        stem, cerebellum) starting 300 µm above the atlas volume.
    """
    r = float(resolution_um)
    shape = tuple(int(round(mm * 1000.0 / r)) for mm in (5.0, 7.0, 6.0))
    centre = [(n - 1) / 2.0 * r for n in shape]  # µm
    semi = (2000.0, 3000.0, 2500.0)
    z, y, x = (np.arange(n, dtype=np.float64) * r for n in shape)
    radius = np.sqrt(
        ((z[:, None, None] - centre[0]) / semi[0]) ** 2
        + ((y[None, :, None] - centre[1]) / semi[1]) ** 2
        + ((x[None, None, :] - centre[2]) / semi[2]) ** 2
    )
    ids = PROCEDURAL_IDS
    annotation = np.zeros(shape, dtype=np.uint32)
    annotation[radius <= 1.0] = ids["BS"]
    annotation[radius <= 0.35] = ids["NUC"]
    annotation[(radius > 0.8) & (radius <= 0.9)] = ids["CTX2"]
    annotation[(radius > 0.9) & (radius <= 1.0)] = ids["CTX1"]
    posterior = np.broadcast_to((y > centre[1] + 0.5 * semi[1])[None, :, None], shape)
    annotation[(radius <= 1.0) & posterior] = ids["CB"]
    hemispheres = np.where(x[None, None, :] < centre[2], 1, 2).astype(np.uint8) * np.ones(shape, dtype=np.uint8)
    top = centre[0] - semi[0]  # dorsal surface, µm
    return BrainAtlas(
        annotation=annotation,
        hemispheres=hemispheres,
        structures=_procedural_structures(),
        resolution_um=(r, r, r),
        name=f"cvplgraph_procedural_{r:g}um",
        citation="cvplgraph procedural atlas (synthetic, no publication)",
        source="procedural",
        default_crop_um=(
            (top - 750.0, top + 1250.0),
            (centre[1] + 750.0, centre[1] + 2250.0),
            (centre[2] - 960.0, centre[2] + 960.0),
        ),
    )


def resolve_atlas(atlas: BrainAtlas | str | Path | None = None, resolution_um: int = 100) -> BrainAtlas:
    """The atlas named by ``atlas``.

    Parameters
    ----------
    atlas : BrainAtlas, str, Path or None
        An :class:`BrainAtlas` (returned as is); ``"procedural"`` for
        :func:`procedural_atlas`; a folder holding Allen files for
        :func:`load_allen_atlas`; None for the shared Allen folder when
        :func:`find_atlas_folder` finds it, else the procedural atlas.
    resolution_um : int
        Resolution of the Allen files to read.

    Returns
    -------
    atlas : BrainAtlas
    """
    if isinstance(atlas, BrainAtlas):
        return atlas
    if atlas is None:
        folder = find_atlas_folder()
        return load_allen_atlas(folder, resolution_um) if folder is not None else procedural_atlas()
    if str(atlas) == "procedural":
        return procedural_atlas()
    folder = Path(atlas)
    if not folder.is_dir():
        raise FileNotFoundError(f"atlas folder {folder} does not exist")
    return load_allen_atlas(folder, resolution_um)


def write_atlas_folder(atlas: BrainAtlas, folder: str | Path) -> Path:
    """Write ``atlas`` as a BrainGlobe-style folder in sample orientation.

    Files: ``annotation.tiff`` (uint32), ``hemispheres.tiff`` (uint8, 1 left /
    2 right), ``structures.csv`` (a verbatim copy of the source table when
    there is one) and ``metadata.json`` (name, citation, resolution, shape,
    orientation ``"sal"``, symmetric false, ...).

    Parameters
    ----------
    atlas : BrainAtlas
    folder : str or Path

    Returns
    -------
    folder : Path
    """
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "annotation.tiff", np.ascontiguousarray(atlas.annotation, dtype=np.uint32))
    tifffile.imwrite(folder / "hemispheres.tiff", np.ascontiguousarray(atlas.hemispheres, dtype=np.uint8))
    if atlas.structures_csv is not None:
        shutil.copyfile(atlas.structures_csv, folder / "structures.csv")
    else:
        atlas.structures.to_csv(folder / "structures.csv", index=False)
    metadata = {
        "name": atlas.name,
        "citation": atlas.citation,
        "atlas_link": "https://atlas.brain-map.org" if atlas.source != "procedural" else "",
        "species": "Mus musculus",
        "symmetric": False,
        "resolution": list(atlas.resolution_um),
        "orientation": "sal",
        "version": "1.0",
        "shape": [int(s) for s in atlas.annotation.shape],
        "transform_to_bg": np.eye(4).tolist(),
        "additional_references": [],
        "source": atlas.source,
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- atlas on the image grid


def _nearest_indices(start: int, stop: int, geometry: Geometry, axis: int, resolution: float, size: int) -> np.ndarray:
    """BrainAtlas index nearest to each image voxel ``start:stop`` along one axis, ``-1`` outside the atlas.

    Same arithmetic as :meth:`Geometry.to_um` followed by :meth:`Geometry.to_voxel`
    on an atlas at translation 0, so it agrees with point lookups.
    """
    um = geometry.translation[axis] + np.arange(start, stop, dtype=np.float64) * geometry.scale[axis]
    index = np.floor(um / resolution + 0.5).astype(np.int64)
    index[(index < 0) | (index >= size)] = -1
    return index


def _atlas_block(
    *,
    values: np.ndarray,
    resolution: tuple[float, float, float],
    geometry: Geometry,
    fill: Any,
    bounds: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
    block_id: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """One block of :func:`atlas_on_grid` (located by ``block_id`` and the chunk ``bounds``)."""
    if block_id is None:
        raise ValueError("_atlas_block needs dask's block_id")
    index = [
        _nearest_indices(axis[i], axis[i + 1], geometry, k, resolution[k], values.shape[k])
        for k, (axis, i) in enumerate(zip(bounds, block_id))
    ]
    ok = [i >= 0 for i in index]
    out = values[np.ix_(*(np.where(o, i, 0) for o, i in zip(ok, index)))]
    inside = ok[0][:, None, None] & ok[1][None, :, None] & ok[2][None, None, :]
    if not inside.all():
        out[~inside] = fill
    return out


def atlas_on_grid(
    values: np.ndarray,
    resolution_um: Sequence[float],
    geometry: Geometry,
    chunks: Sequence[int],
    fill: Any = 0,
) -> da.Array:
    """Nearest-neighbour lookup of an atlas-space volume at every voxel of an image, block by block.

    Image voxel ``i`` (centre ``translation + i * scale``) takes the value of
    atlas voxel ``floor(um / resolution + 0.5)`` (the atlas sits at translation
    0), or ``fill`` outside the atlas volume. Each block is computed on its own
    from the small in-memory ``values`` (held once in the graph); the whole
    upsampled volume is never built.

    Parameters
    ----------
    values : (Z, Y, X) array
        BrainAtlas-space volume (e.g. the annotation or a brain mask).
    resolution_um : (3,) sequence of float
        BrainAtlas voxel size.
    geometry : Geometry
        The image grid.
    chunks : (3,) sequence of int
        Block size of the result.
    fill : scalar
        Value outside the atlas volume (must fit ``values.dtype``).

    Returns
    -------
    upsampled : dask array, shape ``geometry.shape``, dtype of ``values``
    """
    values = np.asarray(values)
    resolution = tuple(float(r) for r in resolution_um)
    token = tokenize(values, resolution, geometry, fill)
    node = delayed(values, name=f"atlas-values-{token}", traverse=False)
    normal = da.core.normalize_chunks(tuple(int(c) for c in chunks), shape=geometry.shape, dtype=values.dtype)
    return da.map_blocks(
        _atlas_block,
        values=node,
        resolution=resolution,
        geometry=geometry,
        fill=fill,
        bounds=tuple(tuple(int(b) for b in np.cumsum((0, *c))) for c in normal),
        chunks=normal,
        dtype=values.dtype,
        meta=np.empty((0, 0, 0), dtype=values.dtype),
        name=f"atlas-on-grid-{tokenize(token, normal)}",
    )


# --------------------------------------------------------------------------- cells


def region_occupancy(
    region_id: np.ndarray,
    seed: int,
    occupancy_range: tuple[float, float] = (0.2, 0.9),
    outside_occupancy: float = 0.05,
) -> np.ndarray:
    """Occupancy probability of grid sites from the region they lie in.

    Parameters
    ----------
    region_id : array of int
        Region ids (``0`` outside the brain, ``-1`` outside the atlas volume).
    seed : int
    occupancy_range : (low, high)
        Range of the per-region values; region ``r > 0`` gets
        ``low + (high - low) * u`` with ``u`` the first draw of
        ``numpy.random.default_rng([seed, r])``, so it depends only on the
        seed and the id.
    outside_occupancy : float
        Value for ids 0 and -1.

    Returns
    -------
    occupancy : float64 array shaped like ``region_id``
    """
    region_id = np.asarray(region_id, dtype=np.int64)
    low, high = (float(v) for v in occupancy_range)
    out = np.full(region_id.shape, float(outside_occupancy), dtype=np.float64)
    ids, inverse = np.unique(region_id, return_inverse=True)
    per_id = np.array(
        [
            low + (high - low) * np.random.default_rng([int(seed), int(r)]).random() if r > 0 else outside_occupancy
            for r in ids
        ],
        dtype=np.float64,
    )
    out[...] = per_id[inverse.reshape(region_id.shape)]
    return out


@dataclass(frozen=True)
class BrainTruth:
    """What :func:`write_synthetic_brain` wrote.

    Attributes
    ----------
    folder, image, atlas, cells_csv, regions_csv, params_json : Path
        The output folder, ``image.ome.zarr``, ``atlas/``, ``cells.csv``,
        ``regions_truth.csv`` and ``brain.json``.
    cells : DataFrame
        Contents of ``cells.csv`` (columns ``CELL_COLUMNS``).
    regions : DataFrame
        Contents of ``regions_truth.csv`` (columns id, hemisphere, cells).
    geometry : Geometry
        The image grid in atlas space.
    """

    folder: Path
    image: Path
    atlas: Path
    cells_csv: Path
    regions_csv: Path
    params_json: Path
    cells: pd.DataFrame
    regions: pd.DataFrame
    geometry: Geometry


def regions_truth(cells: pd.DataFrame) -> pd.DataFrame:
    """Number of cells per (region id, hemisphere).

    Parameters
    ----------
    cells : DataFrame
        With int columns ``region_id`` and ``hemisphere`` (0 / 1 / 2).

    Returns
    -------
    regions : DataFrame
        Columns ``id`` (int64), ``hemisphere`` ("none" / "left" / "right") and
        ``cells`` (int64), sorted by id then hemisphere; only pairs with cells.
    """
    counts = cells.groupby(["region_id", "hemisphere"]).size().reset_index(name="cells")
    return pd.DataFrame(
        {
            "id": counts["region_id"].astype(np.int64),
            "hemisphere": counts["hemisphere"].map(HEMISPHERE_NAMES),
            "cells": counts["cells"].astype(np.int64),
        }
    )


def _crop_geometry(crop_um: Crop, voxel_size: tuple[float, float, float]) -> Geometry:
    shape = []
    for (start, stop), v in zip(crop_um, voxel_size):
        n = int(round((float(stop) - float(start)) / v))
        if n < 1:
            raise ValueError(f"crop_um {crop_um!r} is empty along an axis (voxel size {voxel_size})")
        shape.append(n)
    translation = tuple(float(start) for start, _ in crop_um)
    return Geometry(tuple(shape), voxel_size, translation)  # type: ignore[arg-type]


def write_synthetic_brain(
    folder: str | Path,
    *,
    atlas: BrainAtlas | str | Path | None = None,
    crop_um: Crop | None = None,
    voxel_size: tuple[float, float, float] = (8.0, 6.0, 6.0),
    chunks: tuple[int, int, int] = (32, 256, 256),
    seed: int = 0,
    spacing_um: float = 60.0,
    cell_radius_um: tuple[float, float] = (14.0, 18.0),
    brightness: tuple[float, float] = (0.5, 0.9),
    outside_occupancy: float = 0.05,
    occupancy_range: tuple[float, float] = (0.2, 0.9),
    tissue_brightness: float = 0.06,
    noise: float = 0.02,
    say: Callable[[str], Any] = print,
) -> BrainTruth:
    """Write a synthetic lightsheet image of an atlas crop with known cells per region.

    Parameters
    ----------
    folder : str or Path
        Output folder (created; files in it are replaced).
    atlas : BrainAtlas, str, Path or None
        See :func:`resolve_atlas`: None = the shared Allen CCFv3 100 µm atlas
        when found, else the procedural atlas; ``"procedural"``; or a folder.
    crop_um : three (start, stop) pairs of float, optional
        The imaged box in atlas space (µm, z y x); start may be negative. The
        image has ``round((stop - start) / voxel_size)`` voxels per axis and
        translation ``start``. Default: ``atlas.default_crop_um`` (a 2 × 1.5 ×
        1.92 mm dorsal slab, 250 × 250 × 320 = 20 M voxels at the default
        voxel size).
    voxel_size : (3,) tuple of float
        Image voxel size (µm).
    chunks : (3,) tuple of int
        Block size of the written OME-Zarr.
    seed : int
        Seeds the cells, the noise and the per-region occupancy.
    spacing_um : float
        Grid spacing of candidate cell sites; must exceed ``3.035 *
        cell_radius_um[1]`` (see :class:`cvplgraph.synth.SynthParams`).
    cell_radius_um : (low, high)
        Cell radii; sigma = radius / 2 is at least ~1 voxel at the default
        voxel size so that ``threshold(level=0.3)`` finds every cell.
    brightness : (low, high)
        Peak amplitude of the cells above the background.
    outside_occupancy : float
        Occupancy of sites outside the brain (id 0) and outside the atlas volume.
    occupancy_range : (low, high)
        Range of the per-region occupancy inside the brain, see :func:`region_occupancy`.
    tissue_brightness : float
        Added to the background wherever the atlas says brain (annotation > 0).
    noise : float
        Standard deviation of the gaussian noise.
    say : callable
        Receives progress messages.

    Returns
    -------
    truth : BrainTruth
    """
    start_time = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = resolve_atlas(atlas)
    crop = source.default_crop_um if crop_um is None else crop_um
    crop = tuple((float(a), float(b)) for a, b in crop)  # type: ignore[assignment]
    voxel_size = tuple(float(v) for v in voxel_size)  # type: ignore[assignment]
    geometry = _crop_geometry(crop, voxel_size)
    params = SynthParams(
        shape=geometry.shape,
        chunks=chunks,
        voxel_size=voxel_size,
        cell_radius_um=cell_radius_um,
        brightness=brightness,
        spacing_um=spacing_um,
        noise=noise,
        seed=seed,
    )

    # Per-site occupancy from the region at each site (sites are relative to the image origin).
    sz, sy, sx = grid_sites(params)
    t = geometry.translation
    sites_um = np.stack(np.meshgrid(sz + t[0], sy + t[1], sx + t[2], indexing="ij"), axis=-1).reshape(-1, 3)
    site_region, _ = source.lookup(sites_um)
    occupancy = region_occupancy(site_region, seed, occupancy_range, outside_occupancy)
    occupancy = occupancy.reshape(sz.size, sy.size, sx.size)

    volume, synth_cells = synth_volume(params, occupancy)
    brain = atlas_on_grid(source.annotation > 0, source.resolution_um, geometry, params.chunks, fill=False)
    tissue = brain.astype(np.float32) * np.float32(tissue_brightness)
    data = da.clip(volume.data + tissue, 0.0, 1.0).astype(np.float32)
    image = wrap(data, geometry, name="synthetic_brain")

    say(
        f"atlas {source.name} ({source.source}), crop {list(map(list, crop))} µm → image {geometry.shape} voxels"
        f" of {list(voxel_size)} µm, translation {list(geometry.translation)} µm"
    )
    image_path = folder / "image.ome.zarr"
    say(f"writing {image_path} ({int(np.prod(geometry.shape)) / 1e6:.1f} M voxels, chunks {list(params.chunks)})")
    writes = write_array(str(image_path), image, PortType.Image, StoreSpec(chunks=params.chunks), "synthetic_brain")
    dask.compute(*writes)

    atlas_path = write_atlas_folder(source, folder / "atlas")
    say(f"wrote {atlas_path} (annotation {source.annotation.shape} uint32, orientation sal)")

    cells = synth_cells.copy()
    for k, axis in enumerate(("z_um", "y_um", "x_um")):
        cells[axis] = geometry.translation[k] + cells[axis.removesuffix("_um")] * geometry.scale[k]
    region, hemisphere = source.lookup(cells[["z_um", "y_um", "x_um"]].to_numpy())
    cells["region_id"] = region
    cells["hemisphere"] = hemisphere
    cells = cells[list(CELL_COLUMNS)]
    regions = regions_truth(cells)
    cells_csv, regions_csv, params_json = folder / "cells.csv", folder / "regions_truth.csv", folder / "brain.json"
    cells.to_csv(cells_csv, index=False)
    regions.to_csv(regions_csv, index=False)
    used = {
        "atlas": source.source,
        "atlas_name": source.name,
        "atlas_resolution_um": list(source.resolution_um),
        "crop_um": [list(pair) for pair in crop],
        "shape": list(geometry.shape),
        "voxel_size": list(geometry.scale),
        "translation": list(geometry.translation),
        "chunks": list(params.chunks),
        "seed": params.seed,
        "spacing_um": params.spacing_um,
        "cell_radius_um": list(params.cell_radius_um),
        "brightness": list(params.brightness),
        "outside_occupancy": float(outside_occupancy),
        "occupancy_range": [float(v) for v in occupancy_range],
        "tissue_brightness": float(tissue_brightness),
        "background": params.background,
        "background_amplitude": params.background_amplitude,
        "noise": params.noise,
        "cells": len(cells),
    }
    params_json.write_text(json.dumps(used, indent=2) + "\n", encoding="utf-8")
    in_brain = int((cells["region_id"] > 0).sum())
    say(
        f"wrote {cells_csv} ({len(cells)} cells, {in_brain} in the brain, {int((regions['id'] > 0).sum())}"
        f" region-hemisphere pairs) and {regions_csv} in {time.perf_counter() - start_time:.1f} s"
    )
    return BrainTruth(
        folder=folder,
        image=image_path,
        atlas=atlas_path,
        cells_csv=cells_csv,
        regions_csv=regions_csv,
        params_json=params_json,
        cells=cells,
        regions=regions,
        geometry=geometry,
    )
