"""Declared outputs: files written from node values at the end of a run.

Points → ``.csv`` or ``.parquet`` (a dataset: one file per partition), both written partition by partition
(:class:`PointsOutput`), or with ``format = "cellfinder_xml"`` CellCounter XML written by brainglobe-utils
(what cellfinder and brainglobe-napari-io read), or for a ``cell_regions`` table with ``format =
"all_points"`` brainmapper's ``all_points.csv``; BlockCounts → ``.csv`` (one row per block) or ``.json``;
RegionTable → ``.csv`` (the tidy table), ``.zarr`` (an xarray Dataset), ``.png`` (a bar chart of the
densest regions) or, with ``format = "brainglobe"``, brainmapper's ``summary.csv``; arrays →
``.ome.zarr`` (written inside the run's graph). Files are written to a temporary name and moved into
place, so an output is never half-written.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cvplgraph.errors import CvplError
from cvplgraph.values import with_units

#: brainmapper's per-region summary columns, in the order brainglobe-utils (0.11, pandas ≥ 2.2) writes them.
BRAINGLOBE_COLUMNS = [
    "structure_name", "left_cell_count", "right_cell_count", "total_cells", "left_volume_mm3", "right_volume_mm3",
    "total_volume_mm3", "left_cells_per_mm3", "right_cells_per_mm3",
]  # fmt: skip
#: brainmapper's per-cell columns (``all_points.csv``).
ALL_POINTS_COLUMNS = [
    "coordinate_raw_axis_0", "coordinate_raw_axis_1", "coordinate_raw_axis_2", "coordinate_atlas_axis_0",
    "coordinate_atlas_axis_1", "coordinate_atlas_axis_2", "structure_name", "hemisphere",
]  # fmt: skip


def _atomic_text(path: str, text: str) -> None:
    _atomic_bytes(path, text.encode("utf-8"))


class PointsOutput:
    """A Points output written partition by partition, where each partition is computed: no process holds the
    whole table (a whole brain's is ~10 GB).

    ``.csv`` (and ``format = "all_points"``): each partition's rows are written to a piece in a hidden folder
    beside the target by the task that has the partition; :meth:`finish` then streams the pieces, in partition
    order, into the one file (header once) and swaps it in. ``.parquet``: the pieces are the partitions of a
    Parquet dataset (a folder, what ``pandas.read_parquet`` reads), swapped in whole. CellCounter XML
    (``format = "cellfinder_xml"``) is one document: one task writes it from the whole table. A run that
    fails leaves the target as it was (:meth:`discard` removes the pieces)."""

    def __init__(self, path: str, fmt: str = "", origin: tuple[int, ...] = (0, 0, 0)) -> None:
        self.path, self.fmt, self.origin = path, fmt, tuple(int(o) for o in origin)
        target = Path(path)
        self.pieces = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.parts"
        self.count = 0

    def tasks(self, table: Any) -> list[Any]:
        """The lazy writes of ``table``'s partitions (a :class:`~cvplgraph.values.Table`)."""
        import dask

        if self.fmt == "cellfinder_xml":
            return [dask.delayed(_write_cellcounter, pure=False)(self.path, table.frame, self.origin)]
        self.pieces.mkdir(parents=True, exist_ok=True)
        self.count = len(table.parts)
        return [dask.delayed(_write_piece, pure=False)(str(self._piece(k)), part, self.fmt, self.origin, k == 0)
                for k, part in enumerate(table.parts)]  # fmt: skip

    def _piece(self, k: int) -> Path:
        return self.pieces / (f"part-{k:05d}.parquet" if self.path.endswith(".parquet") else f"{k:05d}.csv")

    def finish(self) -> None:
        """Put the written pieces in place as the target (after the run's compute)."""
        import shutil

        target = Path(self.path)
        if self.fmt == "cellfinder_xml":
            self.discard()
            return
        if self.path.endswith(".parquet"):
            for written in self.pieces.iterdir():
                os.chmod(written, file_mode())
            old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            if target.exists():
                os.replace(target, old)
            os.replace(self.pieces, target)
            shutil.rmtree(old, ignore_errors=True)
            return
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as out:
            for k in range(self.count):
                with open(self._piece(k), "rb") as rows:
                    shutil.copyfileobj(rows, out, 1 << 20)
        os.replace(tmp, target)
        self.discard()

    def discard(self) -> None:
        import shutil

        shutil.rmtree(self.pieces, ignore_errors=True)


def _write_piece(path: str, frame: pd.DataFrame, fmt: str, origin: tuple[int, ...], header: bool) -> int:
    """One partition of a Points output: its CSV rows (the header with the first) or its Parquet file."""
    if path.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        rows = all_points(frame, origin) if fmt == "all_points" else frame
        Path(path).write_bytes(rows.to_csv(index=False, header=header).encode("utf-8"))
    return len(frame)


def all_points(frame: pd.DataFrame, origin: tuple[int, ...] = (0, 0, 0)) -> pd.DataFrame:
    """brainmapper's ``all_points.csv`` from a ``cell_regions`` table: raw voxel coordinates (z, y, x of the
    whole image), atlas coordinates (voxels along the atlas file's axes), structure name, hemisphere. Every
    cell has its row: cells outside the brain or the atlas keep theirs, named so (brainmapper leaves them out)."""
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for axis, d in enumerate("zyx"):
        out[f"coordinate_raw_axis_{axis}"] = frame[d].to_numpy(dtype=np.float64) + origin[axis]
    for axis in range(3):
        out[f"coordinate_atlas_axis_{axis}"] = frame[f"atlas_axis_{axis}"].to_numpy(dtype=np.float64)
    out["structure_name"] = frame["structure_name"].to_numpy()
    out["hemisphere"] = frame["hemisphere"].to_numpy()
    return out[ALL_POINTS_COLUMNS]


def _write_cellcounter(path: str, frame: pd.DataFrame, origin: tuple[int, ...]) -> None:
    """CellCounter XML written by brainglobe-utils: every row a cell (type 2) at its nearest voxel of the
    whole image (MarkerX = x, MarkerY = y, MarkerZ = z, as cellfinder writes them)."""
    try:
        from brainglobe_utils.cells.cells import Cell
        from brainglobe_utils.IO.cells import save_cells
    except ImportError:
        raise CvplError(f"{path}: format cellfinder_xml is written with brainglobe-utils; expected it installed "
                        "(pip install 'cvplgraph[brainglobe]')") from None  # fmt: skip
    zyx = np.rint(frame[["z", "y", "x"]].to_numpy(dtype=np.float64)).astype(np.int64) + np.asarray(origin, np.int64)
    cells = [Cell([int(x), int(y), int(z)], Cell.CELL) for z, y, x in zyx]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".xml")
    os.close(fd)
    try:
        save_cells(cells, tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_block_counts(path: str, counts: xr.DataArray) -> None:
    if path.endswith(".json"):
        body: dict[str, Any] = {k: v for k, v in counts.attrs.items()}
        body["counts"] = counts.values.tolist()
        _atomic_text(path, json.dumps(body, indent=1))
        return
    grid = np.indices(counts.shape).reshape(3, -1).T
    frame = pd.DataFrame(grid, columns=["block_z", "block_y", "block_x"])
    for i, d in enumerate(("z", "y", "x")):
        frame[f"{d}_um"] = counts[d].values[grid[:, i]]
    frame["count"] = counts.values.ravel()
    _atomic_text(path, frame.to_csv(index=False))


def region_dataset(frame: pd.DataFrame) -> xr.Dataset:
    """The tidy region table as a Dataset: variables over (region, hemisphere), names as region coordinates."""
    values = ["cells", "volume_mm3", "density_per_mm3", "cells_inclusive", "volume_mm3_inclusive",
              "density_inclusive_per_mm3"]  # fmt: skip
    wide = frame.set_index(["id", "hemisphere"])[values]
    ds = xr.Dataset.from_dataframe(wide).rename({"id": "region"})
    info = frame.drop_duplicates("id").set_index("id").reindex(ds["region"].values)
    for column in ("acronym", "name", "parent_id", "depth"):
        values_ = info[column].to_numpy()
        ds = ds.assign_coords({column: ("region", values_.astype(str) if values_.dtype == object else values_)})
    ds.attrs["description"] = "cells, volume and density per atlas region and hemisphere (cvplgraph region_counts)"
    return with_units(ds)


def write_regions(path: str, frame: pd.DataFrame, fmt: str = "", atlas_ids: np.ndarray | None = None) -> None:
    """A RegionTable output, in the layout its format or suffix asks for."""
    if fmt == "brainglobe":
        _atomic_text(path, brainglobe_summary(frame, atlas_ids).to_csv(index=False))
    elif path.endswith(".png"):
        _atomic_bytes(path, density_chart(frame))
    elif path.endswith(".zarr"):
        _atomic_zarr(path, region_dataset(frame))
    else:
        _atomic_text(path, frame.to_csv(index=False))


def brainglobe_summary(frame: pd.DataFrame, atlas_ids: np.ndarray | None = None) -> pd.DataFrame:
    """brainmapper's ``summary.csv`` from a region table: exclusive counts per region and hemisphere.

    Rows: every region of the atlas (``atlas_ids``, the annotation's distinct ids; without them, every region
    owning counted volume) and every region holding a cell, 0-cell rows included, sorted by structure name as
    brainmapper's outer merges sort them. Cells in atlas id 0 or outside the atlas are not regions and are
    left out, as brainmapper leaves them out; every other cell is counted: a region whose cells lie in the
    image but whose volume there is 0 keeps its row and its cells, with an empty density (brainmapper's
    x / 0). ``total_cells`` counts every cell of the region, also any whose hemisphere value is neither
    left nor right (for a BrainGlobe atlas there is none: it is then left + right)."""
    in_brain = frame["id"] > 0
    both = frame[in_brain & (frame["hemisphere"] == "both")].set_index("id")
    keep = both["cells"].to_numpy() > 0
    keep |= both.index.isin(atlas_ids) if atlas_ids is not None else both["volume_mm3"].to_numpy() > 0
    both = both[keep]
    sides = {}
    for side in ("left", "right"):
        part = frame[in_brain & (frame["hemisphere"] == side)].set_index("id")
        sides[side] = part.reindex(both.index).fillna({"cells": 0, "volume_mm3": 0.0})

    def density(cells: pd.Series, volume: pd.Series) -> np.ndarray:
        v, c = volume.to_numpy(dtype=float), cells.to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, c / np.where(v > 0, v, 1.0), np.nan)

    left, right = sides["left"], sides["right"]
    out = pd.DataFrame(
        {
            "structure_name": both["name"].astype(str).to_numpy(),
            "left_cell_count": left["cells"].to_numpy(dtype=float),
            "right_cell_count": right["cells"].to_numpy(dtype=float),
            "total_cells": both["cells"].to_numpy(dtype=float),
            "left_volume_mm3": left["volume_mm3"].to_numpy(dtype=float),
            "right_volume_mm3": right["volume_mm3"].to_numpy(dtype=float),
            "total_volume_mm3": both["volume_mm3"].to_numpy(dtype=float),
            "left_cells_per_mm3": density(left["cells"], left["volume_mm3"]),
            "right_cells_per_mm3": density(right["cells"], right["volume_mm3"]),
        }
    )
    return out.sort_values("structure_name", kind="stable").reset_index(drop=True)[BRAINGLOBE_COLUMNS]


