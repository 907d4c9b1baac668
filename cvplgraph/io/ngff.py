"""OME-NGFF metadata of the images cvplgraph writes, and what marks a virtual one."""

from __future__ import annotations

from typing import Any

import numpy as np

from cvplgraph.types import PortType
from cvplgraph.values import DIMS, Geometry

NGFF_VERSION = "0.5"
#: The key, in a group's ``cvplgraph`` attributes, of a virtual volume's parameters (:mod:`cvplgraph.io.virtual`).
VIRTUAL = "virtual"


def ngff_metadata(geometry: Geometry, levels: int, kind: PortType, name: str) -> dict[str, Any]:
    datasets = []
    for level in range(levels):
        factor = np.array([2.0**level if s > 1 else 1.0 for s in geometry.shape])
        # a mean over f voxels is centred between them; a nearest (strided) label voxel is the first
        shift = np.zeros(3) if kind.is_label else (factor - 1) / 2 * np.asarray(geometry.scale)
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": (np.asarray(geometry.scale) * factor).tolist()},
                    {"type": "translation", "translation": (np.asarray(geometry.translation) + shift).tolist()},
                ],
            }
        )
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": d, "type": "space", "unit": "micrometer"} for d in DIMS],
                "datasets": datasets,
            }
        ],
    }
    if kind.is_label:
        ome["image-label"] = {"version": NGFF_VERSION}
    return {"ome": ome}


def virtual_params(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters of a virtual volume (:mod:`cvplgraph.io.virtual`) an OME-Zarr group's attributes
    hold, or None for a stored image."""
    ours = attrs.get("cvplgraph")
    found = ours.get(VIRTUAL) if isinstance(ours, dict) else None
    return found if isinstance(found, dict) else None


__all__ = ["NGFF_VERSION", "VIRTUAL", "ngff_metadata", "virtual_params"]
