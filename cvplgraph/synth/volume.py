"""Synthetic lightsheet volumes with known cell centres.

The generator is lazy and streaming: :func:`synth_volume` returns a dask-backed
:class:`xarray.DataArray` whose blocks are each computed on their own from the
global cell table, so a volume far larger than memory can be produced block by
block. Only the cell table (one row per cell) is built eagerly.

Model
-----
Cells sit on a jittered cubic grid in physical space (µm, spacing
``spacing_um``); a fraction ``occupancy`` of the grid sites holds a cell. Each
cell is an isotropic gaussian in µm with ``sigma = radius_um / 2``, hence
anisotropic in voxels whenever ``voxel_size`` differs per axis. The jitter is
limited so that two blobs never overlap above 1 % of their peak. A fraction
``pairs`` of these cells get a touching partner (an extra cell at
``pair_distance`` times the sum of the radii, see :func:`make_cells`); the
no-overlap rule is relaxed only between a cell and its partner. A fraction
``dim_fraction`` of all cells is drawn from ``dim_brightness``. A voxel's value
is::

    clean = background(z, y, x) + sum of blobs
    image = clean + N(0, noise²)                                   (photons = 0)
    image = Poisson(photons * clean) / photons + N(0, noise²)      (photons > 0)
    stored = gain * clip(image, 0, 1) + offset      (uint16: round(clip(stored, 0, 65535)))

where the background is a smooth product of low-frequency cosines evaluated on
global coordinates (continuous across blocks), each blob is evaluated only on
its ±4 sigma bounding box as an outer product of three 1-D gaussians, and both
noises come from generators seeded by ``(seed, block index)``. The result is
deterministic for given parameters; the noise-free signal and the cell table do
not depend on the chunking. With the default parameters (no pairs, no dim
cells, no photon noise, gain 1, offset 0, float32) the volume and the cells are
those of the generator before these options existed.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from cvplgraph.blobs import add_blobs
from cvplgraph.io.stores import write_array
from cvplgraph.spec.model import StoreSpec
from cvplgraph.synth.cells import CellTable, cell_table, cells_frame, for_rendering, site_occupancy
from cvplgraph.synth.params import BOX_SIGMAS, SynthParams
from cvplgraph.types import PortType

__all__ = ["SynthParams", "synth_volume", "write_synthetic"]

# --------------------------------------------------------------------------- rendering


def _background_phases(seed: int) -> np.ndarray:
    """Phases of the background cosines, from a stream separate from cells and noise.

    Returns
    -------
    phases : (3,) float64 array in [0, 2π)
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return rng.uniform(0.0, 2.0 * np.pi, size=3)


def _cosine_profile(start: int, stop: int, voxel: float, extent: float, phase: float) -> np.ndarray:
    """One cycle over the whole volume, sampled on global indices ``start:stop``.

    Returns
    -------
    profile : (stop - start,) float64 array in [-1, 1]
    """
    coords = np.arange(start, stop, dtype=np.float64) * voxel
    return np.cos(2.0 * np.pi * coords / extent + phase)


def _candidates(table: CellTable, location: list[tuple[int, int]], params: SynthParams) -> np.ndarray:
    """Cells that may reach a block, found through the grid rather than a full scan.

    A cell lies within ``jitter_um`` (per axis) of its grid site and reaches at
    most ``4 * sigma_max`` µm, so only grid sites within that margin of the
    block can matter. Their cells form one contiguous run of ``table.data``
    per grid plane.

    Parameters
    ----------
    table : CellTable
    location : list of three (start, stop) pairs
        Global voxel range of the block along (z, y, x).
    params : SynthParams

    Returns
    -------
    cells : (5, m) float64 array
        Rows ``RENDER_COLUMNS``; a superset of the cells whose ±4 sigma box meets the block, in table order.
    """
    margin = BOX_SIGMAS * params.cell_radius_um[1] / 2.0 + table.jitter_um
    ranges = []
    for sites, (start, stop), voxel in zip(table.sites, location, params.voxel_size, strict=True):
        slack = 1e-9 * (1.0 + stop * voxel)
        lo = start * voxel - margin - slack
        hi = (stop - 1) * voxel + margin + slack
        ranges.append((int(np.searchsorted(sites, lo, "left")), int(np.searchsorted(sites, hi, "right"))))
    (kz0, kz1), (ky0, ky1), (kx0, kx1) = ranges
    if kz0 >= kz1 or ky0 >= ky1 or kx0 >= kx1:
        return table.data[:, :0]
    n_y = table.sites[1].size
    runs = [table.data[:, table.row_start[kz * n_y + ky0] : table.row_start[kz * n_y + ky1]] for kz in range(kz0, kz1)]
    return runs[0] if len(runs) == 1 else np.concatenate(runs, axis=1)


