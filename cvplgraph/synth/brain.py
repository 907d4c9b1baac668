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
Cells come from :mod:`cvplgraph.synth.volume` (jittered grid of sites
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

from cvplgraph.io.stores import write_array
from cvplgraph.spec.model import StoreSpec
from cvplgraph.synth.atlases import (
    ALLEN_STRUCTURE_COLUMNS,
    BrainAtlas,
    Crop,
    find_atlas_folder,
    load_allen_atlas,
    procedural_atlas,
    resolve_atlas,
    write_atlas_folder,
)
from cvplgraph.synth.cells import grid_sites
from cvplgraph.synth.volume import SynthParams, synth_volume
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, wrap

__all__ = [
    "ALLEN_STRUCTURE_COLUMNS",
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
#: Hemisphere codes (BrainGlobe) → names used in ``regions_truth.csv``.
HEMISPHERE_NAMES: dict[int, str] = {0: "none", 1: "left", 2: "right"}


# --------------------------------------------------------------------------- atlas on the image grid


def _nearest_indices(start: int, stop: int, geometry: Geometry, axis: int, resolution: float, size: int) -> np.ndarray:
    """Atlas index nearest to each image voxel ``start:stop`` along one axis, ``-1`` outside the atlas.

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
        Atlas-space volume (e.g. the annotation or a brain mask).
    resolution_um : (3,) sequence of float
        Atlas voxel size.
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


def busiest_plane(cells: pd.DataFrame, step_um: float) -> float:
    """The z (µm) of the image plane crossed by the most cells (``z_um``, ``radius_um``).

    Cells sit on a jittered lattice, so some planes cross few of them; this is
    the plane to look at (or take a picture of).
    """
    if not len(cells):
        raise ValueError("no cells: every plane is as good as another")
    planes = np.arange(cells["z_um"].min() - step_um, cells["z_um"].max() + 2 * step_um, step_um)
    crossed = [int((abs(cells["z_um"] - z) <= cells["radius_um"]).sum()) for z in planes]
    return float(planes[int(np.argmax(crossed))])


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
        cell_radius_um[1]`` (see :class:`cvplgraph.synth.volume.SynthParams`).
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
