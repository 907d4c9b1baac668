"""A trained object classifier: a random forest over the numeric columns of a Points table.

Rows are candidates (a detector's points); features are the table's own columns
(intensity, size, shape, contrast, …), by name. The model file has the same
pickle-free layout as the pixel classifier's (:mod:`cvplgraph.ops._forest`) with
its own format string and the feature names in its JSON document, so a table
is classified by column name whatever the column order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvplgraph.errors import CvplError
from cvplgraph.ops._forest import forest_arrays, forest_from_arrays, read_model, write_model

FORMAT = "cvplgraph-object-classifier/1"
CELL, NON_CELL = 2, 1  # as CellCounter types in cellfinder's training files
#: Columns that are never features: the id, the position (voxels and µm) and this classifier's own output.
NOT_FEATURES = ("label", "z", "y", "x", "z_um", "y_um", "x_um", "cell_probability")


class FeatureError(CvplError):
    """A table lacks a feature column, or a feature column is not numeric."""


def feature_columns(frame: pd.DataFrame, chosen: Sequence[str] | None = None) -> list[str]:
    """The feature columns of ``frame``: ``chosen`` (checked), else every numeric column except
    :data:`NOT_FEATURES`, in table order."""
    if chosen:
        missing = [c for c in chosen if c not in frame.columns]
        if missing:
            raise FeatureError(f"no column {', '.join(missing)} in the table; its columns: {', '.join(frame.columns)}")
        text = [c for c in chosen if not _numeric(frame[c])]
        if text:
            raise FeatureError(f"column {', '.join(text)} is not numeric; features must be numbers")
        return list(chosen)
    return [c for c in frame.columns if c not in NOT_FEATURES and _numeric(frame[c])]


def _numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column))


def rows(frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """(n, len(features)) float64 feature rows; ±inf become NaN (the forest treats them as missing)."""
    x = frame[list(features)].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isinf(x), np.nan, x)


@dataclass(frozen=True)
class ObjectModel:
    """A random forest over named table columns, ready to predict."""

    features: tuple[str, ...]
    forest: Any  # sklearn RandomForestClassifier (rebuilt from arrays when loaded)

    def cell_probability(self, frame: pd.DataFrame) -> np.ndarray:
        """P(cell) of every row of ``frame`` (float64); a missing feature column is a
        :class:`FeatureError` naming it."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise FeatureError(
                f"the points table lacks the model's feature column(s) {', '.join(missing)} "
                f"(the model uses {', '.join(self.features)}; the table has {', '.join(map(str, frame.columns))})"
            )
        if len(frame) == 0:
            return np.empty(0)
        try:
            x = rows(frame, self.features)
        except (TypeError, ValueError):
            text = [c for c in self.features if not _numeric(frame[c])]
            raise FeatureError(f"feature column(s) {', '.join(text)} of the points table are not numeric") from None
        column = list(self.forest.classes_).index(CELL)
        return self.forest.predict_proba(x)[:, column].astype(np.float64)


def forest(trees: int = 200, depth: int | None = None, seed: int = 0, balanced: bool = False) -> Any:
    """The unfitted forest. Unweighted, its probabilities follow the annotations' own mix of cells
    and non-cells (right for a fully annotated region); ``balanced`` weighs both classes equally,
    which raises recall and lowers precision when non-cells outnumber cells (docs/train.md)."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=seed, n_jobs=1,
                                  class_weight="balanced" if balanced else None)  # fmt: skip


def fit(x: np.ndarray, y: np.ndarray, features: Sequence[str], *, trees: int = 200, depth: int | None = None,
        seed: int = 0, balanced: bool = False) -> ObjectModel:  # fmt: skip
    """Fit on feature rows ``x`` and classes ``y`` (1 = non-cell, 2 = cell)."""
    if set(np.unique(y).tolist()) != {NON_CELL, CELL}:
        raise CvplError(f"training needs cells ({CELL}) and non-cells ({NON_CELL}), got {sorted(set(y.tolist()))}")
    model = forest(trees, depth, seed, balanced)
    model.fit(x, y)
    return ObjectModel(tuple(features), model)


def save(model: ObjectModel, folder: str | Path, name: str = "objects") -> Path:
    """Write ``<folder>/<name>-<digest>.npz``; return its path."""
    meta = {"format": FORMAT, "features": list(model.features), "classes": model.forest.classes_.tolist(),
            "n_features": int(model.forest.n_features_in_), "trees": len(model.forest.estimators_)}  # fmt: skip
    return write_model(forest_arrays(model.forest), meta, folder, name)


def load(path: str | Path) -> ObjectModel:
    """Read a model written by :func:`save`, checking that its name matches its content."""
    arrays, meta = read_model(path, FORMAT)
    rebuilt = forest_from_arrays(arrays, meta["trees"], meta["n_features"], meta["classes"])
    return ObjectModel(tuple(meta["features"]), rebuilt)
