"""Built-in ops. Importing this package registers them all.

Each op is also a plain function: call it on numpy, dask or xarray arrays.
"""

from .blobs import blobs
from .classify import pixel_classifier
from .components import connected_components
from .count import count, density, filter_size
from .filters import background_subtract, downsample, gaussian, normalize
from .measure import centroids
from .regions import cell_regions, region_counts, region_density_map
from .threshold import local_threshold, otsu, threshold
from .watershed import watershed

__all__ = [
    "background_subtract",
    "blobs",
    "cell_regions",
    "centroids",
    "connected_components",
    "count",
    "density",
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