def _render_block(
    *,
    table: CellTable,
    params: SynthParams,
    phases: np.ndarray,
    bounds: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
    block_id: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Compute one block of the volume from global information only.

    The block's location is derived from ``block_id`` and the chunk
    boundaries rather than from dask's ``block_info``: dask materialises
    ``block_info`` as one dict per block when the graph is built, which for a
    4096³ volume (131 072 blocks) costs seconds and hundreds of MB, whereas
    ``block_id`` is injected lazily.

    Parameters
    ----------
    table : CellTable
        The global cell table, see :func:`for_rendering`.
    params : SynthParams
    phases : (3,) float64 array
        Background phases, see :func:`_background_phases`.
    bounds : three tuples of int
        Per axis, the chunk boundaries ``(0, c0, c0 + c1, ..., n)``.
    block_id : (3,) tuple of int
        Supplied by :func:`dask.array.map_blocks`: the block's index.

    Returns
    -------
    block : (nz, ny, nx) array of ``params.dtype``
        In [0, 1] with the default gain and offset.
    """
    if block_id is None:
        raise ValueError("_render_block needs dask's block_id")
    block_key = tuple(int(i) for i in block_id)
    location = [(axis[i], axis[i + 1]) for axis, i in zip(bounds, block_key, strict=True)]
    shape = tuple(stop - start for start, stop in location)
    out = np.empty(shape, dtype=np.float32)
    if params.noise > 0 and params.photons == 0:  # the gaussian noise first, as it always was
        _gaussian_noise(out, params, block_key)
    else:
        out.fill(0.0)
    # Smooth background: mean + amplitude * cz * cy * cx, added slice by slice.
    extents = [max((n - 1) * v, v) for n, v in zip(params.shape, params.voxel_size, strict=True)]
    cz, cy, cx = (
        _cosine_profile(a, b, v, e, p)
        for (a, b), v, e, p in zip(location, params.voxel_size, extents, phases, strict=True)
    )
    plane = (params.background_amplitude * cy[:, None] * cx[None, :]).astype(np.float32)
    scratch = np.empty_like(plane)
    base = np.float32(params.background)
    for k in range(shape[0]):
        np.multiply(plane, np.float32(cz[k]), out=scratch)
        scratch += base
        out[k] += scratch
    add_blobs(out, location, _candidates(table, location, params), params.voxel_size)
    if params.photons > 0:
        rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(4, *block_key)))
        counts = rng.poisson(np.maximum(out, 0.0, dtype=np.float64) * params.photons)
        np.divide(counts, params.photons, out=out, casting="unsafe")
        del counts
        if params.noise > 0:
            read = np.empty_like(out)
            _gaussian_noise(read, params, block_key)
            out += read
    np.clip(out, 0.0, 1.0, out=out)
    if params.gain != 1.0 or params.offset != 0.0:
        out *= np.float32(params.gain)
        out += np.float32(params.offset)
    if params.dtype == "uint16":
        np.clip(out, 0.0, 65535.0, out=out)
        return np.rint(out).astype(np.uint16)
    return out


def _gaussian_noise(out: np.ndarray, params: SynthParams, block_key: tuple[int, ...]) -> None:
    """Fill ``out`` with N(0, noise²) from the stream ``(seed, 1, block index)``."""
    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(1, *block_key)))
    rng.standard_normal(dtype=np.float32, out=out)
    out *= np.float32(params.noise)


def synth_volume(params: SynthParams, occupancy: np.ndarray | None = None) -> tuple[xr.DataArray, pd.DataFrame]:
    """A lazy synthetic lightsheet volume and its true cells.

    Nothing is computed here except the cell table: each dask block is produced
    independently by :func:`dask.array.map_blocks` from the global cell table
    (held once in the graph), the global background and a noise generator
    seeded by ``(params.seed, block index)``. Results are deterministic for
    given ``params`` (including ``chunks``, which fix the noise); the cell table
    and the noise-free signal do not depend on ``chunks``.

    Parameters
    ----------
    params : SynthParams
    occupancy : (n_z, n_y, n_x) array of float in [0, 1], optional
        Per-site occupancy probability, see :func:`make_cells`.

    Returns
    -------
    volume : (Z, Y, X) DataArray of ``params.dtype``
        float32 in [0, 1] by default; ``gain`` and ``offset`` apply after the
        clip to [0, 1], so their values may leave it; uint16 holds the rounded
        counts. Dims ``("z", "y", "x")``, backed by a dask array with ``params.chunks``;
        coords in µm (``index * voxel_size``); attrs ``scale`` (voxel size),
        ``translation`` (zeros) and ``units`` ("micrometer").
    cells : (n_cells, 9) DataFrame
        Equal to :func:`make_cells` ``(params, occupancy)``.
    """
    occupancy = site_occupancy(params, occupancy)
    table = cell_table(params, occupancy)
    render = for_rendering(table)
    # The table does not depend on chunks: name it by the other fields (and the per-site occupancy).
    extra = () if occupancy is None else (occupancy,)
    cell_token = tokenize(*(getattr(params, f.name) for f in fields(params) if f.name != "chunks"), *extra)
    table_node: Delayed = delayed(render, name=f"synth-cells-{cell_token}", traverse=False)
    dtype = np.dtype(params.dtype)
    chunks = da.core.normalize_chunks(params.chunks, shape=params.shape, dtype=dtype)
    data = da.map_blocks(
        _render_block,
        table=table_node,
        params=params,
        phases=_background_phases(params.seed),
        bounds=tuple(tuple(int(b) for b in np.cumsum((0, *c))) for c in chunks),
        chunks=chunks,
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
        name=f"synth-volume-{tokenize(cell_token, chunks)}",
    )
    coords = {
        dim: np.arange(n, dtype=np.float64) * v
        for dim, n, v in zip(("z", "y", "x"), params.shape, params.voxel_size, strict=True)
    }
    volume = xr.DataArray(
        data,
        dims=("z", "y", "x"),
        coords=coords,
        attrs={
            "scale": list(params.voxel_size),
            "translation": [0.0, 0.0, 0.0],
            "units": "micrometer",
        },
    )
    return volume, cells_frame(table)


def write_synthetic(url: str, params: SynthParams, truth_csv: str | None = None, *, client: Any = None) -> pd.DataFrame:
    """Write a synthetic volume as OME-Zarr (streaming, block by block) and its true cells as CSV.

    The store has the volume's dtype (float32, or uint16 with ``params.dtype``); float values
    outside [0, 1] (``gain``, ``offset``) are stored as they are, and a float input is read
    back unchanged (see :func:`cvplgraph.io.stores.to_unit_float`).
    """
    volume, cells = synth_volume(params)
    writes = write_array(url, volume, PortType.Image, StoreSpec(chunks=params.chunks), "synthetic")
    if client is not None:
        client.gather(client.compute(writes))
    else:
        dask.compute(*writes)
    if truth_csv:
        Path(truth_csv).parent.mkdir(parents=True, exist_ok=True)
        cells.to_csv(truth_csv, index=False)
    return cells
