"""cvplgraph: declarative, cached, chunk-exact cell counting for lightsheet volumes."""

from .errors import CvplError, SpecError

__version__ = "0.1.0"
__all__ = ["CvplError", "SpecError", "__version__"]
