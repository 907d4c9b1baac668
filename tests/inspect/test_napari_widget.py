"""cvplgraph's napari dock widget: its manifest entry, the widget driven from code on a headless
``ViewerModel`` (plan, crop run in a thread worker, progress, layers, errors), and a real napari window
with the widget docked, on a virtual screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SPEC as CONFTEST_SPEC
from napari.components import ViewerModel

from cvplgraph.synth.volume import SynthParams, write_synthetic

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

#: The shared spec (threshold → components → centroids → count, with outputs) over the whole volume.
SPEC = CONFTEST_SPEC.format(url="image.ome.zarr", level=0.3)
NODES = ["mask", "cells", "centroids", "counts"]
SHAPE = (48, 64, 64)
#: The crop the tests run: voxels (start, stop) per z, y, x.
CROP = ((8, 40), (16, 64), (0, 48))

_APP: list[Any] = []  # the QApplication of this process, kept alive for every test of the module
_SLOT_ERRORS: list[str] = []  # exceptions raised in Qt slots (PyQt aborts the process on them otherwise)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh folder with a small synthetic volume and the shared spec over it (nothing cached)."""
    write_synthetic(str(tmp_path / "image.ome.zarr"), SynthParams(shape=SHAPE, chunks=(16, 32, 32), seed=2))
    (tmp_path / "spec.toml").write_text(SPEC)
    return tmp_path


@pytest.fixture(scope="module")
def qt() -> Iterator[Any]:
    """A QApplication for widgets in this process: the one that exists, else one on Qt's offscreen platform
    (no screen needed). Skips with the reason where Qt cannot start. An exception in a slot is recorded
    (and fails the test, see :func:`_settle`) instead of aborting the process as PyQt does by default."""
    try:
        from qtpy.QtWidgets import QApplication
    except Exception as exc:  # noqa: BLE001 - qtpy raises its own error when no binding is installed
        pytest.skip(f"no Qt binding: {exc}")
    app = QApplication.instance()
    if app is None:
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        probe = subprocess.run([sys.executable, "-c", "from qtpy.QtWidgets import QApplication, QWidget; "
                                "app = QApplication([]); QWidget().show()"], env=env, capture_output=True, text=True,
                               timeout=120)  # fmt: skip  # a platform Qt cannot load aborts the process: probe first
        if probe.returncode != 0:
            lines = (probe.stderr or probe.stdout).strip().splitlines()
            pytest.skip(f"Qt cannot start offscreen here: {lines[-1] if lines else probe.returncode}")
        saved = os.environ.get("QT_QPA_PLATFORM")
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # read once, when the application starts
        try:
            app = QApplication([])
        finally:  # later subprocesses (real windows on Xvfb) must not inherit it
            if saved is None:
                os.environ.pop("QT_QPA_PLATFORM", None)
            else:
                os.environ["QT_QPA_PLATFORM"] = saved
    _APP.append(app)
    hook = sys.excepthook
    sys.excepthook = lambda kind, exc, tb: _SLOT_ERRORS.append("".join(traceback.format_exception(kind, exc, tb)))
    yield app
    sys.excepthook = hook


def _settle(widget: Any, timeout: float = 120.0) -> None:
    """Process Qt events until the widget's workers are done (their signals reach the GUI thread here)."""
    app = _APP[0]
    deadline = time.monotonic() + timeout
    while widget.busy:
        if time.monotonic() > deadline:
            pytest.fail(f"the widget was still working after {timeout:.0f} s: {widget.status.text()}")
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    if _SLOT_ERRORS:
        pytest.fail("an exception in a Qt slot:\n" + _SLOT_ERRORS.pop())


def _widget(viewer: ViewerModel, spec: Path) -> Any:
    from cvplgraph.inspect.napari_widget import SpecWidget

    widget = SpecWidget(viewer)
    widget.set_spec(spec)
    _settle(widget)
    return widget


# --- the manifest -------------------------------------------------------------------------------------


