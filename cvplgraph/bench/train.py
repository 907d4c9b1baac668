"""``cvplgraph train``: fit a pixel classifier from sparse annotations of a spec's input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np

from cvplgraph.errors import InputError
from cvplgraph.io.stores import child_array, multiscales, open_group, read_input
from cvplgraph.ops._classifier import BACKGROUND, CELL, fit, save
from cvplgraph.spec.model import Spec


def read_annotations(path: str) -> da.Array:
    """A label volume (0 = unlabelled, 1 = background, 2 = cell) from OME-Zarr/zarr, TIFF or .npy."""
    if path.endswith((".tif", ".tiff")):
        import tifffile

        return da.from_array(tifffile.imread(path))
    if path.endswith(".npy"):
        return da.from_array(np.load(path, mmap_mode="r", allow_pickle=False))
    group = open_group(path)
    attrs: dict = group.attrs.asdict()
    meta: dict = attrs.get("ome", attrs)
    level0 = multiscales(attrs, path)["datasets"][0]["path"] if "multiscales" in meta else "0"
    return da.from_zarr(child_array(group, str(level0), path))


@dataclass(frozen=True)
class TrainReport:
    model: Path
    voxels: dict[str, int]  # annotated voxels used, per class
    held_out_f1: float  # cell F1 on a fifth of the annotations held out of training


def train(spec: Spec, annotations: str, out: str | Path, *, sigmas_um: tuple[float, ...] = (1.0, 2.0, 4.0),
          trees: int = 32, depth: int = 10, seed: int = 0) -> TrainReport:  # fmt: skip
    """Fit on the annotated voxels of ``spec``'s input (same channel, level and crop)."""
    from cvplgraph.ops.classify import training_rows

    image = read_input(spec.input)
    labels = read_annotations(annotations)
    if labels.ndim != 3 or tuple(labels.shape) != tuple(image.shape):
        raise InputError(f"{annotations}: annotation shape {tuple(labels.shape)} differs from the input's "
                         f"{tuple(image.shape)} (after channel, level and crop)")  # fmt: skip
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{annotations}: annotations must be integers (1 = background, 2 = cell), got {labels.dtype}")
    x, y = training_rows(image, labels, sigmas_um)
    keep = np.isin(y, (BACKGROUND, CELL))
    x, y = x[keep], y[keep]
    counts = {"background": int((y == BACKGROUND).sum()), "cell": int((y == CELL).sum())}
    if min(counts.values()) == 0:
        raise InputError(f"{annotations}: need voxels painted 1 (background) and 2 (cell); found {counts}")
    held = np.random.default_rng(seed).random(len(y)) < 0.2
    check = fit(x[~held], y[~held], sigmas_um, trees=trees, depth=depth, seed=seed)
    predicted = check.forest.predict(x[held])
    tp = int(((predicted == CELL) & (y[held] == CELL)).sum())
    f1 = 2 * tp / max(1, int((predicted == CELL).sum()) + int((y[held] == CELL).sum()))
    model = fit(x, y, sigmas_um, trees=trees, depth=depth, seed=seed)
    return TrainReport(save(model, out), counts, f1)
