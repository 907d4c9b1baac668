"""Image → Mask by a fixed intensity level."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..registry import op
from ..types import PortType
from ..values import like


@op("threshold", version=1, inputs={"image": PortType.Image}, output=PortType.Mask)
def threshold(image: xr.DataArray, *, level: float = 0.5) -> xr.DataArray:
    """Voxels brighter than ``level`` are foreground.

    Parameters
    ----------
    image : (Z, Y, X) DataArray of float32
        Brightness in [0, 1].
    level : float
        Foreground where ``image > level``.

    Returns
    -------
    mask : (Z, Y, X) DataArray of uint8
        1 for foreground, 0 for background. Voxel-wise, so exact on any chunking.
    """
    return like((image.data > np.float32(level)).astype(np.uint8), image)
