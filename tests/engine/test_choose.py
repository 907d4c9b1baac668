"""Which scheduler a run uses when none is asked for: threads for small inputs, a cluster otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cvplgraph
from cvplgraph.engine.execute import SMALL_INPUT_BYTES, choose_scheduler


@pytest.fixture
def plan(spec_file: Path):  # noqa: ANN201
    return cvplgraph.plan(cvplgraph.load_spec(spec_file))


def test_the_input_size_is_the_selection_as_stored(plan, synthetic) -> None:  # noqa: ANN001
    (level,) = [np.asarray(__import__("zarr").open_group(str(synthetic[0]), mode="r")["0"])]
    assert plan.input_bytes == level.nbytes == 48 * 192 * 192 * level.dtype.itemsize


def test_small_inputs_run_on_threads_and_everything_else_keeps_its_choice(plan) -> None:  # noqa: ANN001
    assert choose_scheduler(plan, None, None)[0] == "threads"
    assert choose_scheduler(plan, None, "auto") == ("threads", choose_scheduler(plan, None, None)[1])
    assert "threads in this process" in choose_scheduler(plan, None, None)[1]
    assert choose_scheduler(plan, None, "cluster")[0] is None
    assert choose_scheduler(plan, None, "sync")[0] == "sync"
    assert choose_scheduler(plan, None, "tcp://127.0.0.1:8786")[0] == "tcp://127.0.0.1:8786"
    plan.input_bytes = SMALL_INPUT_BYTES
    assert choose_scheduler(plan, None, None) == (None, "input ≥ 2 GiB: a LocalCluster")


def test_a_spec_with_cluster_settings_gets_its_cluster(spec_file: Path) -> None:
    spec_file.write_text(spec_file.read_text().replace("[nodes.mask]", "[cluster]\nn_workers = 1\n\n[nodes.mask]"))
    plan = cvplgraph.plan(cvplgraph.load_spec(spec_file))
    assert choose_scheduler(plan, None, None) == (None, "the spec's [cluster]")


def test_the_run_record_says_where_and_why(spec_file: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cvplgraph.cli", "run", str(spec_file), "--quiet"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    (record,) = (spec_file.parent / "cache" / "runs").glob("*.json")
    cluster = json.loads(record.read_text())["environment"]["cluster"]
    assert cluster["kind"] == "dask threads scheduler"
    size = cvplgraph.plan(cvplgraph.load_spec(spec_file)).input_bytes
    assert cluster["why"] == f"input {size / 2**20:.0f} MiB < 2 GiB: threads in this process"
