"""Declared outputs: files written from node values at the end of a run.

Points → ``.csv``; BlockCounts → ``.csv`` (one row per block) or ``.json``;
arrays → ``.ome.zarr`` (written inside the run's graph). Files are written to
a temporary name and moved into place, so an output is never half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .types import PortType

SUFFIXES: dict[PortType, tuple[str, ...]] = {
    PortType.Points: (".csv",),
    PortType.BlockCounts: (".csv", ".json"),
    PortType.Image: (".ome.zarr", ".zarr"),
    PortType.Mask: (".ome.zarr", ".zarr"),
    PortType.Labels: (".ome.zarr", ".zarr"),
    PortType.Density: (".ome.zarr", ".zarr"),
}


def suffix_problem(kind: PortType, path: str) -> str | None:
    """Why ``path`` cannot hold a value of ``kind``, or None."""
    allowed = SUFFIXES.get(kind, ())
    if any(path.endswith(s) for s in allowed):
        return None
    return f"a {kind} output needs a file ending in {' or '.join(allowed) or '(no output format yet)'}, got {path!r}"


def _atomic_text(path: str, text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, target)


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
