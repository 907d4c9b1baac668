"""A halo no volume can hold: the check every op with a neighbourhood runs before it builds its graph.

A parameter that sets an op's reach (a σ, a radius, a diameter) can be given a value whose halo is
wider than the whole volume (``sigma = 1e6``): dask's ``map_overlap`` then fails with its own
message and an op that reads clipped halos builds kernels no block can hold. The op passes its reach
as a function of the parameter; :func:`check_reach` stops with :class:`HaloTooLarge`, which says
which value fits, and the engine turns that into a spec problem at the node's field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from cvplgraph.errors import HaloTooLarge


def _too_wide(reach: Sequence[int], shape: Sequence[int]) -> int | None:
    """The first axis along which ``reach`` exceeds ``shape``, or None."""
    return next((a for a, (r, n) in enumerate(zip(reach, shape)) if r > n), None)


def _round_down(value: float) -> float:
    """``value`` rounded down to 3 significant digits."""
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return math.floor(value / step) * step


def check_reach(param: str, value: float, reach: Callable[[float], Sequence[int]], shape: Sequence[int]) -> None:
    """Raise :class:`HaloTooLarge` if ``reach(value)``, the op's halo in voxels per axis, exceeds ``shape``.

    ``reach`` must grow with the parameter; the largest value that fits is found by bisection.
    """
    depth = [int(r) for r in reach(value)]
    axis = _too_wide(depth, shape)
    if axis is None:
        return
    low, high = 0.0, float(value)
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if _too_wide(reach(middle), shape) is None else (low, middle)
    largest = _round_down(low) if low > 0 else None
    if largest is not None and _too_wide(reach(largest), shape) is not None:  # pragma: no cover - rounding down fits
        largest = None
    raise HaloTooLarge(param, value, largest, axis, depth[axis], shape[axis])


__all__ = ["check_reach"]
