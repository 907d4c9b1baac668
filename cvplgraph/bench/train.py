"""``cvplgraph train``: fit a classifier from annotations.

Two kinds of model, both written as pickle-free files named by their content digest:

- **pixel** (:func:`train`): a random forest over filter features of the voxels painted 1
  (background) or 2 (cell) in an annotation volume, for the ``pixel_classifier`` op. The features
  are computed on the spec's input or on any Image node of the spec (``image``, e.g. behind
  ``normalize``), run through the spec's cache.
- **objects** (:func:`train_objects`): a random forest over the numeric columns of a Points node's
  table (a detector's candidates), for the ``classify_objects`` op. Candidates are paired one to
  one with annotated points (CellCounter XML: Type 2 cells, Type 1 non-cells; a CSV: cells) within
  a tolerance; a candidate paired with a cell is a positive, with a non-cell a negative, and an
  unpaired candidate is a negative or left out (``unmatched``; default: negative when the file
  marks cells only — every cell of the annotated region is marked, so any other candidate is not
  a cell — and left out when it marks non-cells too, as sparse annotations leave most candidates
  unjudged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from cvplgraph.errors import CvplError, InputError
from cvplgraph.io.stores import child_array, multiscales, open_group, read_input
from cvplgraph.ops._classifier import BACKGROUND, CELL, fit, save
from cvplgraph.registry import get_op
from cvplgraph.spec.model import AXES, INPUT, Spec
from cvplgraph.types import PortType


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


def check_crop(crop: Sequence[int] | None) -> tuple[int, ...] | None:
    """A ``--crop Z0 Z1 Y0 Y1 X0 X1`` box checked (0 ≤ start < stop per axis), or None."""
    if crop is None:
        return None
    box = tuple(int(v) for v in crop)
    bad = [AXES[a] for a in range(3) if len(box) != 6 or not 0 <= box[2 * a] < box[2 * a + 1]]
    if len(box) != 6 or bad:
        raise CvplError(f"--crop {' '.join(map(str, crop))}: expected Z0 Z1 Y0 Y1 X0 X1 voxels with "
                        f"0 ≤ start < stop on every axis (not on {', '.join(bad) or 'all six'})")  # fmt: skip
    return box


def _node_of(spec: Spec, name: str, kind: PortType, option: str) -> None:
    """A one-line error unless ``name`` is a node of ``spec`` whose output is ``kind``."""
    nodes = {n.name: n for n in spec.nodes}
    fitting = [n.name for n in spec.nodes if get_op(n.op).output is kind]
    choices = f"{kind} nodes of the spec: {', '.join(fitting) or 'none'}"
    if name not in nodes:
        raise CvplError(f"{spec.path}: {option} {name}: no such node; {choices}")
    output = get_op(nodes[name].op).output
    if output is not kind:
        raise CvplError(f"{spec.path}: {option} {name}: op {nodes[name].op} gives {output}, not {kind}; {choices}")


# --------------------------------------------------------------------------- pixel classifier


@dataclass(frozen=True)
class TrainReport:
    model: Path
    voxels: dict[str, int]  # annotated voxels used, per class
    held_out_f1: float  # cell F1 on a fifth of the annotations held out of training
    image: str = INPUT  # the node whose output the features were computed on


def train(spec: Spec, annotations: str, out: str | Path, *, sigmas_um: tuple[float, ...] = (1.0, 2.0, 4.0),
          trees: int = 32, depth: int = 10, seed: int = 0, image: str = INPUT, scheduler: str | None = "threads",
          progress: bool = False) -> TrainReport:  # fmt: skip
    """Fit on the annotated voxels of ``spec``'s input (same channel, level and crop), or of the
    output of the Image node ``image``, computed through the spec's cache."""
    from cvplgraph.ops.classify import training_rows

    if image == INPUT:
        pixels = read_input(spec.input)
    else:
        from cvplgraph.bench.run import run_node

        _node_of(spec, image, PortType.Image, "--image")
        pixels, _ = run_node(spec, image, scheduler=scheduler, progress=progress)
    labels = read_annotations(annotations)
    what = "the input's (after channel, level and crop)" if image == INPUT else f"node {image}'s"
    if labels.ndim != 3 or tuple(labels.shape) != tuple(pixels.shape):
        raise InputError(f"{annotations}: annotation shape {tuple(labels.shape)} differs from {what} "
                         f"{tuple(pixels.shape)}")  # fmt: skip
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{annotations}: annotations must be integers (1 = background, 2 = cell), got {labels.dtype}")
    x, y = training_rows(pixels, labels, sigmas_um)
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
    return TrainReport(save(model, out), counts, f1, image)


