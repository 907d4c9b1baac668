"""What the napari dock widget (:mod:`cvplgraph.inspect.napari_widget`) asks of the engine, without Qt:
load a spec, plan a region of it (a crop or the whole), run it, in steps for a crop, handing out progress,
plans and layers as they come.

Everything here runs in napari's thread workers: it never raises (a :class:`Failed` carries the one
line the status shows) and yields what the GUI shows. The engine's compute blocks until it ends and
reports progress from its own draw thread, so each runs on a thread of its own while the worker's
generator yields every report as it comes (:func:`forwarding_display`).

The engine commits every node of a run once its one compute has returned (``engine/execute.py``: an
entry never describes an incomplete store). A crop preview therefore runs in :func:`steps` (a fused
chain, then each node after it), and each step's layers are handed out as soon as it ends; a whole run is
one fused compute like ``cvplgraph run``, its layers handed out when it ends.

The engine is imported inside functions: napari lists the widget at start-up and builds it only when asked.
"""

from __future__ import annotations

import functools
import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cvplgraph.errors import CvplError, SpecError

if TYPE_CHECKING:
    from cvplgraph.engine.plan import Plan
    from cvplgraph.engine.progress import Display, Snapshot
    from cvplgraph.spec.model import Spec

log = logging.getLogger(__name__)

#: The default crop, voxels (z, y, x) around the centre of the spec's selection: a slab thick enough for
#: cells to span several planes and wide enough to hold hundreds of them, small enough (16 M voxels) to
#: compute in seconds on a laptop's threads, so that a first click on Run answers quickly.
CROP = (64, 512, 512)
AXES = ("z", "y", "x")
#: ((start, stop) voxels per z, y, x), stop exclusive: the spec's ``[input] crop``.
Box = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Loaded:
    """A spec and the voxels its input level offers: what the crop boxes are chosen within."""

    spec: Spec
    shape: tuple[int, ...]  # the whole input level (z, y, x), before any crop
    own: Box  # what the spec itself selects: its [input] crop, or the whole level

    @property
    def cluster(self) -> str:
        """The cluster the spec names (its ``[cluster]`` address or factory), or "" for none."""
        return self.spec.cluster.address or self.spec.cluster.factory


@dataclass(frozen=True)
class Row:
    """One node of a plan as the table shows it."""

    node: str
    op: str
    status: str  # cached, to compute, input, skip: the words of `cvplgraph plan`
    why: str
    explanation: str  # `cvplgraph plan --explain NODE`, the row's tooltip


@dataclass(frozen=True)
class Planned:
    """A plan's rows and the figures the status line says."""

    rows: list[Row]
    compute: int
    cached: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Failed:
    """What a worker hands back instead of raising: the one line the status shows."""

    message: str


