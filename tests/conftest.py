"""Shared fixtures: small synthetic volumes written as real OME-Zarr stores, an S3 server, a screen for napari."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from cvplgraph.synth.volume import SynthParams, write_synthetic

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SPEC = """\
[input]
url = "{url}"

[cache]
url = "cache"

[nodes.mask]
op = "threshold"
image = "input"
level = {level}

[nodes.cells]
op = "connected_components"
mask = "mask"

[nodes.centroids]
op = "centroids"
labels = "cells"
image = "input"

[nodes.counts]
op = "count"
objects = "centroids"
block = [32, 128, 128]

[outputs]
centroids = "results/centroids.csv"
counts = "results/counts.csv"
"""


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A (48, 192, 192) volume in (24, 96, 96) chunks and its true cells."""
    folder = tmp_path_factory.mktemp("synthetic")
    url = folder / "volume.ome.zarr"
    cells = write_synthetic(str(url), SynthParams(shape=(48, 192, 192), chunks=(24, 96, 96), seed=3))
    return url, cells


@pytest.fixture
def spec_file(tmp_path: Path, synthetic: tuple[Path, pd.DataFrame]) -> Path:
    """A fresh project folder with the standard 4-node spec over the synthetic volume."""
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(url=synthetic[0], level=0.3))
    return path


@pytest.fixture(autouse=True)
def _plugins_forgotten(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests load plugin ops and cluster factories from their temporary folders into this process:
    forget those ops and modules after each test, so that the next test imports its own."""
    from cvplgraph.registry import REGISTRY

    yield
    base = str(tmp_path_factory.getbasetemp().resolve())
    temporary = {
        name for name, module in sys.modules.items() if (getattr(module, "__file__", None) or "").startswith(base)
    }
    for op_name in [n for n, opdef in REGISTRY.items() if opdef.func.__module__ in temporary]:
        del REGISTRY[op_name]
    for name in temporary:
        del sys.modules[name]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with a bucket; yields the environment that points runs at it.

    The endpoint reaches cvplgraph the way a user would configure it, through fsspec's environment
    configuration (``FSSPEC_S3_ENDPOINT_URL``) and the usual AWS variables."""
    pytest.importorskip("moto", reason="moto[server] is a test dependency: pip install -e '.[test]'")
    pytest.importorskip("s3fs", reason="s3fs is a test dependency: pip install -e '.[test]'")
    import fsspec
    from dask_processes import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved_env = {k: os.environ.get(k) for k in env}
    saved_conf = fsspec.config.conf.get("s3")
    os.environ.update(env)
    fsspec.config.conf["s3"] = {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"]}
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("cvplgraph-test")
        yield {**os.environ, **env}
    finally:
        server.terminate()
        server.wait()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf


# --- a real napari window (Qt) on a virtual screen: tests/inspect/test_view.py, test_napari_widget.py ---


def _display_prefix() -> tuple[list[str], str]:
    """How to start a Qt program here (a command prefix), or ``([], reason)`` when it cannot start."""
    import importlib.util

    if importlib.util.find_spec("qtpy") is None or not any(
        importlib.util.find_spec(b) for b in ("PyQt6", "PySide6", "PyQt5", "PySide2")
    ):
        return [], "no Qt binding installed (pip install 'cvplgraph[napari]')"
    if os.environ.get("DISPLAY"):
        prefix: list[str] = []
    elif shutil.which("xvfb-run"):
        prefix = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"]
    else:
        return [], "no display and no xvfb-run (bash scripts/install-system-packages.sh installs it)"
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if probe.returncode != 0:
        lines = (probe.stderr or probe.stdout).strip().splitlines()
        return [], f"Qt cannot start here: {lines[-1] if lines else f'exit code {probe.returncode}'}"
    return prefix or [""], ""


@pytest.fixture(scope="module")
def display() -> list[str]:
    """The command prefix that gives a subprocess a screen for a real Qt napari window (xvfb-run on a
    headless machine); skips with the reason where Qt cannot start."""
    prefix, reason = _display_prefix()
    if reason:
        pytest.skip(reason)
    return [p for p in prefix if p]
