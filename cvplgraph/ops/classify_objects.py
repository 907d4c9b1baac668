"""Points → Points with a trained object classifier (see :mod:`cvplgraph.ops._object_classifier`)."""

from __future__ import annotations

import functools

import dask
import numpy as np
import pandas as pd

from cvplgraph.ops._object_classifier import ObjectModel, load
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import Table


@functools.lru_cache(maxsize=4)
def cached_model(path: str) -> ObjectModel:
    """One load per process and model file."""
    return load(path)


def _classify(frame: pd.DataFrame, path: str, min_probability: float) -> pd.DataFrame:
    probability = cached_model(path).cell_probability(frame)
    out = frame.assign(cell_probability=probability)
    out = out[probability >= min_probability].reset_index(drop=True)
    labels = np.arange(1, len(out) + 1, dtype=np.int64)
    if "label" in out.columns:
        return out.assign(label=labels)
    return out.assign(label=labels)[["label", *out.columns]]


def _probability_problem(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "a probability in [0, 1]"


@op(
    "classify_objects",
    version=1,
    inputs={"points": PortType.Points},
    output=PortType.Points,
    checks={
        "model": lambda p: None if p.endswith(".npz") else "a model file written by `cvplgraph train --objects` (.npz)",
        "min_probability": _probability_problem,
    },
    paths=("model",),
    cost="one forest evaluation per row of the points table",
)
def classify_objects(points: Table, *, model: str, min_probability: float = 0.5) -> Table:
    """Keep the candidates a trained object classifier calls cells.

    Parameters
    ----------
    points : Points table
        Candidates with the numeric columns the model was trained on (by name;
        other columns are carried along).
    model : str
        Path of a model written by ``cvplgraph train SPEC --objects NODE``
        (its name carries its content digest, so a retrained model is a new
        key). A relative path in a spec is relative to the spec's folder;
        workers must be able to read it.
    min_probability : float
        Rows whose cell probability is at least this are kept.

    Returns
    -------
    points : Table
        The kept rows in their order with a ``cell_probability`` column added and
        ``label`` renumbered 1..N. Each row is judged on its own columns, so the
        result does not depend on the chunking that produced the table.
    """
    cached_model(model)  # a missing or altered model file fails when the graph is built, not in a task
    kept = points.map_parts(_classify, model, min_probability)  # labels 1..n within each partition
    if len(kept.parts) == 1:
        return kept
    starts = dask.delayed(_starts, pure=True)(*(dask.delayed(len, pure=True)(part) for part in kept.parts))
    return Table(tuple(dask.delayed(_shift, pure=True)(part, starts, k) for k, part in enumerate(kept.parts)),
                 kept.geometry)  # fmt: skip


def _starts(*sizes: int) -> np.ndarray:
    """Where each partition's labels start: the rows of the partitions before it."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _shift(frame: pd.DataFrame, starts: np.ndarray, k: int) -> pd.DataFrame:
    """Partition ``k`` with its labels 1..n moved after the earlier partitions': labels 1..N over the table."""
    return frame.assign(label=frame["label"].to_numpy() + starts[k])
