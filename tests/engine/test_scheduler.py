"""A real `dask scheduler` and `dask worker` on 127.0.0.1, started by the test."""

from __future__ import annotations

import json
import subprocess
import sys
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
