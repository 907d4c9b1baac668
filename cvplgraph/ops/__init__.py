"""Built-in ops. Importing this package registers them all.

Each op is also a plain function: call it on numpy, dask or xarray arrays.
"""

from .components import connected_components
from .count import count
from .measure import centroids
from .threshold import threshold

__all__ = ["centroids", "connected_components", "count", "threshold"]