def test_the_widget_is_a_valid_contribution_napari_lists() -> None:
    import npe2
    from napari.plugins import _initialize_plugins

    from cvplgraph.inspect.napari_widget import WIDGET_NAME, SpecWidget

    checked = subprocess.run([sys.executable, "-m", "npe2", "validate", "cvplgraph", "--imports"],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stdout + checked.stderr
    _initialize_plugins()  # what napari does at start-up
    manifest = npe2.PluginManager.instance().get_manifest("cvplgraph")
    widgets = manifest.contributions.widgets or []
    assert [(w.command, w.display_name) for w in widgets] == [("cvplgraph.spec_widget", WIDGET_NAME)]
    listed = [(c.plugin_name, c.display_name) for c in npe2.PluginManager.instance().iter_widgets()]
    assert ("cvplgraph", WIDGET_NAME) in listed
    assert widgets[0].get_callable() is SpecWidget
    from napari.plugins._npe2 import get_widget_contribution  # what Plugins → Run a spec calls

    assert get_widget_contribution("cvplgraph", WIDGET_NAME) == (SpecWidget, WIDGET_NAME)


def test_importing_the_widget_loads_neither_the_engine_nor_dask_nor_napari() -> None:
    """napari lists the widget at start-up; the module's import must stay cheap."""
    probe = "import sys, cvplgraph.inspect.napari_widget as w; print(sorted(m for m in sys.modules if m in " \
            "('dask', 'napari', 'zarr', 'cvplgraph.engine.plan', 'cvplgraph.inspect.view')))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- the widget, driven from code --------------------------------------------------------------------


def test_the_plan_says_what_will_run_and_why(qt: Any, project: Path) -> None:
    from cvplgraph.engine.plan import make_plan
    from cvplgraph.inspect.explain import explain
    from cvplgraph.inspect.widget_runs import CROP as DEFAULT
    from cvplgraph.inspect.widget_runs import region
    from cvplgraph.spec.parse import load_spec

    widget = _widget(ViewerModel(), project / "spec.toml")
    assert widget.loaded is not None, widget.status.text()
    assert widget.crop() == tuple((0, n) for n in SHAPE)  # the default crop, centred, no larger than the volume
    assert all(size >= n for size, n in zip(DEFAULT, SHAPE))
    widget.set_crop(CROP)
    _settle(widget)
    assert widget.crop() == CROP
    rows = {row[0]: row for row in widget.rows()}
    assert list(rows) == ["input", *NODES]
    assert rows["input"][1:3] == ("input", "input")
    assert [rows[n][1] for n in NODES] == ["threshold", "connected_components", "centroids", "count"]
    assert {rows[n][2] for n in NODES} == {"to compute"} and {rows[n][3] for n in NODES} == {"new"}
    assert "4 node(s) to compute, 0 cached" in widget.status.text() and "dask threads" in widget.status.text()
    # each row's tooltip is `cvplgraph plan --explain NODE` for the region chosen
    plan = make_plan(region(widget.loaded, CROP))
    for r, name in enumerate(rows):
        assert widget.table.item(r, 0).toolTip() == explain(plan, name)
    # the whole spec after the crop ran: every node to compute, for the reason the engine gives
    widget.run()
    _settle(widget)
    widget.set_crop(None)
    _settle(widget)
    whole = make_plan(load_spec(project / "spec.toml"))
    assert [row[2:] for row in widget.rows()[1:]] == [("to compute", "; ".join(whole.nodes[n].reasons)) for n in NODES]
    assert "input `image` changed" in widget.rows()[1][3]  # the crop's entries are the newest for these nodes


def test_a_crop_runs_in_a_worker_and_its_nodes_appear_as_layers(qt: Any, project: Path) -> None:
    from cvplgraph.engine.plan import make_plan
    from cvplgraph.inspect.view import layers
    from cvplgraph.spec.parse import load_spec

    viewer = ViewerModel()
    widget = _widget(viewer, project / "spec.toml")
    widget.set_crop(CROP)
    _settle(widget)
    values: list[int] = []
    widget.progress.valueChanged.connect(values.append)
    widget.run()
    # run() returned at once: the compute is in a thread worker, and what it yields reaches the viewer
    # only through the event loop, which has not turned yet
    assert widget.running and not widget.run_button.isEnabled() and len(viewer.layers) == 0
    _settle(widget)
    assert not widget.running and widget.run_button.isEnabled()
    assert widget.status.text().startswith("done in"), widget.status.text()
    assert widget.progress.maximum() > 1 and widget.progress.value() == widget.progress.maximum()  # every task
    assert values and values[-1] == widget.progress.maximum()
    assert {row[0]: row[2] for row in widget.rows()} == {"input": "input", **dict.fromkeys(NODES, "cached")}

    spec = load_spec(project / "spec.toml")
    cropped = replace(spec, input=replace(spec.input, crop=CROP))
    expected = layers(cropped)
    assert [layer.name for layer in viewer.layers] == ["input", *NODES]
    assert not any("labels/" in layer.name for layer in viewer.layers)
    for data, kwargs, kind in expected.data:
        layer = viewer.layers[kwargs["name"]]
        assert type(layer).__name__.lower() == kind, kwargs["name"]
        np.testing.assert_array_equal(np.asarray(layer.data), np.asarray(data), err_msg=kwargs["name"])
        np.testing.assert_allclose(layer.scale, kwargs["scale"], err_msg=kwargs["name"])
        np.testing.assert_allclose(layer.translate, kwargs["translate"], err_msg=kwargs["name"])
        if kind == "points":
            pd.testing.assert_frame_equal(layer.features.reset_index(drop=True), kwargs["features"])
    assert len(viewer.layers["centroids"].data) > 10
    # only the crop was computed: its grid, where it lies, and nothing of the whole spec
    crop_shape = tuple(stop - start for start, stop in CROP)
    origin = np.array([start for start, _ in CROP]) * np.array(viewer.layers["input"].scale)
    for name in ("input", "mask", "cells"):
        assert viewer.layers[name].data.shape == crop_shape, name
        np.testing.assert_allclose(viewer.layers[name].translate, origin, err_msg=name)
    assert make_plan(spec).to_compute() == NODES
    assert not (project / "results").exists()  # a crop is a preview: the spec's output files are not written
    assert not (project / "cache" / "runs").exists()  # nor recorded as a run of the spec


def test_a_whole_run_replaces_the_layers_writes_the_outputs_and_is_recorded(qt: Any, project: Path) -> None:
    viewer = ViewerModel()
    widget = _widget(viewer, project / "spec.toml")
    widget.set_crop(CROP)
    _settle(widget)
    widget.run()
    _settle(widget)
    viewer.layers["cells"].visible = False  # the user hides a layer: a new run keeps it hidden
    widget.set_crop(None)
    _settle(widget)
    widget.run()
    _settle(widget)
    assert "wrote" in widget.status.text(), widget.status.text()
    assert [layer.name for layer in viewer.layers] == ["input", *NODES]  # replaced where they stood, no "mask [1]"
    assert viewer.layers["mask"].data.shape == SHAPE and not viewer.layers["cells"].visible
    assert (project / "results" / "centroids.csv").is_file() and (project / "results" / "counts.csv").is_file()
    assert len(list((project / "cache" / "runs").glob("*.json"))) == 1  # recorded like `cvplgraph run`
    table = pd.read_csv(project / "results" / "centroids.csv")
    assert len(table) == len(viewer.layers["centroids"].data)


def test_errors_are_one_line_in_the_status_never_a_popup(qt: Any, project: Path, monkeypatch: Any) -> None:
    import shutil

    from napari.utils.notifications import notification_manager

    popups: list[Any] = []
    monkeypatch.setattr(notification_manager, "receive_error", lambda *args, **kwargs: popups.append(args))
    viewer = ViewerModel()

    widget = _widget(viewer, project / "missing.toml")
    assert "missing.toml" in widget.status.text() and "cannot read the spec" in widget.status.text()
    assert widget.loaded is None and not widget.run_button.isEnabled() and widget.rows() == []

    bad = SPEC.replace('op = "threshold"', 'op = "thresold"').replace("block = [32, 128, 128]", "block = [32, 128]")
    (project / "bad.toml").write_text(bad)
    widget.set_spec(project / "bad.toml")
    _settle(widget)
    text = widget.status.text()
    assert text.startswith("2 problems in the spec:") and "thresold" in text and "\n" not in text, text

    widget.set_spec(project / "spec.toml")
    _settle(widget)
    assert widget.loaded is not None, widget.status.text()
    widget.set_crop(((20, 10), (0, 64), (0, 64)))
    _settle(widget)
    assert widget.status.text().startswith("crop z = [20, 10]: expected 0 ≤ start < stop ≤ 48"), widget.status.text()
    assert widget.rows() == []
    widget.run()
    _settle(widget)
    assert widget.status.text().startswith("crop z = [20, 10]"), widget.status.text()

    widget.set_crop(CROP)
    _settle(widget)
    shutil.rmtree(project / "image.ome.zarr")  # the input goes away between planning and running
    widget.run()
    _settle(widget)
    text = widget.status.text()
    assert "image.ome.zarr" in text and "\n" not in text and not text.startswith("done"), text
    assert widget.run_button.isEnabled() and len(viewer.layers) == 0
    assert popups == []  # napari would have shown a traceback for an error escaping a worker


# --- a real napari window with the widget docked (Xvfb) ------------------------------------------------

#: Docks the widget from its contribution and runs the crop (the screenshot of docs/images/napari-widget.png),
#: then the same window without the widget; prints what the widget showed.
SCRIPT = """
import json, sys
import napari
from cvplgraph.inspect.napari_widget import screenshot

spec, out, crop = sys.argv[1], sys.argv[2], tuple(map(tuple, json.loads(sys.argv[3])))
shot = screenshot(spec, out + "/widget.png", crop=crop, size=(1200, 800))
viewer = napari.Viewer(show=True)
viewer.window.resize(1200, 800)
viewer.open(spec, plugin="cvplgraph")
viewer.screenshot(out + "/plain.png", canvas_only=False, flash=False)
viewer.close()
print(json.dumps({"layers": shot.layers, "progress": shot.progress, "status": shot.status, "rows": shot.rows,
                  "dock": shot.dock}))
"""


def test_the_widget_docked_in_a_napari_window(display: list[str], project: Path, tmp_path: Path) -> None:
    import matplotlib.image

    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    out = subprocess.run([*display, sys.executable, "-c", SCRIPT, str(project / "spec.toml"), str(tmp_path),
                          json.dumps(CROP)], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    shown = json.loads(out.stdout.strip().splitlines()[-1])
    assert shown["layers"] == ["input", *NODES] and shown["status"].startswith("done in"), shown
    value, maximum = shown["progress"]
    assert maximum > 1 and value == maximum
    assert [row[2] for row in shown["rows"]] == ["input", *["cached"] * len(NODES)]

    widget, plain = (matplotlib.image.imread(tmp_path / f"{n}.png")[..., :3] * 255 for n in ("widget", "plain"))
    assert widget.shape == plain.shape == (800, 1200, 3)
    assert widget.std() > 5 and len(np.unique(widget.reshape(-1, 3), axis=0)) > 50, "the window rendered blank"
    x, y, width, height = shown["dock"]
    assert x > 600 and width > 200 and height > 400, shown["dock"]  # docked on the right, tall
    dock, there = widget[y : y + height, x : x + width], plain[y : y + height, x : x + width]
    assert dock.std() > 10, "the dock region is flat: no widget drawn"
    assert np.abs(dock - there).mean() > 10, "the dock region looks the same without the widget"
    assert np.abs(widget[:, : x // 2] - plain[:, : x // 2]).mean() < np.abs(dock - there).mean()


def test_a_crop_runs_in_steps_and_each_steps_layers_come_before_the_next_step(project: Path) -> None:
    """Layers appear as nodes finish: the crop runs as the fused chain (mask, cells, centroids: one task per
    block makes them together), then counts; the chain's layers are handed out before counts computes, and
    every step's nodes are cached, with the same values as a run of the whole crop at once."""
    from cvplgraph.engine.plan import make_plan
    from cvplgraph.inspect import widget_runs as w

    loaded = w.load(str(project / "spec.toml"))
    plan = make_plan(w.region(loaded, CROP))
    assert w.steps(plan) == [["mask", "cells", "centroids"], ["counts"]]
    events: list[tuple[str, str]] = []
    run = w.run_region(loaded, CROP)
    try:
        while True:
            item = next(run)
            if isinstance(item, str) and item.startswith("step "):
                events.append(("step", item.split(":")[0]))
            elif isinstance(item, tuple):
                events.append(("layer", item[1]["name"]))
    except StopIteration as end:
        finished = end.value
    assert isinstance(finished, w.Finished), finished
    assert sorted(finished.computed) == sorted(NODES)
    order = [name for _, name in events]
    assert order.index("step 1 of 2") < order.index("mask") < order.index("centroids") < order.index("step 2 of 2")
    assert order.index("step 2 of 2") < order.index("counts")
    assert order.count("input") == 1  # each layer handed out once
    # the steps cached what one run of the crop computes: a second spec run finds everything cached
    again = make_plan(w.region(loaded, CROP))
    assert again.to_compute() == []
    from cvplgraph.engine.execute import execute

    stepwise = execute(again, scheduler="sync")
    whole = execute(make_plan(replace(w.region(loaded, CROP), cache_url=str(project / "other"))), scheduler="sync")
    assert sorted(whole.report.computed) == sorted(NODES)
    for name in NODES:
        assert stepwise[name].equals(whole[name]), name
