"""A trained pixel classifier: per-voxel features, a random forest, and a pickle-free model file.

Features (per scale σ, in µm, for anisotropic voxels): gaussian smoothing,
gradient magnitude and Laplacian of gaussian, plus the raw intensity. Every
feature is a separable filter with ``mode="reflect"``, so computing them on a
block with a 4σ halo equals computing them on the whole volume.

The model file is a ``.npz`` of plain arrays (loaded with ``allow_pickle=False``)
holding each tree's nodes and leaf values, plus a JSON document (feature
scales, classes, library versions). Loading never unpickles anything: the
arrays are placed into scikit-learn tree objects for fast prediction. The file
name carries the first 16 hex digits of the SHA-256 of its content, and the
loader checks it: a spec that names a model file names its exact content, so
the cache key changes whenever the model does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cvplgraph.errors import CvplError

FORMAT = "cvplgraph-pixel-classifier/1"
CELL, BACKGROUND = 2, 1  # annotation values, as a Napari labels layer paints them
TRUNCATE = 4.0


class ModelError(CvplError):
    """A model file is missing, corrupt, or does not match its name."""


def features(block: np.ndarray, sigmas: list[tuple[float, float, float]]) -> np.ndarray:
    """(n_features, Z, Y, X) float32 features of a block (sigmas in voxels per axis)."""
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
    import sklearn

    arrays: dict[str, np.ndarray] = {}
    for i, est in enumerate(model.forest.estimators_):
        state = est.tree_.__getstate__()
        for field in state["nodes"].dtype.names:
            arrays[f"tree{i}.{field}"] = np.ascontiguousarray(state["nodes"][field])
        arrays[f"tree{i}.values"] = state["values"]
        arrays[f"tree{i}.max_depth"] = np.array(state["max_depth"])
    meta = {"format": FORMAT, "sigmas_um": list(model.sigmas_um), "classes": model.forest.classes_.tolist(),
            "n_features": int(model.forest.n_features_in_), "trees": len(model.forest.estimators_),
            "sklearn": sklearn.__version__}  # fmt: skip
    arrays["meta.json"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp.npz"
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]
    path = folder / f"{name}-{digest}.npz"
    tmp.replace(path)
    return path


def load(path: str | Path) -> Model:
    """Read a model written by :func:`save`, checking that its name matches its content."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    digest = hashlib.sha256(content).hexdigest()[:16]
    if not path.stem.endswith(f"-{digest}"):
        raise ModelError(f"{path}: content does not match the digest in its name (expected …-{digest}.npz); "
                         "the file was changed after training")  # fmt: skip
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays["meta.json"].tobytes())
    except (ValueError, KeyError, OSError) as exc:
        raise ModelError(f"{path}: not a cvplgraph model ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    classes = np.array(meta["classes"])
    forest = RandomForestClassifier(n_estimators=meta["trees"])
    forest.classes_, forest.n_classes_, forest.n_outputs_ = classes, len(classes), 1
    forest.n_features_in_ = meta["n_features"]
    estimators = []
    for i in range(meta["trees"]):
        tree = Tree(meta["n_features"], np.array([len(classes)], dtype=np.intp), 1)
        dtype = tree.__getstate__()["nodes"].dtype
        count = len(arrays[f"tree{i}.left_child"])
        nodes = np.zeros(count, dtype=dtype)
        for field in dtype.names:
            if f"tree{i}.{field}" in arrays:
                nodes[field] = arrays[f"tree{i}.{field}"]
        tree.__setstate__({"max_depth": int(arrays[f"tree{i}.max_depth"]), "node_count": count, "nodes": nodes,
                           "values": arrays[f"tree{i}.values"]})  # fmt: skip
        est = DecisionTreeClassifier()
        est.tree_, est.classes_, est.n_classes_, est.n_outputs_ = tree, classes, len(classes), 1
        est.n_features_in_ = meta["n_features"]
        estimators.append(est)
    forest.estimators_ = estimators
    return Model(tuple(meta["sigmas_um"]), forest)
