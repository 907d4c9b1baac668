"""A conformance check plugin authors run on their ops: chunk invariance, dtype, shape.

>>> from cvplgraph.ops.testing import check_op
>>> check_op(my_op, {"image": volume}, params={"sigma": 2.0})

The op is applied to the whole array (one block) and to several chunkings,
including ones that do not divide the shape; every result must equal the
whole-array one (arrays exactly or within ``atol``; tables up to row order).
The output's dtype must fit its port type (Image float32, Mask uint8, Labels
integer) and an array output keeps the input's shape unless ``same_shape`` is
False. Labels are compared up to a permutation of ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cvplgraph.errors import CvplError
from cvplgraph.types import PortType
from cvplgraph.values import BlockCounts, Table, to_dataarray

DEFAULT_CHUNKINGS = ((7, 11, 13), (16, 16, 16), (5, 64, 9))


class ConformanceError(CvplError):
    """An op gave a result that depends on the chunking, or of the wrong type."""


def _evaluate(func: Callable[..., Any], arrays: Mapping[str, np.ndarray], chunks: Sequence[int] | None,
              params: Mapping[str, Any]) -> Any:  # fmt: skip
    args = [to_dataarray(da.from_array(a, chunks=chunks or a.shape), name) for name, a in arrays.items()]
    result = func(*args, **params)
    if isinstance(result, xr.DataArray):
        return result.data.compute(scheduler="sync")
    if isinstance(result, (Table, BlockCounts)):
        return result.compute(scheduler="sync")
    raise ConformanceError(f"the op returned {type(result).__name__}; expected a DataArray, Table or BlockCounts")


def _same(a: Any, b: Any, kind: PortType, atol: float) -> str | None:
    if isinstance(a, pd.DataFrame):
        cols = [c for c in a.columns if c != "label"]
        a, b = (f[cols].sort_values(cols[:3]).reset_index(drop=True) for f in (a, b))
        try:
            pd.testing.assert_frame_equal(a, b, atol=atol, rtol=0, check_dtype=False)
        except AssertionError as exc:
            return f"tables differ: {exc}"
        return None
    if a.shape != b.shape:
        return f"shape {b.shape} differs from the whole-array result's {a.shape}"
    if kind is PortType.Labels:
        pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
        if len(pairs) != len(np.unique(a)) or len(pairs) != len(np.unique(b)):
            return "labels are not a relabelling of the whole-array labels"
        return None
    if not np.allclose(a, b, atol=atol, rtol=0):
        return f"values differ by up to {np.abs(a.astype(float) - b.astype(float)).max():g}"
    return None


def check_op(
    op: Callable[..., Any],
    inputs: Mapping[str, np.ndarray],
    *,
    params: Mapping[str, Any] | None = None,
    chunkings: Sequence[Sequence[int]] = DEFAULT_CHUNKINGS,
    atol: float = 0.0,
    same_shape: bool = True,
) -> None:
    """Raise :class:`ConformanceError` unless ``op`` is chunk-invariant and well typed.

    Parameters
    ----------
    op : a function decorated with :func:`cvplgraph.registry.op`
    inputs : mapping of port name to (Z, Y, X) ndarray, in the op's port order
    params : keyword parameters for the op
    chunkings : chunk shapes to compare with the whole array
    atol : tolerance for float outputs (0 = exact)
    same_shape : whether an array output must keep the first input's shape
    """
    opdef = getattr(op, "opdef", None)
    if opdef is None:
        raise ConformanceError("not a registered op: decorate it with @cvplgraph.registry.op(...)")
    func, kind, params = opdef.func, opdef.output, dict(params or {})
    whole = _evaluate(func, inputs, None, params)
    if isinstance(whole, np.ndarray):
        expected = {PortType.Image: np.float32, PortType.Mask: np.uint8, PortType.Density: np.float32}.get(kind)
        if expected is not None and whole.dtype != expected:
            raise ConformanceError(f"{opdef.name}: a {kind} must be {np.dtype(expected)}, got {whole.dtype}")
        if kind is PortType.Labels and not np.issubdtype(whole.dtype, np.integer):
            raise ConformanceError(f"{opdef.name}: Labels must be integers, got {whole.dtype}")
        first = next(iter(inputs.values()))
        if same_shape and whole.shape != first.shape:
            raise ConformanceError(f"{opdef.name}: output shape {whole.shape} differs from the input's {first.shape}")
    for chunks in chunkings:
        problem = _same(whole, _evaluate(func, inputs, chunks, params), kind, atol)
        if problem:
            raise ConformanceError(f"{opdef.name} on chunks {tuple(chunks)}: {problem}")