def density_chart(frame: pd.DataFrame, top: int = 25) -> bytes:
    """PNG bar chart of the ``top`` regions by density (exclusive, both hemispheres, regions with cells)."""
    import io

    from matplotlib.figure import Figure  # drawn without pyplot: no backend switch for the caller

    both = frame[(frame["hemisphere"] == "both") & (frame["id"] > 0) & (frame["cells"] > 0)]
    best = both.nlargest(top, "density_per_mm3").iloc[::-1]
    figure = Figure(figsize=(7, 0.28 * max(len(best), 4) + 1.2), dpi=100)
    ax = figure.subplots()
    ax.barh(best["acronym"].astype(str), best["density_per_mm3"], color="#3b75af")
    ax.set_xlabel("cells per mm³ (region's own voxels)")
    ax.set_title(f"the {len(best)} densest regions")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@functools.cache
def file_mode() -> int:
    """The permissions an ``open()`` would give a new file: 0o666 less the process's umask (read once,
    at the first output written, by setting the umask and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_bytes(path: str, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())  # mkstemp's 0600 would hide results from colleagues
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)


def _atomic_zarr(path: str, ds: xr.Dataset) -> None:
    """Write a Dataset to a temporary store beside ``path``, then swap it in."""
    import shutil
    import warnings

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    with warnings.catch_warnings():  # zarr flags fixed-width unicode as not yet in the v3 spec
        warnings.simplefilter("ignore")
        ds.to_zarr(tmp / "store.zarr", mode="w", consolidated=False)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp / "store.zarr", target)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
