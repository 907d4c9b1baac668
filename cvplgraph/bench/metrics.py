"""Scoring detections against ground truth: one-to-one matching of cell centres, and count errors per region.

A detection and a true cell can be paired when their centres are at most the
tolerance apart (µm, inclusive). Among all one-to-one pairings the matching
takes the most pairs, then, among those, the smallest total distance. Greedy
nearest-neighbour pairing does not: in a chain it can pair a detection with
the true cell another detection needed, and lose a match.

Scores when a denominator is zero: a ratio that cannot be formed is 1.0 when
both sets are empty (nothing to find, nothing found: a perfect result) and
0.0 otherwise, so a wrong result never scores well:

- no detections, no truth: precision = recall = f1 = 1.0;
- no detections, some truth: precision = recall = f1 = 0.0;
- detections, no truth: precision = recall = f1 = 0.0.

``count_error_pct`` is None without truth.

**Anisotropic tolerance.** The tolerance may be three numbers (z, y, x µm): a detection and a true
cell can then be paired when ``(dz/tz)² + (dy/ty)² + (dx/tx)² ≤ 1`` — inside an ellipsoid around
the true centre, for data whose axial resolution is coarser than the lateral one. The matching is
the one above on coordinates divided by the tolerance (so "least total distance" is measured in
tolerance units); the distances reported stay in µm. Three equal numbers are the isotropic case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from cvplgraph.errors import InputError

#: Largest (detections × true cells) of one connected group of candidate pairs: its dense cost matrix
#: (float64, 200 MB here) is what :func:`match` needs in memory.
MAX_COMPONENT = 25_000_000


@dataclass(frozen=True, eq=False)
class Matching:
    """The optimal one-to-one pairing of detections with true cells.

    Attributes
    ----------
    pairs : (k, 2) int64 array
        (detection index, true-cell index) of each pair, sorted by detection.
    distances : (k,) float64 array
        µm between the two centres of each pair, all ≤ ``tolerance_um`` (isotropic tolerance).
    n_found, n_true : int
        Number of detections and of true cells.
    tolerance_um : float, or (z, y, x) tuple of float for an anisotropic tolerance
    """

    pairs: np.ndarray
    distances: np.ndarray
    n_found: int
    n_true: int
    tolerance_um: float | tuple[float, float, float]

    @property
    def tp(self) -> int:
        """Matched detections (= matched true cells)."""
        return len(self.pairs)

    @property
    def fp(self) -> int:
        """Detections without a true cell."""
        return self.n_found - self.tp

    @property
    def fn(self) -> int:
        """True cells without a detection."""
        return self.n_true - self.tp

    @property
    def precision(self) -> float:
        """tp / n_found; with no detections 1.0 if there is no truth either, else 0.0."""
        return ratios(self.tp, self.n_found, self.n_true)[0]

    @property
    def recall(self) -> float:
        """tp / n_true; with no truth 1.0 if nothing was found either, else 0.0."""
        return ratios(self.tp, self.n_found, self.n_true)[1]

    @property
    def f1(self) -> float:
        """2 tp / (2 tp + fp + fn), the harmonic mean of precision and recall; 1.0 when both sets are empty."""
        return ratios(self.tp, self.n_found, self.n_true)[2]

    @property
    def count_error(self) -> int:
        """n_found - n_true (positive: too many cells counted)."""
        return self.n_found - self.n_true

    @property
    def count_error_pct(self) -> float | None:
        """100 * count_error / n_true; None when there is no truth."""
        return 100.0 * self.count_error / self.n_true if self.n_true else None


def ratios(tp: int, n_found: int, n_true: int) -> tuple[float, float, float]:
    """(precision, recall, F1) of ``tp`` pairs among ``n_found`` detections and ``n_true`` true
    cells, with the edge cases of the module docstring; pooled counts of several crops give the
    pooled scores."""
    fp, fn = n_found - tp, n_true - tp
    return (
        _ratio(tp, n_found, perfect=n_true == 0),
        _ratio(tp, n_true, perfect=n_found == 0),
        _ratio(2 * tp, 2 * tp + fp + fn, perfect=True),
    )


def match(found_um: np.ndarray, truth_um: np.ndarray, tolerance_um: float | Sequence[float] | np.ndarray) -> Matching:
    """Pair detections with true cells one-to-one: most pairs, then least total distance.

    Candidate pairs (distance ≤ tolerance) come from two k-d trees; each
    connected component of the candidate graph is solved on its own with
    :func:`scipy.optimize.linear_sum_assignment`, so memory grows with the
    largest component, not with ``n * m`` (components stay small while the
    tolerance is below the spacing of the cells). Components with a single detection
    or a single true cell take their nearest candidate without a solver.

    Parameters
    ----------
    found_um : (n, 3) array of float
        Detected centres, (z, y, x) µm.
    truth_um : (m, 3) array of float
        True centres, (z, y, x) µm, same frame as ``found_um``.
    tolerance_um : float or (z, y, x) sequence of float
        Largest distance at which a detection can count as a true cell, > 0
        (see :func:`default_tolerance_um`); three numbers: the semi-axes of the
        ellipsoid around a true centre within which a detection can be paired.

    Returns
    -------
    Matching
        Exact ties (two detections equally near one cell) are broken by the
        solver: which one is paired is unspecified, the counts are not.

    Raises
    ------
    InputError
        Arrays not (n, 3), non-finite coordinates, tolerance not finite and > 0,
        or a tolerance so large (against the spacing of the points) that one
        connected group needs more than ``MAX_COMPONENT`` detection × cell pairs.
    """
    found, truth = _points(found_um, "found_um"), _points(truth_um, "truth_um")
    axes = _tolerance(tolerance_um)
    tolerance: float | tuple[float, float, float] = axes[0] if len(set(axes)) == 1 else (axes[0], axes[1], axes[2])
    if isinstance(tolerance, tuple):  # an ellipsoid: match in units of the tolerance, report µm
        scale = np.asarray(tolerance)
        scaled = match(found / scale, truth / scale, 1.0)
        distances = np.linalg.norm(found[scaled.pairs[:, 0]] - truth[scaled.pairs[:, 1]], axis=1)
        return Matching(scaled.pairs, distances, scaled.n_found, scaled.n_true, tolerance)
    n, m = len(found), len(truth)
    empty = Matching(np.empty((0, 2), np.int64), np.empty(0), n, m, tolerance)
    if n == 0 or m == 0:
        return empty
    edges = cKDTree(found).sparse_distance_matrix(cKDTree(truth), tolerance, output_type="ndarray")
    if len(edges) == 0:
        return empty
    i, j, d = edges["i"].astype(np.int64), edges["j"].astype(np.int64), edges["v"].astype(np.float64)
    graph = coo_matrix((np.ones(len(i)), (i, n + j)), shape=(n + m, n + m))
    _, labels = connected_components(graph, directed=False)
    component = labels[i]
    n_found_in = np.bincount(labels[:n], minlength=labels.max() + 1)
    n_true_in = np.bincount(labels[n:], minlength=labels.max() + 1)
    single = (n_found_in[component] == 1) | (n_true_in[component] == 1)
    chosen = [_nearest_per_component(np.flatnonzero(single), component, d)]
    many = np.flatnonzero(~single)
    order = many[np.argsort(component[many], kind="stable")]
    starts = np.flatnonzero(np.diff(component[order], prepend=-1))
    groups = np.split(order, starts[1:]) if len(order) else []
    sizes = [(n_found_in[component[g[0]]], n_true_in[component[g[0]]]) for g in groups]
    if sizes and (largest := max(sizes, key=lambda s: s[0] * s[1]))[0] * largest[1] > MAX_COMPONENT:
        raise InputError(
            f"tolerance_um {tolerance}: links {largest[0]} detections and {largest[1]} true cells into one group, "
            f"too many to pair exactly (at most {MAX_COMPONENT:,} detection × cell pairs); expected a tolerance "
            "below the spacing of the cells (see default_tolerance_um)"
        )
    chosen += [_assign(group, i, j, d, tolerance) for group in groups]
    keep = np.concatenate(chosen)
    keep = keep[np.argsort(i[keep], kind="stable")]
    return Matching(np.column_stack([i[keep], j[keep]]), d[keep], n, m, tolerance)


def default_tolerance_um(radius_um: float | np.ndarray | pd.Series) -> float:
    """Matching tolerance for cells of this radius: the radius itself (half a typical diameter).

    A detection within one radius of a true centre lies inside that cell, and a
    detection in a neighbouring, non-overlapping cell (centres ≥ 2 radii apart)
    is at least one radius away from it, so one radius accepts the first and,
    except on the exact boundary, refuses the second. An array of radii (such
    as the ``radius_um`` column of the synthetic truth) gives its median.

    Raises
    ------
    InputError
        No radius, or a typical radius that is not finite and > 0.
    """
    radii = np.asarray(radius_um, dtype=np.float64).ravel()
    typical = float(np.median(radii)) if radii.size else math.nan
    if not (math.isfinite(typical) and typical > 0):
        raise InputError(f"radius_um {radius_um!r}: expected a finite cell radius > 0 µm")
    return typical


def region_errors(found: pd.Series, truth: pd.Series) -> pd.DataFrame:
    """Count errors per region, on the union of the regions of both (a missing region counts 0).

    Parameters
    ----------
    found, truth : Series
        Cells per region, indexed by region id or acronym (the same kind in both).

    Returns
    -------
    errors : DataFrame
        Columns ``region, found, true, error`` (= found - true) and
        ``error_pct`` (100 * error / true; NaN where true is 0), one row per
        region sorted by region, RangeIndex.

    Raises
    ------
    InputError
        A region listed twice, or ids on one side and acronyms on the other.
    """
    for name, series in (("found", found), ("truth", truth)):
        if series.index.has_duplicates:
            dup = series.index[series.index.duplicated()][0]
            raise InputError(f"{name}: region {dup!r} appears more than once; expected one count per region")
    numeric = [pd.api.types.is_numeric_dtype(s.index) for s in (found, truth)]
    if len(found) and len(truth) and numeric[0] != numeric[1]:
        raise InputError(
            f"found is indexed by {found.index[0]!r}…, truth by {truth.index[0]!r}…: "
            "expected region ids in both or acronyms in both"
        )
    regions = found.index.union(truth.index)
    f = found.reindex(regions, fill_value=0).to_numpy()
    t = truth.reindex(regions, fill_value=0).to_numpy()
    error = f - t
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(t != 0, 100.0 * error / np.where(t != 0, t, 1), np.nan)
    return pd.DataFrame({"region": regions.to_numpy(), "found": f, "true": t, "error": error, "error_pct": pct})


# --------------------------------------------------------------------------- helpers


def _tolerance(value: float | Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """One or three finite tolerances > 0, or an InputError naming the value."""
    try:
        axes = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)))
    except (TypeError, ValueError):
        axes = ()
    if len(axes) not in (1, 3) or not all(math.isfinite(a) and a > 0 for a in axes):
        raise InputError(
            f"tolerance_um {value!r}: expected a finite distance > 0 µm, or three (z, y, x) for an ellipsoid"
        )
    return axes


def _ratio(numerator: int, denominator: int, *, perfect: bool) -> float:
    if denominator:
        return numerator / denominator
    return 1.0 if perfect else 0.0


def _points(values: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(values, dtype=np.float64)
    if points.size == 0:
        return points.reshape(0, 3)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"{name} has shape {points.shape}: expected (n, 3) (z, y, x) µm")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{name} row {row} is {points[row].tolist()}: expected finite coordinates")
    return points


def _nearest_per_component(edges: np.ndarray, component: np.ndarray, d: np.ndarray) -> np.ndarray:
    """For components with one detection or one true cell: the shortest candidate edge of each."""
    if not len(edges):
        return edges
    edges = edges[np.lexsort((d[edges], component[edges]))]
    first = np.flatnonzero(np.diff(component[edges], prepend=-1))
    return edges[first]


def _assign(edges: np.ndarray, i: np.ndarray, j: np.ndarray, d: np.ndarray, tolerance: float) -> np.ndarray:
    """The chosen edges of one component: linear_sum_assignment with cost d - BIG on candidates, 0 elsewhere.

    With BIG > tolerance * (number of pairs possible), one more candidate pair
    always lowers the cost more than any change of distances can raise it, so
    the solver maximises the number of pairs first, then minimises their total
    distance. Non-candidate assignments (cost 0) are dropped.
    """
    rows, r = np.unique(i[edges], return_inverse=True)
    cols, c = np.unique(j[edges], return_inverse=True)
    big = 2.0 * tolerance * min(len(rows), len(cols)) + 1.0
    cost = np.zeros((len(rows), len(cols)))
    cost[r, c] = d[edges] - big
    a, b = linear_sum_assignment(cost)
    a, b = a[cost[a, b] < 0], b[cost[a, b] < 0]  # candidates only: d - BIG < 0 as d ≤ tolerance < BIG
    by_cell = np.argsort(r * len(cols) + c)
    return edges[by_cell[np.searchsorted((r * len(cols) + c)[by_cell], a * len(cols) + b)]]
