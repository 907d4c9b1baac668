"""Random forests as plain arrays, and the pickle-free model file both trained classifiers use.

A model file is a ``.npz`` of plain arrays: each tree's node fields and leaf
values (``tree<i>.<field>``, ``tree<i>.values``, ``tree<i>.max_depth``) and a
JSON document (``meta.json``, as bytes) whose ``format`` says which kind of
model it holds. It is written as a zip with fixed timestamps, so the same
forest gives the same bytes, and loaded with ``allow_pickle=False``: the arrays
are placed into scikit-learn tree objects, nothing is unpickled. The file name
is ``<name>-<sha256[:16]>.npz`` and the loader checks the digest, so a spec that
names a model file names its exact content (and its cache keys change with it).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cvplgraph.errors import CvplError

#: The zip entries' timestamp: fixed, so the file's bytes (and its name) depend on the model only.
_EPOCH = (1980, 1, 1, 0, 0, 0)


class ModelError(CvplError):
    """A model file is missing, corrupt, or does not match its name."""


def forest_arrays(forest: Any) -> dict[str, np.ndarray]:
    """Each tree of a fitted ``RandomForestClassifier`` as named plain arrays."""
    arrays: dict[str, np.ndarray] = {}
    for i, est in enumerate(forest.estimators_):
        state = est.tree_.__getstate__()
        for name in state["nodes"].dtype.names:
            arrays[f"tree{i}.{name}"] = np.ascontiguousarray(state["nodes"][name])
        arrays[f"tree{i}.values"] = np.ascontiguousarray(state["values"])
        arrays[f"tree{i}.max_depth"] = np.array(state["max_depth"])
    return arrays


def forest_from_arrays(arrays: dict[str, np.ndarray], trees: int, n_features: int, classes: list[Any]) -> Any:
    """A ``RandomForestClassifier`` that predicts like the one :func:`forest_arrays` took apart.

    Node fields are filled by name, so a field a newer scikit-learn adds keeps its zero default.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    labels = np.array(classes)
    forest = RandomForestClassifier(n_estimators=trees)
    forest.classes_, forest.n_classes_, forest.n_outputs_ = labels, len(labels), 1
    forest.n_features_in_ = n_features
    estimators = []
    for i in range(trees):
        tree = Tree(n_features, np.array([len(labels)], dtype=np.intp), 1)
        dtype = tree.__getstate__()["nodes"].dtype
        count = len(arrays[f"tree{i}.left_child"])
        nodes = np.zeros(count, dtype=dtype)
        for name in dtype.names:
            if f"tree{i}.{name}" in arrays:
                nodes[name] = arrays[f"tree{i}.{name}"]
        tree.__setstate__({"max_depth": int(arrays[f"tree{i}.max_depth"]), "node_count": count, "nodes": nodes,
                           "values": arrays[f"tree{i}.values"]})  # fmt: skip
        est = DecisionTreeClassifier()
        est.tree_, est.classes_, est.n_classes_, est.n_outputs_ = tree, labels, len(labels), 1
        est.n_features_in_ = n_features
        estimators.append(est)
    forest.estimators_ = estimators
    return forest


def write_model(arrays: dict[str, np.ndarray], meta: dict[str, Any], folder: str | Path, name: str) -> Path:
    """Write ``<folder>/<name>-<digest>.npz`` (the arrays and ``meta`` as JSON); return its path."""
    import sklearn

    entries = {**arrays, "meta.json": np.frombuffer(json.dumps({**meta, "sklearn": sklearn.__version__},
                                                               sort_keys=True).encode(), dtype=np.uint8)}  # fmt: skip
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(entries):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(entries[key]), allow_pickle=False)
    content = buffer.getvalue()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{hashlib.sha256(content).hexdigest()[:16]}.npz"
    tmp = folder / f".{path.name}.tmp"
    tmp.write_bytes(content)
    tmp.replace(path)
    return path


def read_model(path: str | Path, expected_format: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and JSON document of a model file, after checking its name, loading and format."""
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
        with np.load(io.BytesIO(content), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays.pop("meta.json").tobytes())
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a cvplgraph model ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != expected_format:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelError(f"{path}: format {found!r}, expected {expected_format!r}")
    return arrays, meta
