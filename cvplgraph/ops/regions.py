"""Points + Atlas → cells per brain region, in physical coordinates.

Every point is looked up in the atlas by its µm position (image and atlas
grids may differ in voxel size and offset). Per region and hemisphere the
table gives the cell count, the volume (from the atlas voxels) and the
density, both **exclusive** (the region's own voxels) and **inclusive** (the
region and all its descendants). Points in atlas id 0 and points outside the
atlas volume get explicit rows (ids 0 and −1); regions without cells appear
with 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cvplgraph.errors import InputError
from cvplgraph.ops._atlas import ancestors, lookup_parts, voxel_counts
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import (
    LEFT,
    OUTSIDE_ATLAS,
    OUTSIDE_BRAIN,
    RIGHT,
    Atlas,
    Geometry,
    Table,
    file_voxels,
    tree_sum,
    wrap,
)

log = logging.getLogger(__name__)

#: Hemisphere codes → the names used in tables ("both" = every point, whatever its hemisphere).
HEMISPHERES = {LEFT: "left", RIGHT: "right"}
REGION_COLUMNS = [
    "id", "acronym", "name", "parent_id", "depth", "hemisphere",
    "cells", "volume_mm3", "density_per_mm3",
    "cells_inclusive", "volume_mm3_inclusive", "density_inclusive_per_mm3",
]  # fmt: skip
SPECIAL_ROWS = {
    OUTSIDE_BRAIN: ("outside_brain", "outside the brain (atlas id 0)"),
    OUTSIDE_ATLAS: ("outside_atlas", "outside the atlas volume"),
}


def _check_ids(voxels: pd.DataFrame, region: np.ndarray, structures: pd.DataFrame, files: str) -> None:
    """Every id counted, in the volume or under a cell, must be in the structure table."""
    _raise_missing(set(voxels["id"].unique()) | set(np.unique(region).tolist()), structures, files)


def _raise_missing(present: set[int], structures: pd.DataFrame, files: str) -> None:
    missing = sorted(present - {OUTSIDE_BRAIN, OUTSIDE_ATLAS} - set(structures["id"]))
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" …" if len(missing) > 8 else "")
        raise InputError(f"{files}: {len(missing)} region id(s) in the atlas volume are missing from the "
                         f"structure table: {shown}; expected a table with every id of the annotation (the "
                         "structures file of the same atlas and version)")  # fmt: skip


def check_structures(atlas: Atlas) -> None:
    """One line, before any compute, when the annotation holds ids its structure table lacks.

    Needs the annotation's distinct ids (``atlas.ids``, which the engine fills in); without them
    the same check runs while the volumes are counted."""
    if atlas.ids is not None:
        _raise_missing(set(atlas.ids.tolist()), atlas.structures, f"{atlas.source} with {atlas.structures_file}")


def _cells_per_region(points: pd.DataFrame, um: np.ndarray, lookup: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    """The cells of one partition (``points``, their µm coordinates ``um`` and their atlas ``lookup``) per
    (region id, hemisphere code): columns ``id, hemi, cells``."""
    region, hemi = lookup
    cells = pd.DataFrame({"id": np.asarray(region, dtype=np.int64), "hemi": np.asarray(hemi).astype(np.int64)})
    return cells.value_counts().rename("cells").reset_index()


def _add_cells(*parts: pd.DataFrame) -> pd.DataFrame:
    """Cells per (region, hemisphere) of several partitions, added up."""
    return pd.concat(parts, ignore_index=True).groupby(["id", "hemi"], as_index=False)["cells"].sum()


def _region_table(
    cells: pd.DataFrame,
    voxels: pd.DataFrame,
    structures: pd.DataFrame,
    voxel_mm3: float,
    lateral: bool,
    files: str,
) -> pd.DataFrame:
    _check_ids(voxels, cells["id"].to_numpy(), structures, files)
    known = structures[["id", "acronym", "name", "parent_id", "depth"]].copy()
    extra = [i for i in SPECIAL_ROWS if i not in set(known["id"])]
    specials = pd.DataFrame(
        {"id": extra, "acronym": [SPECIAL_ROWS[i][0] for i in extra], "name": [SPECIAL_ROWS[i][1] for i in extra],
         "parent_id": -1, "depth": 0}
    )  # fmt: skip
    regions = pd.concat([known, specials], ignore_index=True)
    sides = [*HEMISPHERES.items(), (None, "both")] if lateral else [(None, "both")]
    pairs = ancestors(structures)
    rows = []
    for code, label in sides:
        pick_c = cells if code is None else cells[cells["hemi"] == code]
        pick_v = voxels if code is None else voxels[voxels["hemi"] == code]
        own = pd.DataFrame({"id": regions["id"]})
        own["cells"] = own["id"].map(pick_c.groupby("id")["cells"].sum()).fillna(0).astype(np.int64)
        own["voxels"] = own["id"].map(pick_v.groupby("id")["voxels"].sum()).fillna(0).astype(np.int64)
        rolled = pairs.merge(own, on="id").groupby("ancestor")[["cells", "voxels"]].sum()
        side = regions.copy()
        side["hemisphere"] = label
        side["cells"] = own["cells"].to_numpy()
        side["volume_mm3"] = own["voxels"].to_numpy() * voxel_mm3
        # regions outside the tree (the explicit rows) include only themselves
        inclusive = rolled.reindex(side["id"].to_numpy())
        has = inclusive["cells"].notna().to_numpy()
        side["cells_inclusive"] = np.where(has, inclusive["cells"].to_numpy(), own["cells"].to_numpy()).astype(np.int64)
        vox_incl = np.where(has, inclusive["voxels"].to_numpy(), own["voxels"].to_numpy())
        side["volume_mm3_inclusive"] = vox_incl * voxel_mm3
        rows.append(side)
    table = pd.concat(rows, ignore_index=True)
    outside = table["id"] == OUTSIDE_ATLAS
    table.loc[outside, ["volume_mm3", "volume_mm3_inclusive"]] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        table["density_per_mm3"] = np.where(table["volume_mm3"] > 0, table["cells"] / table["volume_mm3"], np.nan)
        table["density_inclusive_per_mm3"] = np.where(
            table["volume_mm3_inclusive"] > 0, table["cells_inclusive"] / table["volume_mm3_inclusive"], np.nan
        )
    return table[REGION_COLUMNS]


def _extent(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The µm box a grid covers: from the first voxel's low face to the last voxel's high face."""
    scale, translation = np.asarray(geometry.scale), np.asarray(geometry.translation)
    return translation - scale / 2, translation + scale * (np.asarray(geometry.shape) - 0.5)


