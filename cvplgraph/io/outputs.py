"""Declared outputs: files written from node values at the end of a run.

Points → ``.csv``; BlockCounts → ``.csv`` (one row per block) or ``.json``;
RegionTable → ``.csv`` (the tidy table), ``.zarr`` (an xarray Dataset),
``.png`` (a bar chart of the densest regions) or, with ``format =
"brainglobe"``, BrainGlobe's ``summary.csv`` layout; arrays → ``.ome.zarr``
(written inside the run's graph). Files are written to
a temporary name and moved into place, so an output is never half-written.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cvplgraph.values import with_units

#: BrainGlobe's per-region summary columns, in the order its ``summary.csv`` has them.
BRAINGLOBE_COLUMNS = [
    "left_cell_count", "structure_name", "right_cell_count", "total_cells", "left_volume_mm3", "right_volume_mm3",
    "total_volume_mm3", "left_cells_per_mm3", "right_cells_per_mm3",
]  # fmt: skip


def _atomic_text(path: str, text: str) -> None:
    _atomic_bytes(path, text.encode("utf-8"))


def write_points(path: str, frame: pd.DataFrame) -> None:
    _atomic_text(path, frame.to_csv(index=False))


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


def write_regions(path: str, frame: pd.DataFrame, fmt: str = "") -> None:
    """A RegionTable output, in the layout its format or suffix asks for."""
    if fmt == "brainglobe":
        _atomic_text(path, brainglobe_summary(frame).to_csv(index=False))
    elif path.endswith(".png"):
        _atomic_bytes(path, density_chart(frame))
    elif path.endswith(".zarr"):
        _atomic_zarr(path, region_dataset(frame))
    else:
        _atomic_text(path, frame.to_csv(index=False))


def brainglobe_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """BrainGlobe's ``summary.csv``: one row per region that owns imaged voxels or holds cells, exclusive
    counts. A region whose cells lie in the image but whose voxels (atlas voxels, whose centres decide)
    fall just outside it keeps its row and its cells, with an empty density: no cell is dropped."""
    sides = {}
    for side in ("left", "right", "both"):
        part = frame[(frame["hemisphere"] == side) & (frame["id"] > 0)].set_index("id")
        sides[side] = part
    both = sides["both"]
    if sides["left"].empty:  # no hemisphere volume: every cell counts on neither side
        sides["left"] = sides["right"] = both.assign(cells=0, volume_mm3=0.0)
    left, right = sides["left"].reindex(both.index), sides["right"].reindex(both.index)

    def density(part: pd.DataFrame) -> np.ndarray:
        volume = part["volume_mm3"].to_numpy(dtype=float)
        cells = part["cells"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(volume > 0, cells / np.where(volume > 0, volume, 1.0), np.nan)

    out = pd.DataFrame(
        {
            "left_cell_count": left["cells"].astype(float),
            "structure_name": both["name"],
            "right_cell_count": right["cells"].astype(float),
            "total_cells": both["cells"].astype(float),
            "left_volume_mm3": left["volume_mm3"],
            "right_volume_mm3": right["volume_mm3"],
            "total_volume_mm3": both["volume_mm3"],
            "left_cells_per_mm3": density(left),
            "right_cells_per_mm3": density(right),
        }
    )
    keep = (both["volume_mm3"].to_numpy() > 0) | (both["cells"].to_numpy() > 0)
    return out[keep][BRAINGLOBE_COLUMNS].reset_index(drop=True)


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
