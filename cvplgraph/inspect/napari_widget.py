"""cvplgraph's napari dock widget (npe2 manifest: ``cvplgraph/napari.yaml``): pick a spec, see its plan, run it.

*Plugins → Run a spec (cvplgraph)* docks :class:`SpecWidget`: a spec file, the region to run (a crop of
the input in voxels, by default :data:`CROP` voxels around its centre, or the whole selection the spec
names), the plan of that region (one row per node: op, cached / to compute and why, the words of
``cvplgraph plan``, with ``cvplgraph plan --explain`` as each row's tooltip), a Run button, a progress
bar and a status line. Loading, planning and running happen in napari thread workers, so the window
stays responsive; the figures of the compute reach the bar through :func:`forwarding_display`, a
:class:`~cvplgraph.engine.progress.Display` whose updates the worker yields to the GUI thread.

What runs in the workers (loading, planning, running in steps, handing out layers) is in
:mod:`cvplgraph.inspect.widget_runs`, free of Qt; this module is the widget and its picture.

The engine, dask and napari's threading are imported inside functions: napari lists the widget at
start-up and builds it only when asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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

from cvplgraph.errors import CvplError
from cvplgraph.inspect.widget_runs import (
    AXES,
    CROP,
    Box,
    Failed,
    Finished,
    Loaded,
    Planned,
    centre_crop,
    guarded,
    load_and_plan,
    plan_region,
    run_region,
    where,
)

if TYPE_CHECKING:  # the engine and napari load only when the widget works, not when napari lists it
    import napari.viewer
    import numpy as np

    from cvplgraph.engine.progress import Snapshot
    from cvplgraph.inspect.view import LayerData

log = logging.getLogger(__name__)

#: The title of the widget in napari's Plugins menu (``widgets: display_name`` in the manifest).
WIDGET_NAME = "Run a spec"


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
        self._start(guarded, (load_and_plan, str(path)), returned=lambda result: self._loaded(result, generation))

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
        self._start(guarded, (plan_region, self.loaded, self.crop()),
                    returned=lambda planned: self._planned(planned, generation))  # fmt: skip

    def run(self) -> None:
        """Run the region chosen (in a worker): the bar follows the compute, the layers come at its end."""
        if self.loaded is None or self.running:
            return
        self._generation += 1  # a plan still under way describes the cache before this run
        self.progress.setRange(0, 0)  # busy until the compute says how many tasks
        self.progress.setValue(0)
        crop = self.crop()
        self._say(f"running {'the whole spec' if crop is None else _box_text(crop)} on {where(self.loaded)} …")
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
        place = where(self.loaded) if self.loaded is not None else "?"
        self._say(f"{what}: {planned.compute} node(s) to compute, {planned.cached} cached; runs on {place}"
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


__all__ = ["WIDGET_NAME", "Shot", "SpecWidget", "screenshot"]