#: A run warns when at least this share of the cells lies outside the atlas volume (and there is a cell).
OUTSIDE_WARNING = 0.5
#: The graph's build warns when the atlas covers less than this share of the image's volume (µm³).
COVERAGE_WARNING = 0.5
#: What puts cells outside an atlas: said by both warnings.
MISPLACED = "the atlas is probably misplaced: check its scale (µm per voxel), translation and transpose " \
    "(orientation) in [inputs.NAME] against the image's"  # fmt: skip


_warned: set[tuple[str, Geometry, Geometry]] = set()


def _box(low: np.ndarray, high: np.ndarray) -> str:
    return ", ".join(f"{d} {a:g}–{b:g}" for d, a, b in zip("zyx", low, high, strict=True))


def coverage(image: Geometry, atlas: Geometry) -> float:
    """The share of the image's extent (µm³) that the atlas's extent covers, 0 to 1."""
    (il, ih), (al, ah) = _extent(image), _extent(atlas)
    shared = np.clip(np.minimum(ih, ah) - np.maximum(il, al), 0, None)
    return float(np.prod(shared / (ih - il)))


def check_overlap(image: Geometry, atlas: Atlas) -> None:
    """One line when the image and the atlas share no µm of space: every cell would be outside_atlas.

    When they overlap but the atlas covers less than :data:`COVERAGE_WARNING` of the image, a warning
    is logged, once per process for an atlas and an image (a crop at the brain's edge does this too; an atlas
    of the wrong scale or place is likelier)."""
    (il, ih), (al, ah) = _extent(image), _extent(atlas.geometry)
    if np.all((il < ah) & (al < ih)):
        share = coverage(image, atlas.geometry)
        seen = (atlas.source, atlas.geometry, image)  # once per process: each region op of a spec checks
        if share < COVERAGE_WARNING and seen not in _warned:
            _warned.add(seen)
            log.warning(
                "%s: the atlas covers only %.0f%% of the image (atlas %s µm, image %s µm); cells in the rest "
                "are counted as outside_atlas. Unless the image reaches beyond the brain, %s",
                atlas.source, 100 * share, _box(al, ah), _box(il, ih), MISPLACED,
            )  # fmt: skip
        return
    raise InputError(f"{atlas.source}: the atlas covers {_box(al, ah)} µm and the image {_box(il, ih)} µm: they do "
                     "not overlap, so every cell would be outside the atlas; expected the atlas placed on the image "
                     "(its scale, translation and transpose in [inputs.NAME])")  # fmt: skip


