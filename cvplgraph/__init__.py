"""cvplgraph: declarative, cached, chunk-exact cell counting for lightsheet volumes.

>>> spec = cvplgraph.load_spec("specs/demo.toml")
>>> cvplgraph.plan(spec).to_compute()
>>> results = cvplgraph.run(spec)
"""

from . import view  # layers for napari; napari itself is imported only by `cvplgraph view`
from .errors import CvplError, SpecError
from .execute import Results, run
from .plan import Plan
from .plan import make_plan as plan
from .spec import Spec, load_spec

__version__ = "0.1.0"
__all__ = ["CvplError", "Plan", "Results", "Spec", "SpecError", "__version__", "load_spec", "plan", "run", "view"]
