"""A real `dask scheduler` and `dask worker` on 127.0.0.1, started by the test."""

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

import cvplgraph

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    dask_cli = shutil.which("dask", path=str(BIN)) or shutil.which("dask")
    assert dask_cli, "the `dask` command (from distributed) must be installed"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask-logs")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
            stdout=open(logs / "scheduler.log", "w"),
            stderr=subprocess.STDOUT,
            env=env,
        )
    ]
    procs.append(
        subprocess.Popen(
            [
                dask_cli,
                "worker",
                address,
                "--host",
                "127.0.0.1",
                "--nworkers",
                "1",
                "--nthreads",
                "2",
                "--memory-limit",
                "2GiB",
                "--no-dashboard",
            ],
            stdout=open(logs / "worker.log", "w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=logs,
        )
    )
    from distributed import Client

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="2s") as client:
                    if client.scheduler_info()["workers"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test cluster did not start; logs in {logs}")
            time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


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