@op(
    "region_counts",
    version=1,
    inputs={"points": PortType.Points, "atlas": PortType.Atlas},
    output=PortType.RegionTable,
    checks={"volume": lambda v: None if v in ("imaged", "atlas") else '"imaged" or "atlas"'},
    cost="one lookup task per partition of the table, one voxel count per atlas block",
)
def region_counts(points: Table, atlas: Atlas, *, volume: Literal["imaged", "atlas"] = "imaged") -> Table:
    """Cells, volume and density per atlas region and hemisphere, exclusive and inclusive.

    Parameters
    ----------
    points : Points
        Cell centres with ``z_um, y_um, x_um`` (physical coordinates).
    atlas : Atlas
        Region ids, structure table and optional hemispheres, in the same physical space.
    volume : "imaged" or "atlas"
        ``imaged``: a region's volume is that of its atlas voxels whose centre
        lies inside the image's extent, so densities stay true when the image
        is a crop (for a whole-brain image both are the same); ``atlas``: the
        whole region.

    Returns
    -------
    regions : RegionTable
        One row per region (every region of the structure table, plus id 0
        "outside_brain" and id −1 "outside_atlas") and hemisphere (``left``,
        ``right`` and ``both``; only ``both`` without a hemisphere volume), with
        columns ``id, acronym, name, parent_id, depth, hemisphere, cells,
        volume_mm3, density_per_mm3`` and the same three ``_inclusive`` of the
        region's subtree. A point is in the voxel whose centre is nearest;
        points outside the atlas volume have no volume (NaN density).
    """
    check_overlap(points.geometry, atlas)
    check_structures(atlas)
    geometry = atlas.geometry
    voxel_mm3 = float(np.prod(geometry.scale)) * 1e-9
    per_part = lookup_parts(_cells_per_region, points.parts, atlas)
    frame = dask.delayed(_region_table, pure=True)(
        tree_sum(per_part, _add_cells),
        voxel_counts(atlas, points.geometry if volume == "imaged" else None),
        atlas.structures,
        voxel_mm3,
        atlas.hemispheres is not None,
        f"{atlas.source} with {atlas.structures_file}",
    )
    return Table(frame, geometry)


def _with_regions(
    frame: pd.DataFrame, um: np.ndarray, lookup: tuple[np.ndarray, np.ndarray], structures: pd.DataFrame,
    geometry: Geometry, axes: Sequence[int], flips: Sequence[bool],
) -> pd.DataFrame:  # fmt: skip
    """One partition of :func:`cell_regions`."""
    region, hemi = lookup
    atlas_space = file_voxels(um, geometry, axes, flips)
    acronyms = dict(zip(structures["id"], structures["acronym"]))
    names = dict(zip(structures["id"], structures["name"]))
    for k, (acronym, name) in SPECIAL_ROWS.items():
        acronyms.setdefault(k, acronym)
        names.setdefault(k, name)
    out = frame.copy()
    out["region_id"] = region
    out["acronym"] = [acronyms.get(int(r), "") for r in region]
    out["structure_name"] = [names.get(int(r), "") for r in region]
    out["hemisphere"] = np.array(["", "left", "right", ""], dtype=object)[np.minimum(hemi, 3)]
    for axis in range(3):
        out[f"atlas_axis_{axis}"] = atlas_space[:, axis]
    return out


