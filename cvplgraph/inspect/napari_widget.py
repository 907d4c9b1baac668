"""cvplgraph's napari dock widget (npe2 manifest: ``cvplgraph/napari.yaml``): pick a spec, see its plan, run it.

*Plugins → Run a spec (cvplgraph)* docks :class:`SpecWidget`: a spec file, the region to run (a crop of
the input in voxels, by default :data:`CROP` voxels around its centre, or the whole selection the spec
names), the plan of that region (one row per node: op, cached / to compute and why, the words of
``cvplgraph plan``, with ``cvplgraph plan --explain`` as each row's tooltip), a Run button, a progress
bar and a status line. Loading, planning and running happen in napari thread workers, so the window
stays responsive; the figures of the compute reach the bar through :func:`forwarding_display`, a
:class:`~cvplgraph.engine.progress.Display` whose updates the worker yields to the GUI thread.

The engine commits every node of a run once its one compute has returned (``engine/execute.py``: an
entry never describes an incomplete store). A crop preview therefore runs in :func:`steps` (a fused
chain, then each node after it), and each step's layers are added as soon as it ends; a whole run is one
fused compute like ``cvplgraph run``, its layers added when it ends. Layers are named after their nodes
(:func:`cvplgraph.inspect.view.layers`, what ``cvplgraph view`` shows) and replace the layers of the same
names a previous run added.

The engine, dask and napari's threading are imported inside functions: napari lists the widget at
start-up and builds it only when asked.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cvplgraph.errors import CvplError, SpecError

if TYPE_CHECKING:  # the engine and napari load only when the widget works, not when napari lists it
    import napari.viewer
    import numpy as np

    from cvplgraph.engine.plan import Plan
    from cvplgraph.engine.progress import Display, Snapshot
    from cvplgraph.inspect.view import LayerData
    from cvplgraph.spec.model import Spec

log = logging.getLogger(__name__)

#: The title of the widget in napari's Plugins menu (``widgets: display_name`` in the manifest).
WIDGET_NAME = "Run a spec"
#: The default crop, voxels (z, y, x) around the centre of the spec's selection: a slab thick enough for
#: cells to span several planes and wide enough to hold hundreds of them, small enough (16 M voxels) to
#: compute in seconds on a laptop's threads, so that a first click on Run answers quickly.
CROP = (64, 512, 512)
AXES = ("z", "y", "x")
#: ((start, stop) voxels per z, y, x), stop exclusive: the spec's ``[input] crop``.
Box = tuple[tuple[int, int], ...]


# --- what the workers compute (no Qt here) ----------------------------------------------------------


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


def _guarded(work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)``, or :class:`Failed` instead of an exception (workers never raise into napari)."""
    try:
        return work(*args)
    except Exception as exc:  # noqa: BLE001 - the status line says it
        return _failed(exc)


# --- the widget ---------------------------------------------------------------------------------------