# --------------------------------------------------------------------------- object classifier

UNMATCHED = ("negative", "ignore")


@dataclass(frozen=True)
class ObjectTrainReport:
    """What :func:`train_objects` trained on and how well it did.

    ``cv_*`` are the cell precision, recall and F1 of cross-validated predictions (each labelled
    candidate predicted by a forest that did not see it, ``folds`` folds stratified by class);
    None when a class has fewer than two examples.
    """

    model: Path
    node: str
    features: tuple[str, ...]
    candidates: int  # rows of the node's table
    cells_marked: int  # annotated cells inside the (cropped) input
    non_cells_marked: int
    positives: int  # candidates paired with an annotated cell
    negatives: int  # paired with a non-cell, plus unpaired ones when unmatched == "negative"
    unmatched: str
    tolerance_um: float
    folds: int
    cv_precision: float | None
    cv_recall: float | None
    cv_f1: float | None
    importances: dict[str, float] = field(default_factory=dict)  # the forest's impurity importances


def train_objects(
    spec: Spec,
    node: str,
    annotations: str,
    out: str | Path,
    *,
    crop: Sequence[int] | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    tolerance_um: float | None = None,
    unmatched: str | None = None,
    features: Sequence[str] | None = None,
    trees: int = 200,
    depth: int | None = None,
    balanced: bool = False,
    seed: int = 0,
    scheduler: str | None = "threads",
    progress: bool = False,
) -> ObjectTrainReport:
    """Fit an object classifier on the candidates of the Points node ``node`` (see the module docstring).

    The node's table comes from running the spec through its cache (on ``crop`` when given);
    annotations outside the (cropped) input are dropped. ``features`` default to every numeric
    column but ``label`` and the coordinates. ``balanced`` weighs cells and non-cells equally
    instead of as often as they were annotated.
    """
    from cvplgraph.bench.metrics import match
    from cvplgraph.bench.run import DEFAULT_TOLERANCE_UM, inside, run_node
    from cvplgraph.bench.truth import UM_COLUMNS, read_marked_points
    from cvplgraph.ops import _object_classifier as oc

    box = check_crop(crop)
    _node_of(spec, node, PortType.Points, "--objects")
    if unmatched is not None and unmatched not in UNMATCHED:
        raise CvplError(f"--unmatched {unmatched}: expected one of {', '.join(UNMATCHED)}")
    tolerance = DEFAULT_TOLERANCE_UM if tolerance_um is None else float(tolerance_um)
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise CvplError(f"--tolerance {tolerance_um}: expected a pairing distance > 0 µm")
    path = Path(annotations)
    if voxel_size is None and path.is_file() and path.suffix.lower() == ".xml":
        raise InputError(f"{annotations}: CellCounter markers are voxels; give their size with --voxel-size Z Y X (µm)")
    marked = read_marked_points(path, voxel_size=voxel_size)
    has_non_cells = bool((~marked["cell"]).any())
    rule = unmatched or ("ignore" if has_non_cells else "negative")

    table, geometry = run_node(spec, node, crop=box, scheduler=scheduler, progress=progress)
    frame = table.to_dataframe().reset_index(drop=True)
    marked = inside(marked, geometry)
    cells, non_cells = int(marked["cell"].sum()), int((~marked["cell"]).sum())
    where = f"inside crop {list(box)}" if box else "inside the input"
    if len(marked) == 0:
        raise InputError(f"{annotations}: no annotated point lies {where}; expected annotations of that region")
    if len(frame) == 0:
        raise CvplError(f"node {node} found no candidates {where}; nothing to train on")
    columns = oc.feature_columns(frame, features)
    if not columns:
        raise CvplError(f"node {node}'s table has no numeric feature column besides label and coordinates "
                        f"(columns: {', '.join(frame.columns)})")  # fmt: skip
    pairs = match(frame[UM_COLUMNS].to_numpy(float), marked[UM_COLUMNS].to_numpy(float), tolerance).pairs
    if len(pairs) == 0:
        raise CvplError(f"none of the {len(frame)} candidates of node {node} lies within {tolerance:g} µm of one of "
                        f"the {len(marked)} annotations {where}; check --voxel-size and --tolerance")  # fmt: skip
    y = np.zeros(len(frame), dtype=np.int64)  # 0: left out of training
    y[pairs[:, 0]] = np.where(marked["cell"].to_numpy()[pairs[:, 1]], oc.CELL, oc.NON_CELL)
    if rule == "negative":
        y[y == 0] = oc.NON_CELL
    labelled = y > 0
    x, y = oc.rows(frame, columns)[labelled], y[labelled]
    positives, negatives = int((y == oc.CELL).sum()), int((y == oc.NON_CELL).sum())
    if positives == 0 or negatives == 0:
        missing = "cell" if positives == 0 else "non-cell"
        hint = " (cells-only annotations need --unmatched negative)" if missing == "non-cell" else ""
        raise CvplError(f"{annotations}: no candidate of node {node} is a {missing} within {tolerance:g} µm "
                        f"({positives} cell, {negatives} non-cell candidates); training needs both{hint}")  # fmt: skip
    folds = min(5, positives, negatives)
    precision = recall = f1 = None
    if folds >= 2:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        predicted = cross_val_predict(oc.forest(trees, depth, seed, balanced), x, y, cv=split)
        tp = int(((predicted == oc.CELL) & (y == oc.CELL)).sum())
        said = int((predicted == oc.CELL).sum())
        precision, recall = tp / said if said else 0.0, tp / positives
        f1 = 2 * tp / (said + positives)
    model = oc.fit(x, y, columns, trees=trees, depth=depth, seed=seed, balanced=balanced)
    importances = dict(zip(columns, (float(v) for v in model.forest.feature_importances_)))
    return ObjectTrainReport(oc.save(model, out), node, tuple(columns), len(frame), cells, non_cells, positives,
                             negatives, rule, tolerance, folds if folds >= 2 else 0, precision, recall, f1,
                             importances)  # fmt: skip


def describe(report: ObjectTrainReport) -> list[str]:
    """The lines ``cvplgraph train --objects`` prints."""
    lines = [
        f"{report.candidates} candidates of node {report.node}; annotations: {report.cells_marked} cells, "
        f"{report.non_cells_marked} non-cells; paired within {report.tolerance_um:g} µm",
        f"trained on {report.positives} positives (cells) and {report.negatives} negatives "
        f"(unpaired candidates: {'negatives' if report.unmatched == 'negative' else 'left out'})",
    ]
    if report.cv_f1 is None:
        lines.append("too few of one class to cross-validate (fewer than 2)")
    else:
        lines.append(f"cell F1 in {report.folds}-fold cross-validation: {report.cv_f1:.3f} "
                     f"(precision {report.cv_precision:.3f}, recall {report.cv_recall:.3f})")  # fmt: skip
    ranked = sorted(report.importances.items(), key=lambda kv: -kv[1])
    lines.append("features (importance): " + ", ".join(f"{name} {value:.2f}" for name, value in ranked))
    return lines
