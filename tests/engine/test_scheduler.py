"""A real `dask scheduler` and `dask worker` on 127.0.0.1, started by the test."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from dask_processes import dask_processes, free_port

import cvplgraph

pytestmark = pytest.mark.cluster  # real dask clusters or an S3 server; see pyproject.toml's markers


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dask_processes(tmp_path_factory.mktemp("dask-logs")) as address:
        yield address


def test_existing_scheduler_gives_the_same_result_as_local(spec_file: Path, scheduler: str, tmp_path: Path) -> None:
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    local_spec = local_dir / "spec.toml"
    local_spec.write_text(spec_file.read_text())
    local = cvplgraph.run(cvplgraph.load_spec(local_spec), scheduler="threads")

    spec_file.write_text(
        spec_file.read_text().replace("[nodes.mask]", f'[cluster]\naddress = "{scheduler}"\n\n[nodes.mask]')
    )
    spec = cvplgraph.load_spec(spec_file)
    assert spec.cluster.address == scheduler
    remote = cvplgraph.run(spec)
    assert remote.report.computed == ["mask", "cells", "centroids", "counts"]
    assert remote.report.dashboard is not None
    a = pd.read_csv(local_dir / "results" / "centroids.csv").sort_values(["z", "y", "x"]).reset_index(drop=True)
    b = pd.read_csv(spec_file.parent / "results" / "centroids.csv").sort_values(["z", "y", "x"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="label"), b.drop(columns="label"), atol=1e-9, rtol=0)
    assert int(remote["counts"].attrs["total"]) == int(local["counts"].attrs["total"]) == len(a)
    assert (remote["cells"].values > 0).sum() == (local["cells"].values > 0).sum()
    # and the cache the cluster filled is used on the next run
    assert cvplgraph.run(spec).report.computed == []


def test_cli_scheduler_flag(spec_file: Path, scheduler: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cvplgraph", "run", str(spec_file), "--scheduler", scheduler, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert len(pd.read_csv(spec_file.parent / "results" / "centroids.csv")) > 100
    (record,) = (spec_file.parent / "cache" / "runs").glob("*.json")  # it ran there, not on a cluster of its own
    assert json.loads(record.read_text())["environment"]["cluster"]["address"] == scheduler


def test_unreachable_scheduler_is_a_clear_error(spec_file: Path) -> None:
    port = free_port()  # nothing listens here
    out = subprocess.run(
        [sys.executable, "-m", "cvplgraph", "run", str(spec_file), "--scheduler", f"tcp://127.0.0.1:{port}", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


@contextlib.contextmanager
def _server(kind: str) -> Iterator[str]:
    """A server on 127.0.0.1 that is no dask scheduler: an HTTP server (it waits for a request line that
    never comes), one that accepts and closes, one that answers garbage; yields its tcp:// address."""
    if kind == "http":
        httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"tcp://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            httpd.server_close()
        return
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                if kind == "garbage":  # read as frame lengths, this asks for exbibytes
                    conn.sendall(b"\x7f\xff\xff\xff\xff\xff\xff\xff" * 8)
                    time.sleep(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("http", "but nothing answered as one within 2 s ([cluster] connect_timeout)"),
        ("close", "but the server there closed the connection without answering"),
        ("garbage", "but the server there answered something else ("),
    ],
)
@pytest.mark.parametrize("where", ["flag", "spec"])
def test_an_address_that_is_no_scheduler_is_one_line(spec_file: Path, kind: str, message: str, where: str) -> None:
    """Such an address used to hang the run for minutes (HTTP) or print a failed allocation of EiB (garbage)."""
    text = spec_file.read_text().replace("[nodes.mask]", "[cluster]\nconnect_timeout = 2\n\n[nodes.mask]")
    with _server(kind) as address:
        if where == "spec":
            text = text.replace("connect_timeout = 2", f'connect_timeout = 2\naddress = "{address}"')
        spec_file.write_text(text)
        flag = ["--scheduler", address] if where == "flag" else []
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "cvplgraph", "run", str(spec_file), *flag, "--quiet"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert time.monotonic() - started < 60
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"cvplgraph: error: expected a dask scheduler at {address}, {message}"), out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (spec_file.parent / "cache").exists()  # connected before anything was written