class SpecWidget(QWidget):
    """Pick a spec, see its plan, run it on a crop or whole, watch the results appear as layers.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer the layers go to (napari passes it; a ``ViewerModel`` works too).
    parent : QWidget, optional
        Qt parent.

    Everything a user clicks has a method: :meth:`set_spec`, :meth:`set_crop`, :meth:`run`; :attr:`busy`
    says whether a worker is still running.
    """

    COLUMNS = ("node", "op", "status", "why")

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.loaded: Loaded | None = None
        self.workers: dict[Any, str] = {}  # running worker → "plan" or "run" (the reference keeps it alive)
        self._generation = 0  # a plan that arrives after the region changed again is dropped

        self.path = QLineEdit()
        self.path.setPlaceholderText("spec.toml")
        self.path.returnPressed.connect(lambda: self.set_spec(self.path.text()))
        browse = QPushButton("…")
        browse.setToolTip("choose a spec file")
        browse.clicked.connect(self._browse)
        top = QHBoxLayout()
        top.addWidget(QLabel("spec"))
        top.addWidget(self.path, 1)
        top.addWidget(browse)

        self.crop_choice = QRadioButton("crop")
        self.whole_choice = QRadioButton("whole (as the spec says)")
        self.crop_choice.setChecked(True)
        choices = QButtonGroup(self)
        choices.addButton(self.crop_choice)
        choices.addButton(self.whole_choice)
        self.crop_choice.toggled.connect(self._region_changed)
        self.spins: list[tuple[QSpinBox, QSpinBox]] = []
        grid = QGridLayout()
        grid.addWidget(self.crop_choice, 0, 0)
        grid.addWidget(QLabel("start"), 0, 1)
        grid.addWidget(QLabel("stop"), 0, 2)
        self.centre = QPushButton("centre")
        self.centre.setToolTip(f"the default crop: {' × '.join(map(str, CROP))} voxels around the centre")
        self.centre.clicked.connect(self._centre)
        grid.addWidget(self.centre, 0, 3)
        for i, axis in enumerate(AXES, start=1):
            pair = (QSpinBox(), QSpinBox())
            grid.addWidget(QLabel(f"  {axis}"), i, 0, Qt.AlignmentFlag.AlignRight)
            for j, spin in enumerate(pair, start=1):
                spin.setKeyboardTracking(False)  # one plan per value typed, not per digit
                spin.valueChanged.connect(self._crop_edited)
                grid.addWidget(spin, i, j)
            self.spins.append(pair)
        grid.addWidget(self.whole_choice, len(AXES) + 1, 0, 1, 4)
        self.units = QLabel("voxels of the input level")
        grid.addWidget(self.units, len(AXES) + 2, 0, 1, 4)
        box = QGroupBox("region")
        box.setLayout(grid)
        self._replan_soon = QTimer(self)  # arrows clicked in a row plan once, when they stop
        self._replan_soon.setSingleShot(True)
        self._replan_soon.setInterval(400)
        self._replan_soon.timeout.connect(self.refresh_plan)

        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(False)  # one line per node, cut short; the tooltip has the whole explanation
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        rows_header, header = self.table.verticalHeader(), self.table.horizontalHeader()
        if rows_header is not None:
            rows_header.setVisible(False)
        if header is not None:
            for column in range(len(self.COLUMNS) - 1):
                header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
            header.setStretchLastSection(True)

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tasks")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("choose a spec file")
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(box)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self._enable()

    # --- what a user does, as methods -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a worker (loading, planning or running) has not finished yet."""
        return bool(self.workers)

    @property
    def running(self) -> bool:
        """Whether a run is computing (the region and the spec are locked meanwhile)."""
        return "run" in self.workers.values()

    def set_spec(self, path: str | Path) -> None:
        """Load the spec at ``path``, choose the centre crop and plan it (in a worker)."""
        if self.running:
            self._say("a run is under way; choose another spec when it ends")
            return
        self.path.setText(str(path))
        self.loaded = None
        self.table.setRowCount(0)
        self._enable()
        self._say(f"loading {path} …")
        self._generation += 1
        generation = self._generation
        self._start(_guarded, (_load_and_plan, str(path)), returned=lambda result: self._loaded(result, generation))

    def set_crop(self, crop: Box | None) -> None:
        """Run on ``crop`` (``((z0, z1), (y0, y1), (x0, x1))`` voxels, stop exclusive) or, with None, on
        the whole selection of the spec; the plan follows."""
        if self.running:
            self._say("a run is under way; choose another region when it ends")
            return
        if crop is not None:
            self._set_box(crop)
        with _quiet(self.crop_choice, self.whole_choice):
            (self.crop_choice if crop is not None else self.whole_choice).setChecked(True)
        self._enable()
        self.refresh_plan()

    def crop(self) -> Box | None:
        """The crop the next run computes, or None for the whole selection of the spec."""
        if not self.crop_choice.isChecked():
            return None
        return tuple((start.value(), stop.value()) for start, stop in self.spins)

    def refresh_plan(self) -> None:
        """Plan the region chosen (in a worker); the table shows it when it comes."""
        self._replan_soon.stop()
        if self.loaded is None:
            return
        self._generation += 1
        generation = self._generation
        self._start(_guarded, (plan_region, self.loaded, self.crop()),
                    returned=lambda planned: self._planned(planned, generation))  # fmt: skip

    def run(self) -> None:
        """Run the region chosen (in a worker): the bar follows the compute, the layers come at its end."""
        if self.loaded is None or self.running:
            return
        self._generation += 1  # a plan still under way describes the cache before this run
        self.progress.setRange(0, 0)  # busy until the compute says how many tasks
        self.progress.setValue(0)
        crop = self.crop()
        self._say(f"running {'the whole spec' if crop is None else _box_text(crop)} on {_where(self.loaded)} …")
        self._start(run_region, (self.loaded, crop), kind="run", yielded=self._yielded, returned=self._ran)

    def rows(self) -> list[tuple[str, ...]]:
        """The table as shown: (node, op, status, why) per row."""
        items = [[self.table.item(r, c) for c in range(len(self.COLUMNS))] for r in range(self.table.rowCount())]
        return [tuple(item.text() if item is not None else "" for item in row) for row in items]

    # --- workers --------------------------------------------------------------------------------------

    def _start(self, func: Callable[..., Any], args: tuple[Any, ...], *, kind: str = "plan",
               yielded: Callable[[Any], None] | None = None, returned: Callable[[Any], None]) -> None:  # fmt: skip
        """Start ``func(*args)`` in a napari thread worker; its signals arrive in the GUI thread."""
        from napari.qt.threading import create_worker

        worker = create_worker(func, *args, _start_thread=False)
        if yielded is not None:
            worker.yielded.connect(yielded)  # type: ignore[union-attr]
        worker.returned.connect(returned)
        worker.finished.connect(lambda: self._finished(worker))
        self.workers[worker] = kind
        self._enable()
        worker.start()

    def _finished(self, worker: Any) -> None:
        self.workers.pop(worker, None)
        self._enable()

    def _loaded(self, result: tuple[Loaded, Planned] | Failed, generation: int) -> None:
        if generation != self._generation:  # another spec was chosen meanwhile
            return
        if isinstance(result, Failed):
            self._say(result.message)
            return
        loaded, planned = result
        self.loaded = loaded
        with _quiet(*[s for pair in self.spins for s in pair]):
            for (start, stop), size in zip(self.spins, loaded.shape):
                start.setRange(0, size - 1)
                stop.setRange(1, size)
        self._set_box(centre_crop(loaded.own))
        self.units.setText(f"voxels of input level {loaded.spec.input.level}, shape "
                           f"{' × '.join(map(str, loaded.shape))}")  # fmt: skip
        with _quiet(self.crop_choice, self.whole_choice):
            self.crop_choice.setChecked(True)
        self._enable()
        self._planned(planned, generation)

    def _planned(self, planned: Planned | Failed, generation: int) -> None:
        if generation != self._generation:
            return
        if isinstance(planned, Failed):
            self.table.setRowCount(0)
            self._say(planned.message)
            return
        self._show_rows(planned)
        crop = self.crop()
        what = "whole spec" if crop is None else _box_text(crop)
        where = _where(self.loaded) if self.loaded is not None else "?"
        self._say(f"{what}: {planned.compute} node(s) to compute, {planned.cached} cached; runs on {where}"
                  + _warned(planned.warnings))  # fmt: skip

    def _yielded(self, item: object) -> None:
        """A figure of the running compute, a message of the engine, the new plan, or a layer."""
        if isinstance(item, Planned):
            self._show_rows(item)
        elif isinstance(item, str):
            self._say(item)
        elif isinstance(item, tuple):
            self._add_layer(item)
        elif hasattr(item, "total"):  # a progress Snapshot
            snapshot: Snapshot = item  # type: ignore[assignment]
            if snapshot.total > 0:
                self.progress.setRange(0, snapshot.total)
                self.progress.setValue(min(snapshot.done, snapshot.total))

    def _ran(self, result: Finished | Failed) -> None:
        if self.progress.maximum() == 0:  # no task was counted (everything cached, or a failure before)
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if isinstance(result, Finished) else 0)
        if isinstance(result, Failed):
            self._say(result.message)
            return
        outputs = "; wrote " + ", ".join(result.outputs.values()) if result.outputs else ""
        self._say(f"done in {result.seconds:.1f} s; computed {', '.join(result.computed) or 'nothing'}; "
                  f"{result.layers} layer(s){outputs}" + _warned(result.warnings))  # fmt: skip

    # --- pieces ---------------------------------------------------------------------------------------

    def _add_layer(self, layer: LayerData) -> None:
        """Add a layer, or replace the layer of the same name where it stands (keeping whether it is shown)."""
        data, kwargs, kind = layer
        layers = self.viewer.layers
        old = next((existing for existing in layers if existing.name == kwargs["name"]), None)
        index = None
        if old is not None:
            index = layers.index(old)
            kwargs = {**kwargs, "visible": old.visible}
            layers.remove(old)
        new = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        if index is not None:
            layers.move(layers.index(new), index)

    def _show_rows(self, planned: Planned) -> None:
        self.table.setRowCount(len(planned.rows))
        for r, row in enumerate(planned.rows):
            for c, text in enumerate((row.node, row.op, row.status, row.why)):
                item = QTableWidgetItem(text)
                item.setToolTip(row.explanation)
                self.table.setItem(r, c, item)

    def _set_box(self, crop: Box) -> None:
        with _quiet(*[s for pair in self.spins for s in pair]):
            for (start, stop), (first, last) in zip(self.spins, crop):
                start.setValue(int(first))
                stop.setValue(int(last))

    def _centre(self) -> None:
        if self.loaded is not None:
            self.set_crop(centre_crop(self.loaded.own))

    def _region_changed(self) -> None:
        self._enable()
        self.refresh_plan()

    def _crop_edited(self) -> None:
        if self.loaded is not None and self.crop_choice.isChecked():
            self._replan_soon.start()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "cvplgraph spec", self.path.text(), "spec (*.toml)")
        if path:
            self.set_spec(path)

    def _enable(self) -> None:
        """Inputs are locked while a run computes; Run needs a loaded spec."""
        running = self.running
        for widget in (self.path, self.crop_choice, self.whole_choice, self.centre):
            widget.setEnabled(not running)
        for pair in self.spins:
            for spin in pair:
                spin.setEnabled(not running and self.crop_choice.isChecked())
        self.run_button.setEnabled(self.loaded is not None and not running)

    def _say(self, text: str) -> None:
        self.status.setText(text)
        self.status.setToolTip(text)


