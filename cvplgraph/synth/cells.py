"""The true cells of a synthetic volume: a jittered grid of sites, touching partners, dim cells.

Cells sit on a jittered cubic grid in physical space (µm, spacing ``spacing_um``); a fraction
``occupancy`` of the grid sites holds a cell. Each cell is an isotropic gaussian in µm with
``sigma = radius_um / 2``. The jitter is limited so that two blobs never overlap above 1 % of
their peak. A fraction ``pairs`` of these cells get a touching partner (an extra cell at
``pair_distance`` times the sum of the radii, see :func:`make_cells`); the no-overlap rule is
relaxed only between a cell and its partner. A fraction ``dim_fraction`` of all cells is drawn
from ``dim_brightness``. The table is built eagerly (one row per cell) and does not depend on the
chunking; :mod:`cvplgraph.synth.volume` renders it block by block.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from cvplgraph.synth.params import ONE_PERCENT_SIGMAS, SynthParams

__all__ = ["CELL_COLUMNS", "CellTable", "grid_sites", "make_cells"]

CELL_COLUMNS: tuple[str, ...] = ("z", "y", "x", "z_um", "y_um", "x_um", "radius_um", "brightness")
#: Attempts at placing a cell's partner before the cell stays alone.
PARTNER_ATTEMPTS: int = 8


#: Rows of the renderer's table (a read-only copy of the columns it needs).
RENDER_COLUMNS: tuple[str, ...] = ("z", "y", "x", "radius_um", "brightness")


class CellTable(NamedTuple):
    """The cells together with the grid bookkeeping that finds them quickly.

    Attributes
    ----------
    data : (n_rows, n_cells) float64 array
        One row per column, in the order of ``CELL_COLUMNS`` (as generated)
        or ``RENDER_COLUMNS`` (as rendered, see :func:`for_rendering`);
        cells in grid order (grid plane z, then row y, then column x).
    sites : three (n_a,) float64 arrays
        Grid site positions (µm) along z, y and x.
    row_start : (n_z_sites * n_y_sites + 1,) int64 array
        ``row_start[kz * n_y_sites + ky]`` is the first cell (column of
        ``data``) of grid row (kz, ky); the last entry is ``n_cells``.
    jitter_um : float
        Largest distance (µm, per axis) of a cell centre from its grid site
        (a pair partner belongs to its cell's site: jitter plus partner distance).
    partner : (n_cells,) int64 array
        Column of the other cell of a pair, -1 for a cell without partner.
    """

    data: np.ndarray
    sites: tuple[np.ndarray, np.ndarray, np.ndarray]
    row_start: np.ndarray
    jitter_um: float
    partner: np.ndarray


def _grid_sites(extent_um: float, spacing_um: float) -> np.ndarray:
    """Grid positions along one axis, centred in ``[0, extent_um]``.

    Returns
    -------
    sites : (n,) float64 array
        ``n = floor(extent / spacing) + 1`` positions ``spacing`` apart.
    """
    n = int(math.floor(extent_um / spacing_um)) + 1
    offset = (extent_um - (n - 1) * spacing_um) / 2.0
    return offset + spacing_um * np.arange(n, dtype=np.float64)


def grid_sites(params: SynthParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the candidate cell sites along each axis.

    Parameters
    ----------
    params : SynthParams

    Returns
    -------
    sites : three (n_a,) float64 arrays
        Site positions (µm, relative to voxel 0 of the volume, i.e. without
        any translation) along z, y and x; the grid is their outer product, so
        a per-site ``occupancy`` array has shape ``(n_z, n_y, n_x)``.
    """
    vs = np.asarray(params.voxel_size, dtype=np.float64)
    extent = (np.asarray(params.shape, dtype=np.float64) - 1.0) * vs
    sz, sy, sx = (_grid_sites(float(e), params.spacing_um) for e in extent)
    return sz, sy, sx


def site_occupancy(params: SynthParams, occupancy: object) -> np.ndarray | None:
    """Validate a per-site occupancy array (see :func:`make_cells`); None stays None.

    Returns
    -------
    occupancy : (n_z, n_y, n_x) float64 array in [0, 1], or None
    """
    if occupancy is None:
        return None
    shape = tuple(s.size for s in grid_sites(params))
    array = np.asarray(occupancy, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"occupancy must have one value per grid site, shape {shape}, got {array.shape}")
    if not np.all((array >= 0.0) & (array <= 1.0)):  # also rejects NaN
        raise ValueError("occupancy values must lie in [0, 1]")
    return array


def cell_table(params: SynthParams, occupancy: np.ndarray | None = None) -> CellTable:
    """Generate the cells (see :func:`make_cells`) with their grid bookkeeping.

    All occupancy flags are drawn first (one byte per grid site is kept), then
    position jitter, radius and brightness plane by plane straight into the
    final array, so peak memory stays close to the size of the result.
    ``occupancy`` (per-site probabilities, validated) replaces
    ``params.occupancy`` when given; the random draws are the same either way.
    """
    occupancy = site_occupancy(params, occupancy)
    vs = np.asarray(params.voxel_size, dtype=np.float64)
    extent = (np.asarray(params.shape, dtype=np.float64) - 1.0) * vs
    sz, sy, sx = grid_sites(params)
    rng = np.random.default_rng(params.seed)
    occupied = np.empty((sz.size, sy.size, sx.size), dtype=bool)
    for kz in range(sz.size):
        chance = params.occupancy if occupancy is None else occupancy[kz]
        occupied[kz] = rng.random((sy.size, sx.size)) < chance
    per_row = occupied.sum(axis=2, dtype=np.int64).ravel()
    row_start = np.zeros(per_row.size + 1, dtype=np.int64)
    np.cumsum(per_row, out=row_start[1:])
    data = np.empty((len(CELL_COLUMNS), int(row_start[-1])), dtype=np.float64)
    jitter = params.max_jitter_um
    for kz in range(sz.size):
        ky, kx = np.nonzero(occupied[kz])  # row-major: grouped by ky, as row_start assumes
        first = int(row_start[kz * sy.size])
        um = data[3:6, first : first + ky.size]
        um[0] = sz[kz]
        um[1] = sy[ky]
        um[2] = sx[kx]
        um += rng.uniform(-jitter, jitter, size=um.shape)
        np.clip(um, 0.0, extent[:, None], out=um)
        data[6, first : first + ky.size] = rng.uniform(*params.cell_radius_um, size=ky.size)
        data[7, first : first + ky.size] = rng.uniform(*params.brightness, size=ky.size)
    partner = np.full(data.shape[1], -1, dtype=np.int64)
    if params.pairs > 0:
        data, row_start, partner = _add_partners(params, data, row_start, extent)
        jitter += params.max_partner_um
    if params.dim_fraction > 0:
        dim_rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(3,)))
        dim = dim_rng.random(data.shape[1]) < params.dim_fraction
        data[7, dim] = dim_rng.uniform(*params.dim_brightness, size=int(dim.sum()))
    np.divide(data[3:6], vs[:, None], out=data[0:3])
    return CellTable(data=data, sites=(sz, sy, sx), row_start=row_start, jitter_um=jitter, partner=partner)


