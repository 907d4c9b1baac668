"""Port types: what flows along an edge of the graph.

A port type is a name with a storage kind. Types are checked when a spec
compiles; an op input may accept several types (``Points | Labels``).
"""

from __future__ import annotations

import enum


class PortType(enum.Enum):
    """The kinds of value that flow between nodes."""

    Image = "Image"  # float32 brightness in [0, 1], (z, y, x) dask array
    Mask = "Mask"  # uint8 0/1 segmentation
    Labels = "Labels"  # int32 instance ids, 0 = background, unique over the volume
    Points = "Points"  # one row per object: z, y, x (voxels and µm) + features
    BlockCounts = "BlockCounts"  # object count per block of a grid
    Density = "Density"  # cells per mm³ on a coarse grid
    Atlas = "Atlas"  # region-id label map + structure table
    RegionTable = "RegionTable"  # per-region counts, volumes, densities

    def __str__(self) -> str:
        return self.value

    @property
    def is_array(self) -> bool:
        """True for types carried as (z, y, x) arrays and stored as OME-Zarr."""
        return self in ARRAY_TYPES

    @property
    def is_label(self) -> bool:
        """True for integer segmentations (stored as OME-Zarr labels)."""
        return self in (PortType.Mask, PortType.Labels)


ARRAY_TYPES = frozenset({PortType.Image, PortType.Mask, PortType.Labels, PortType.Density})


def format_types(types: frozenset[PortType] | tuple[PortType, ...]) -> str:
    """``Points | Labels`` style text for a set of accepted types."""
    return " | ".join(sorted(t.value for t in types))
