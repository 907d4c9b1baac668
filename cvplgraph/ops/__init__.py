"""Built-in ops. Importing this package registers them all.

Each op is also a plain function: call it on numpy, dask or xarray arrays.
"""

from cvplgraph.ops.blobs import blobs
from cvplgraph.ops.cells import detect_cells
from cvplgraph.ops.classify import pixel_classifier
from cvplgraph.ops.classify_objects import classify_objects
from cvplgraph.ops.components import connected_components
from cvplgraph.ops.count import count, density, filter_size
from cvplgraph.ops.filters import background_subtract, downsample, gaussian, normalize
from cvplgraph.ops.measure import centroids
from cvplgraph.ops.regions import cell_regions, region_counts, region_density_map
from cvplgraph.ops.threshold import local_threshold, otsu, threshold
from cvplgraph.ops.watershed import watershed

__all__ = [
    "background_subtract",
    "blobs",
    "cell_regions",
    "centroids",
    "classify_objects",
    "connected_components",
    "count",
    "density",
    "detect_cells",
    "downsample",
    "filter_size",
    "gaussian",
    "local_threshold",
    "normalize",
    "otsu",
    "pixel_classifier",
    "region_counts",
    "region_density_map",
    "threshold",
    "watershed",
]