@op(
    "cell_regions",
    version=2,
    inputs={"points": PortType.Points, "atlas": PortType.Atlas},
    output=PortType.Points,
    cost="one lookup task per partition of the table",
)
def cell_regions(points: Table, atlas: Atlas) -> Table:
    """Every cell with its atlas region: the per-cell table.

    Returns
    -------
    cells : Points
        The input rows with ``region_id`` (0 = atlas id 0, −1 = outside the atlas
        volume), ``acronym``, ``structure_name`` (the region's name in the atlas's
        structure table), ``hemisphere`` (``left``, ``right`` or empty) and
        ``atlas_axis_0, atlas_axis_1, atlas_axis_2``: the cell's voxel coordinates
        along the atlas file's own axes (BrainGlobe's atlas space for a BrainGlobe
        atlas; voxel centres at integers), what brainmapper calls atlas coordinates.
    """
    check_overlap(points.geometry, atlas)
    check_structures(atlas)
    parts = lookup_parts(_with_regions, points.parts, atlas, atlas.structures, atlas.geometry, atlas.axes, atlas.flips)
    return Table(tuple(parts), points.geometry)


def _density_lut(table: pd.DataFrame, lateral: bool) -> tuple[np.ndarray, np.ndarray]:
    codes = {"left": LEFT, "right": RIGHT} if lateral else {"both": 0}
    rows = table[table["hemisphere"].isin(list(codes)) & (table["id"] > 0)]
    keys = rows["id"].to_numpy(np.uint64) * np.uint64(4) + rows["hemisphere"].map(codes).to_numpy(np.uint64)
    order = np.argsort(keys)
    return keys[order], np.nan_to_num(rows["density_per_mm3"].to_numpy(np.float64)[order]).astype(np.float32)


def _paint(ids: np.ndarray, hemi: np.ndarray | None, lut: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    keys, values = lut
    if not len(keys):
        return np.zeros(ids.shape, np.float32)
    k = ids.astype(np.uint64) * np.uint64(4) + (hemi.astype(np.uint64) if hemi is not None else np.uint64(0))
    pos = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
    return np.where(keys[pos] == k, values[pos], np.float32(0)).astype(np.float32)


@op(
    "region_density_map",
    version=1,
    inputs={"regions": PortType.RegionTable, "atlas": PortType.Atlas},
    output=PortType.Density,
    cost="one table lookup per atlas voxel",
)
def region_density_map(regions: Table, atlas: Atlas) -> xr.DataArray:
    """Each atlas voxel coloured by its region's (exclusive) density, for display.

    Returns
    -------
    density : Density
        float32 cells per mm³ on the atlas grid (per hemisphere when the atlas
        has one); 0 outside every region.
    """
    lateral = atlas.hemispheres is not None
    lut = dask.delayed(_density_lut, pure=True)(regions.frame, lateral)
    ids = atlas.annotation.data
    if lateral:
        data = da.map_blocks(_paint, ids, atlas.hemispheres.data, lut, dtype=np.float32)  # type: ignore[union-attr]
    else:
        data = da.map_blocks(_paint, ids, None, lut, dtype=np.float32)
    return wrap(data, atlas.geometry, name="region_density")


def outside_warning(node: str, atlas: str, outside: int, total: int) -> str | None:
    """The warning for a result whose cells lie mostly outside the atlas volume, or None."""
    if total < 1 or outside < OUTSIDE_WARNING * total:
        return None
    return (f"{node}: {outside} of {total} cells ({outside / total:.0%}) lie outside the atlas volume (row -1 "
            f"outside_atlas); {MISPLACED.replace('NAME', atlas)}")  # fmt: skip
