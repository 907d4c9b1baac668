"""The Python entry points beside the command line: :func:`run` (what ``cvplgraph.run`` is)."""

from __future__ import annotations

from typing import Any

from cvplgraph.engine.execute import Results, execute
from cvplgraph.engine.plan import make_plan
from cvplgraph.inspect.view import show
from cvplgraph.spec.model import Spec


def run(
    spec: Spec,
    *,
    client: Any = None,
    scheduler: str | None = None,
    viewer: Any = None,
    progress: bool = False,
    fuse: bool = True,
) -> Results:
    """Compute what is not cached, write the declared outputs, return every node's value.

    Parameters
    ----------
    spec : Spec
        From :func:`cvplgraph.load_spec`.
    client : distributed.Client, optional
        Run on this client. Otherwise ``spec.cluster.address`` or a LocalCluster.
    scheduler : str, optional
        A scheduler address, or ``"threads"``/``"sync"`` for dask's local schedulers.
    viewer : napari viewer, optional
        After the run, add the input, the atlases and every cached node as layers
        (see :mod:`cvplgraph.inspect.view`); a ``napari.components.ViewerModel`` works too.
    fuse : bool
        Run chains of ops (e.g. threshold → connected_components → centroids) as one task per block
        (the default); ``False`` lowers op by op. The results are the same bytes either way.
    """
    results = execute(make_plan(spec), client=client, scheduler=scheduler, progress=progress, fuse=fuse)
    if viewer is not None:
        show(viewer, spec)
    return results