@dataclass(frozen=True)
class Finished:
    """The end of a run: what the status line says."""

    seconds: float
    computed: list[str]
    outputs: dict[str, str]
    layers: int
    warnings: list[str]


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for the status: cvplgraph's own message, or the type and message of anything else.

    A spec with several problems is one :class:`~cvplgraph.errors.SpecError` printed on several lines by
    the command line; here they are joined by semicolons.
    """
    if isinstance(exc, SpecError) and len(exc.problems) > 1:
        text = f"{len(exc.problems)} problems in the spec: " + "; ".join(str(p) for p in exc.problems)
    elif isinstance(exc, CvplError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def load(path: str) -> Loaded:
    """The spec at ``path`` and the shape of the input level it reads (metadata only)."""
    from cvplgraph.io.stores import read_input
    from cvplgraph.spec.parse import load_spec

    if not path.strip():
        raise CvplError("no spec chosen; expected a spec file (*.toml)")
    spec = load_spec(path)
    shape = tuple(int(n) for n in read_input(replace(spec.input, crop=None)).shape)
    if spec.input.crop:
        own = tuple((start, size if stop < 0 else stop) for (start, stop), size in zip(spec.input.crop, shape))
    else:
        own = tuple((0, size) for size in shape)
    return Loaded(spec, shape, own)


def centre_crop(own: Box, size: Sequence[int] = CROP) -> Box:
    """A box of ``size`` voxels (or less, where the selection is smaller) centred in ``own``."""
    box = []
    for (start, stop), n in zip(own, size):
        n = min(int(n), stop - start)
        first = start + (stop - start - n) // 2
        box.append((first, first + n))
    return tuple(box)


def region(loaded: Loaded, crop: Box | None) -> Spec:
    """The spec a run of the region computes: the spec as written (``crop`` None), or the spec on ``crop``.

    A crop replaces the spec's own ``[input] crop`` (both are voxels of the input level) and drops the
    spec's output files: a preview of a small region must not overwrite the tables of a whole run. Its
    nodes are cached under keys of their own (the input's fingerprint includes the crop).
    """
    if crop is None:
        return loaded.spec
    for axis, (start, stop), size in zip(AXES, crop, loaded.shape):
        if not 0 <= start < stop <= size:
            raise CvplError(f"crop {axis} = [{start}, {stop}]: expected 0 ≤ start < stop ≤ {size} (the input's "
                            f"{axis} size at level {loaded.spec.input.level})")  # fmt: skip
    spec = loaded.spec
    return replace(spec, input=replace(spec.input, crop=tuple(crop)), outputs=(), formats=())


def status_word(plan: Plan, name: str) -> str:
    """A node's status in the words of ``cvplgraph plan``: cached, to compute (partial), input, skip."""
    from cvplgraph.engine.status import Status

    p = plan.nodes[name]
    if p.status is Status.COMPUTE:
        return "to compute" if p.done is None else f"to compute ({p.done:.0%} done before)"
    return str(p.status)


def rows(plan: Plan) -> Planned:
    """The table of ``plan``: per node, the engine's reasons (or, for a cached node, the verdict of
    ``plan --explain``) and the whole explanation."""
    from cvplgraph.inspect.explain import explain

    out = []
    for name, p in plan.nodes.items():
        text = explain(plan, name)
        verdict = text.splitlines()[1].strip() if "\n" in text else ""
        out.append(Row(name, p.op, status_word(plan, name), "; ".join(p.reasons) or verdict, text))
    return Planned(out, len(plan.to_compute()), len(plan.cached()), list(plan.warnings))


def plan_region(loaded: Loaded, crop: Box | None) -> Planned:
    """The plan of a region (reads metadata: the input's chunk listing, the cache's manifest)."""
    from cvplgraph.engine.plan import make_plan

    return rows(make_plan(region(loaded, crop)))


def scheduler_of(loaded: Loaded) -> str | None:
    """dask's threads in napari's process, unless the spec names a cluster (None: the spec's ``[cluster]``).

    A run started from napari should not start worker processes of its own (a LocalCluster costs seconds
    and memory beside the viewer's); a spec that names a scheduler address or a factory asked for that
    cluster, and gets it.
    """
    return None if loaded.cluster else "threads"


_DONE = object()  # the end of a compute, on the queue of its figures


@functools.cache
def _forward_class() -> Callable[[Callable[[object], None]], Display]:
    """The :class:`Display` that forwards, defined on first use: the engine loads only when a run starts."""
    from cvplgraph.engine.progress import Display

    class Forward(Display):
        """Hands every snapshot and message to ``put`` instead of drawing a bar, five times a second."""

        def __init__(self, put: Callable[[object], None]) -> None:
            super().__init__("bar", stream=io.StringIO())  # not "quiet": the engine starts its draw thread
            self.interval = 0.2
            self.put = put

        def update(self, s: Snapshot, final: bool = False) -> None:
            if final:
                self.last = s  # the run's report reads its I/O figures from here
            self.put(s)

        def message(self, text: str) -> None:
            self.put(text)

        def close(self) -> None:
            pass

    return Forward


def forwarding_display(put: Callable[[object], None]) -> Display:
    """A Display whose figures (:class:`~cvplgraph.engine.progress.Snapshot`) and messages go to ``put``."""
    return _forward_class()(put)


def steps(plan: Plan) -> list[list[str]]:
    """The nodes ``plan`` computes, in the steps a crop preview runs them: each fused group whole (its nodes
    are produced by the same tasks, so they finish together), every other node alone, in graph order."""
    from cvplgraph.engine.compile import nodes_in_order
    from cvplgraph.engine.fuse import find_groups

    group_of = {name: group.nodes for group in find_groups(plan) for name in group.nodes}
    out: list[list[str]] = []
    seen: set[str] = set()
    for node in nodes_in_order(plan.graph):
        if node.name in seen or node.name not in plan.to_compute():
            continue
        unit = [n for n in group_of.get(node.name, [node.name]) if n not in seen]
        seen.update(unit)
        out.append(unit)
    return out


def step_spec(spec: Spec, plan: Plan, step: Sequence[str]) -> Spec:
    """``spec`` cut down to the nodes of ``step`` and what they read: its nodes keep their keys (a key is
    the op, its parameters and its inputs' keys), so what it caches is what the whole region reads."""
    import networkx as nx

    keep = set(step).union(*(nx.ancestors(plan.graph, name) for name in step))
    return replace(spec, nodes=tuple(n for n in spec.nodes if n.name in keep), outputs=(), formats=())


def run_region(loaded: Loaded, crop: Box | None) -> Generator[object, None, Finished | Failed]:
    """Run a region, yielding what the GUI shows: progress snapshots, messages, new plans, then layers.

    A **crop** is a preview: it runs in :func:`steps` (a fused chain, then each node after it), and the
    layers of a step are yielded when it finishes, so they appear while the rest computes; it is not
    recorded (the record would name a spec file whose text is not what ran). The **whole** spec runs as
    ``cvplgraph run`` does: one fused compute, recorded (``<cache>/runs/<id>.json``: ``cvplgraph report``
    and the reader's *open the cache folder* use it), its layers yielded when it ends.

    The engine's compute blocks until it ends and reports progress from its own draw thread, so each runs
    on a thread of its own while this generator (napari's worker) yields each report as it comes.
    """
    from cvplgraph.engine.plan import make_plan

    try:
        spec = region(loaded, crop)
        scheduler = scheduler_of(loaded)
        shown: set[str] = set()
        started, computed, warnings = time.monotonic(), [], []
        outputs: dict[str, str] = {}
        plan = make_plan(spec)
        # a crop in steps (none when all is cached); the whole spec as one run (it may only write outputs)
        units: list[list[str] | None] = list(steps(plan)) if crop is not None else [None]
        for number, unit in enumerate(units, start=1):
            if len(units) > 1:
                yield f"step {number} of {len(units)}: {', '.join(unit or [])} …"
            part = spec if unit is None else step_spec(spec, plan, unit)
            outcome = yield from _compute_in_thread(part, unit is None, scheduler)
            if "error" in outcome:
                return _failed(outcome["error"])
            results = outcome["results"]
            computed += list(results.report.computed)
            outputs.update(results.report.outputs)
            warnings += [w for w in outcome["warnings"] if w not in warnings]
            yield from _new_layers(spec, unit, shown)
        if not units:
            yield from _new_layers(spec, None, shown)
        return Finished(time.monotonic() - started, computed, outputs, len(shown), warnings)
    except Exception as exc:  # noqa: BLE001 - the status line says it; napari would pop up a traceback
        return _failed(exc)


def _new_layers(spec: Spec, unit: Sequence[str] | None, shown: set[str]) -> Generator[object, None, None]:
    """The new plan's rows, then the layers not shown yet: at first every one of the region (input, atlases,
    cached nodes), after that the nodes of ``unit`` (None: all)."""
    from cvplgraph.engine.plan import make_plan
    from cvplgraph.inspect.view import layers

    plan = make_plan(spec)
    yield rows(plan)
    first = not shown
    for layer in layers(spec, plan=plan).data:
        name = layer[1]["name"]
        if name not in shown and (first or unit is None or name in unit):
            shown.add(name)
            yield layer  # one at a time: each is added when it comes


def _compute_in_thread(spec: Spec, record: bool, scheduler: str | None) -> Generator[object, None, dict[str, Any]]:
    """Execute ``spec`` on a thread of its own, yielding its progress reports; returns its outcome."""
    reports: queue.SimpleQueue[object] = queue.SimpleQueue()
    outcome: dict[str, Any] = {}
    display = forwarding_display(reports.put)
    thread = threading.Thread(target=_compute, args=(spec, record, scheduler, display, outcome, reports),
                              name="cvplgraph-widget-run", daemon=True)  # fmt: skip
    thread.start()
    while (report := reports.get()) is not _DONE:
        yield report
    thread.join()
    return outcome


def _compute(spec: Spec, record: bool, scheduler: str | None, display: Display, outcome: dict[str, Any],
             reports: queue.SimpleQueue[object]) -> None:  # fmt: skip
    """Execute ``spec`` (recording the run when ``record``), leaving its results or error in ``outcome``."""
    try:
        from cvplgraph.engine.plan import make_plan

        plan = make_plan(spec)
        if record:
            from cvplgraph.inspect.runlog import run_and_record

            run = run_and_record(plan, scheduler=scheduler, progress=display)
            outcome["results"], outcome["warnings"] = run.results, list(run.record["warnings"])
        else:
            from cvplgraph.engine.execute import execute

            outcome["results"] = execute(plan, scheduler=scheduler, progress=display)
            outcome["warnings"] = list(outcome["results"].plan.warnings)
    except BaseException as exc:  # noqa: BLE001 - handed to the worker, which says it
        outcome["error"] = exc
    finally:
        reports.put(_DONE)


def _failed(exc: BaseException) -> Failed:
    """The one line for ``exc``; anything that is not cvplgraph's own error keeps its traceback in the log."""
    message = one_line(exc)
    if isinstance(exc, CvplError):
        log.warning("cvplgraph widget: %s", message)
    else:
        log.warning("cvplgraph widget: %s", message, exc_info=exc)
    return Failed(message)


def guarded(work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)``, or :class:`Failed` instead of an exception (workers never raise into napari)."""
    try:
        return work(*args)
    except Exception as exc:  # noqa: BLE001 - the status line says it
        return _failed(exc)


def load_and_plan(path: str) -> tuple[Loaded, Planned]:
    """Load a spec and plan its default region, the centre crop (one worker: both read metadata)."""
    loaded = load(path)
    return loaded, plan_region(loaded, centre_crop(loaded.own))


def where(loaded: Loaded) -> str:
    """Where a run of ``loaded`` computes, for the status line (see :func:`scheduler_of`)."""
    return f"the cluster of the spec ({loaded.cluster})" if loaded.cluster else "dask threads in this process"


__all__ = [
    "AXES", "CROP", "Box", "Failed", "Finished", "Loaded", "Planned", "Row", "centre_crop", "forwarding_display",
    "guarded", "load", "load_and_plan", "one_line", "plan_region", "region", "rows", "run_region", "scheduler_of",
    "step_spec", "steps", "where",
]  # fmt: skip