def _load_and_plan(path: str) -> tuple[Loaded, Planned]:
    """Load a spec and plan its default region, the centre crop (one worker: both read metadata)."""
    loaded = load(path)
    return loaded, plan_region(loaded, centre_crop(loaded.own))


def _where(loaded: Loaded) -> str:
    """Where a run of ``loaded`` computes, for the status line (see :func:`scheduler_of`)."""
    return f"the cluster of the spec ({loaded.cluster})" if loaded.cluster else "dask threads in this process"


def _box_text(crop: Box) -> str:
    return "crop " + ", ".join(f"{axis} {start}–{stop}" for axis, (start, stop) in zip(AXES, crop))


def _warned(warnings: list[str]) -> str:
    if not warnings:
        return ""
    more = f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else ""
    return f"; warning: {warnings[0]}{more}"


class _quiet:
    """Block the signals of some widgets while they are set from code (no plan per value set)."""

    def __init__(self, *widgets: QWidget) -> None:
        self.widgets = widgets

    def __enter__(self) -> None:
        for widget in self.widgets:
            widget.blockSignals(True)

    def __exit__(self, *_: object) -> None:
        for widget in self.widgets:
            widget.blockSignals(False)


# --- a picture of the widget at work --------------------------------------------------------------------


@dataclass(frozen=True)
class Shot:
    """A window screenshot of the widget after a run, and what the widget showed then."""

    picture: np.ndarray  # RGBA, the whole window
    layers: list[str]
    progress: tuple[int, int]  # (value, maximum) of the bar
    status: str
    rows: list[tuple[str, ...]]
    dock: tuple[int, int, int, int]  # the dock's (x, y, width, height) in the window, pixels


