"""A trained pixel classifier: per-voxel features, a random forest, and a pickle-free model file.

Features (per scale σ, in µm, for anisotropic voxels): gaussian smoothing,
gradient magnitude and Laplacian of gaussian, plus the raw intensity. Every
feature is a separable filter with ``mode="reflect"``, so computing them on a
block with a 4σ halo equals computing them on the whole volume.

The model file (:mod:`cvplgraph.ops._forest`, shared with the object
classifier) is a ``.npz`` of plain arrays (loaded with ``allow_pickle=False``)
holding each tree's nodes and leaf values, plus a JSON document (format
``cvplgraph-pixel-classifier/1``, feature scales, classes, library versions).
Loading never unpickles anything. The file name carries the first 16 hex digits
of the SHA-256 of its content, and the loader checks it: a spec that names a
model file names its exact content, so the cache key changes whenever the model
does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvplgraph.errors import CvplError
from cvplgraph.ops._forest import ModelError, forest_arrays, forest_from_arrays, read_model, write_model

__all__ = ["BACKGROUND", "CELL", "FORMAT", "Model", "ModelError", "features", "fit", "halo", "load", "save"]

FORMAT = "cvplgraph-pixel-classifier/1"
CELL, BACKGROUND = 2, 1  # annotation values, as a Napari labels layer paints them
TRUNCATE = 4.0


def features(block: np.ndarray, sigmas: list[tuple[float, float, float]]) -> np.ndarray:
    """(n_features, Z, Y, X) float32 features of a block (sigmas in voxels per axis)."""
    from scipy import ndimage

    block = block.astype(np.float32, copy=False)
    out = [block]
    for sigma in sigmas:
        out.append(ndimage.gaussian_filter(block, sigma, mode="reflect", truncate=TRUNCATE))
        out.append(ndimage.gaussian_gradient_magnitude(block, sigma, mode="reflect", truncate=TRUNCATE))
        out.append(ndimage.gaussian_laplace(block, sigma, mode="reflect", truncate=TRUNCATE))
    return np.stack(out).astype(np.float32)


def halo(sigmas: list[tuple[float, float, float]]) -> tuple[int, int, int]:
    """Voxels of context each feature needs, per axis (scipy's kernel radius)."""
    return tuple(int(TRUNCATE * max(s[a] for s in sigmas) + 0.5) + 1 for a in range(3))  # type: ignore[return-value]


@dataclass(frozen=True)
class Model:
    """A random forest over :func:`features`, ready to predict."""

    sigmas_um: tuple[float, ...]
    forest: Any  # sklearn RandomForestClassifier (rebuilt from arrays)

    def sigmas_voxels(self, scale: tuple[float, ...]) -> list[tuple[float, float, float]]:
        return [(s / scale[0], s / scale[1], s / scale[2]) for s in self.sigmas_um]

    def cell_probability(self, block: np.ndarray, scale: tuple[float, ...]) -> np.ndarray:
        """P(cell) per voxel of ``block``, float32."""
        f = features(block, self.sigmas_voxels(scale))
        flat = f.reshape(f.shape[0], -1).T
        column = list(self.forest.classes_).index(CELL)
        return self.forest.predict_proba(flat)[:, column].reshape(block.shape).astype(np.float32)


def fit(x: np.ndarray, y: np.ndarray, sigmas_um: tuple[float, ...], *, trees: int = 32, depth: int = 10,
        seed: int = 0) -> Model:  # fmt: skip
    """Fit a forest on feature rows ``x`` and annotations ``y`` (1 = background, 2 = cell)."""
    from sklearn.ensemble import RandomForestClassifier

    if set(np.unique(y)) != {BACKGROUND, CELL}:
        raise CvplError(
            f"annotations need both background ({BACKGROUND}) and cell ({CELL}) voxels, got {sorted(set(y))}"
        )
    forest = RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=seed, n_jobs=1)
    forest.fit(x, y)
    return Model(tuple(sigmas_um), forest)


def save(model: Model, folder: str | Path, name: str = "cells") -> Path:
    """Write ``<folder>/<name>-<digest>.npz``; return its path."""
    meta = {"format": FORMAT, "sigmas_um": list(model.sigmas_um), "classes": model.forest.classes_.tolist(),
            "n_features": int(model.forest.n_features_in_), "trees": len(model.forest.estimators_)}  # fmt: skip
    return write_model(forest_arrays(model.forest), meta, folder, name)


def load(path: str | Path) -> Model:
    """Read a model written by :func:`save`, checking that its name matches its content."""
    arrays, meta = read_model(path, FORMAT)
    forest = forest_from_arrays(arrays, meta["trees"], meta["n_features"], meta["classes"])
    return Model(tuple(meta["sigmas_um"]), forest)