def _add_partners(
    params: SynthParams, data: np.ndarray, row_start: np.ndarray, extent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give a fraction ``params.pairs`` of the grid cells a touching partner.

    Each chosen cell gets a partner with its own radius and brightness (drawn
    like any cell's) at ``f * (r_cell + r_partner)`` µm, ``f`` uniform in
    ``pair_distance``, in a uniformly random 3-D direction. A proposed partner
    must lie inside the volume and keep the 1 % rule (centre distance >=
    3.035 * (sigma_a + sigma_b)) with every cell but its own, including the
    partners accepted before it; otherwise a new direction is drawn, at most
    :data:`PARTNER_ATTEMPTS` times. Draws come from their own stream
    ``(seed, 2)``, so the grid cells are those without pairs.

    Parameters
    ----------
    params : SynthParams
    data : (8, n) float64 array
        Grid cells, rows ``CELL_COLUMNS`` (µm rows filled, voxel rows not yet).
    row_start : (n_rows + 1,) int64 array
        First cell of every grid row, see :class:`CellTable`.
    extent : (3,) float64 array
        Largest centre coordinate (µm) per axis.

    Returns
    -------
    data : (8, n + k) float64 array
        Every partner placed right after its cell (so it belongs to its cell's grid row).
    row_start : (n_rows + 1,) int64 array
    partner : (n + k,) int64 array
        Column of the other cell of each pair, -1 for cells without one.
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(2,)))
    n = data.shape[1]
    chosen = np.flatnonzero(rng.random(n) < params.pairs)
    factor = rng.uniform(*params.pair_distance, size=chosen.size)
    radius = rng.uniform(*params.cell_radius_um, size=chosen.size)
    bright = rng.uniform(*params.brightness, size=chosen.size)
    cells_um = np.ascontiguousarray(data[3:6].T)
    sigma = data[6] / 2.0
    tree = cKDTree(cells_um)
    sigma_max = params.cell_radius_um[1] / 2.0
    cell_size = 2.0 * ONE_PERCENT_SIGMAS * sigma_max  # farthest interaction between two blobs
    placed: dict[tuple[int, int, int], list[tuple[float, float, float, float]]] = {}
    position = np.full((chosen.size, 3), np.nan)
    pending = np.arange(chosen.size)
    for _ in range(PARTNER_ATTEMPTS):
        if pending.size == 0:
            break
        direction = rng.standard_normal((pending.size, 3))
        length = np.linalg.norm(direction, axis=1, keepdims=True)
        direction /= np.where(length > 0, length, 1.0)
        distance = factor[pending] * (data[6, chosen[pending]] + radius[pending])
        proposal = cells_um[chosen[pending]] + direction * distance[:, None]
        reach = ONE_PERCENT_SIGMAS * (radius[pending] / 2.0 + sigma_max)
        near = tree.query_ball_point(proposal, reach)
        retry = []
        for j, k in enumerate(pending.tolist()):
            point, own_sigma = proposal[j], radius[k] / 2.0
            if np.any(point < 0.0) or np.any(point > extent):
                retry.append(k)
                continue
            others = np.array([c for c in near[j] if c != chosen[k]], dtype=np.int64)
            if others.size and np.any(
                np.linalg.norm(cells_um[others] - point, axis=1) < ONE_PERCENT_SIGMAS * (sigma[others] + own_sigma)
            ):
                retry.append(k)
                continue
            key = tuple(int(v) for v in np.floor(point / cell_size))
            if any(
                math.dist(point, q[:3]) < ONE_PERCENT_SIGMAS * (q[3] + own_sigma)
                for dz in (-1, 0, 1)
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
                for q in placed.get((key[0] + dz, key[1] + dy, key[2] + dx), ())
            ):
                retry.append(k)
                continue
            placed.setdefault(key, []).append((float(point[0]), float(point[1]), float(point[2]), own_sigma))  # type: ignore[arg-type]
            position[k] = point
        pending = np.array(retry, dtype=np.int64)
    ok = ~np.isnan(position[:, 0])
    first = chosen[ok]  # sorted, as flatnonzero returns it
    before = np.searchsorted(first, np.arange(n), side="left")
    new_cell = np.arange(n) + before
    new_partner = new_cell[first] + 1
    out = np.empty((data.shape[0], n + first.size), dtype=np.float64)
    out[:, new_cell] = data
    out[3:6, new_partner] = position[ok].T
    out[6, new_partner] = radius[ok]
    out[7, new_partner] = bright[ok]
    partner = np.full(n + first.size, -1, dtype=np.int64)
    partner[new_cell[first]] = new_partner
    partner[new_partner] = new_cell[first]
    return out, row_start + np.searchsorted(first, row_start, side="left"), partner


def cells_frame(table: CellTable) -> pd.DataFrame:
    """The user-facing cell table, taking over ``table.data`` (as generated) without a copy,
    with the ``partner`` column last."""
    frame = pd.DataFrame(table.data.T, columns=list(CELL_COLUMNS), copy=False)
    frame["partner"] = table.partner
    return frame


def for_rendering(table: CellTable) -> CellTable:
    """A read-only copy of the columns the renderer needs, independent of the user's DataFrame.

    Returns
    -------
    table : CellTable
        ``data`` is a (5, n_cells) float64 array with rows ``RENDER_COLUMNS``.
    """
    rows = [CELL_COLUMNS.index(name) for name in RENDER_COLUMNS]
    data = np.ascontiguousarray(table.data[rows])
    data.flags.writeable = False
    return table._replace(data=data)


def make_cells(params: SynthParams, occupancy: np.ndarray | None = None) -> pd.DataFrame:
    """The true cells of the synthetic volume.

    Grid sites (spacing ``params.spacing_um``, centred in the volume, see
    :func:`grid_sites`) are occupied with probability ``params.occupancy``
    (or ``occupancy[kz, ky, kx]`` per site when given), jittered uniformly by at
    most ``params.max_jitter_um`` per axis and clipped to the volume, so every
    centre lies inside ``[0, shape - 1]`` voxels (cells on the border are cut,
    but still count). Radius and brightness are uniform in their ranges. Uses
    ``numpy.random.default_rng(params.seed)``; independent of ``params.chunks``.

    With ``params.pairs > 0`` a fraction of these cells get a touching partner,
    placed in the row right after its cell (see :class:`SynthParams` for the
    rules, and the stream ``(seed, 2)``); with ``params.dim_fraction > 0`` each
    cell (partners included) is dim with that probability, its brightness drawn
    again from ``params.dim_brightness`` (stream ``(seed, 3)``). Neither changes
    the grid cells' positions and radii.

    Parameters
    ----------
    params : SynthParams
    occupancy : (n_z, n_y, n_x) array of float in [0, 1], optional
        Per-site occupancy probability, shape = number of grid sites per axis
        (see :func:`grid_sites`). None (default) uses ``params.occupancy``
        everywhere; an array of ones gives the same cells as ``occupancy=1``.

    Returns
    -------
    cells : (n_cells, 9) DataFrame
        Columns ``z, y, x`` (voxel coordinates, float), ``z_um, y_um, x_um``
        (µm, ``= voxel * voxel_size``), ``radius_um``, ``brightness`` (peak
        amplitude above background, before ``gain``) and ``partner`` (int: the
        row of the other cell of a touching pair, -1 for none). Rows in grid
        order (z plane, then y row, then x column of the grid site; a partner
        right after its cell), RangeIndex.
    """
    return cells_frame(cell_table(params, occupancy))