def screenshot(spec: str | Path, path: str | Path, *, crop: Box | None = None, size: tuple[int, int] = (1280, 800),
               timeout: float = 600.0) -> Shot:  # fmt: skip
    """Open a napari window, dock the widget from the Plugins menu's contribution, run ``spec`` on ``crop``
    (default: the centre crop), and save the whole window (canvas, layer list and widget) as a PNG.

    Needs a display (a desktop, or Xvfb: ``xvfb-run -a``) and a Qt binding. ``size``: the window's
    (width, height). The view is fitted to the input of the region run, at its middle plane.
    """
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="cvplgraph", show=True)
    try:
        viewer.window.resize(*size)
        dock, widget = viewer.window.add_plugin_dock_widget("cvplgraph", WIDGET_NAME)
        app = QApplication.instance()
        if app is None:  # napari.Viewer made one; without it nothing could have been shown
            raise CvplError("napari started no Qt application")

        def wait() -> None:
            deadline = time.monotonic() + timeout
            while widget.busy:
                if time.monotonic() > deadline:
                    raise CvplError(f"{spec}: the widget did not finish within {timeout:.0f} s")
                app.processEvents()
                time.sleep(0.02)
            app.processEvents()

        widget.set_spec(spec)
        wait()
        if widget.loaded is None:
            raise CvplError(f"{spec}: {widget.status.text()}")
        if crop is not None:
            widget.set_crop(crop)
            wait()
        widget.run()
        wait()
        shown = viewer.layers["input"]  # the region run: an atlas or block counts around it would dwarf it
        low, high = shown.extent.world
        viewer.dims.set_point(0, (low[0] + high[0]) / 2)
        try:
            viewer.reset_view(layers=[shown])
        except TypeError:  # a napari whose reset_view fits every layer, no choice
            viewer.reset_view()
        app.processEvents()
        picture = np.asarray(viewer.screenshot(str(path), canvas_only=False, flash=False))
        corner = dock.mapTo(dock.window(), dock.rect().topLeft())
        return Shot(picture, [layer.name for layer in viewer.layers], (widget.progress.value(),
                    widget.progress.maximum()), widget.status.text(), widget.rows(),
                    (corner.x(), corner.y(), dock.width(), dock.height()))  # fmt: skip
    finally:
        viewer.close()


__all__ = ["CROP", "WIDGET_NAME", "SpecWidget", "centre_crop", "load", "one_line", "region", "screenshot"]
