"""cvplgraph: declarative, cached, chunk-exact cell counting for lightsheet volumes.

>>> spec = cvplgraph.load_spec("specs/demo.toml")
>>> cvplgraph.plan(spec).to_compute()
>>> results = cvplgraph.run(spec)

The public names are resolved on first use (PEP 562), so ``import cvplgraph`` and
``cvplgraph --version`` import none of dask, xarray, pandas, zarr or napari.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cvplgraph._version import __version__
from cvplgraph.errors import CvplError, SpecError

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cvplgraph import ops, view
    from cvplgraph.api import run
    from cvplgraph.engine.execute import Results
    from cvplgraph.engine.plan import Plan
    from cvplgraph.engine.plan import make_plan as plan
    from cvplgraph.spec.model import Spec
    from cvplgraph.spec.parse import load_spec

#: public name → (module, attribute); attribute None = the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    "Plan": ("cvplgraph.engine.plan", "Plan"),
    "plan": ("cvplgraph.engine.plan", "make_plan"),
    "Results": ("cvplgraph.engine.execute", "Results"),
    "run": ("cvplgraph.api", "run"),
    "Spec": ("cvplgraph.spec.model", "Spec"),
    "load_spec": ("cvplgraph.spec.parse", "load_spec"),
    "ops": ("cvplgraph.ops", None),
    "view": ("cvplgraph.inspect.view", None),  # layers for napari; napari itself only in `cvplgraph view`
}

__all__ = [
    "CvplError",
    "Plan",
    "Results",
    "Spec",
    "SpecError",
    "__version__",
    "load_spec",
    "ops",
    "plan",
    "run",
    "view",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'cvplgraph' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
