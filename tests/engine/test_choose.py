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


def test_the_local_clusters_workers_get_the_block_friendly_allocator(spec_file: Path) -> None:
    """Workers with memory to spare keep block-sized arrays on the heap (no fresh mmap per block); workers with
    a small limit keep distributed's settings, which return memory at once."""
    import os

    from cvplgraph.engine.cluster import WORKER_ALLOCATOR, local_cluster, worker_environment

    assert worker_environment(2, "8GiB").items() >= WORKER_ALLOCATOR.items()
    small = worker_environment(2, "1GiB")
    assert "MALLOC_MMAP_THRESHOLD_" not in small and small.get("MALLOC_TRIM_THRESHOLD_") == 65536
    spec_file.write_text(spec_file.read_text() + '\n[cluster]\nn_workers = 1\nmemory_limit = "3GiB"\n')
    with local_cluster(cvplgraph.load_spec(spec_file)) as client:
        seen = client.run(lambda: {k: os.environ.get(k) for k in WORKER_ALLOCATOR})
    assert list(seen.values()) == [{k: str(v) for k, v in WORKER_ALLOCATOR.items()}]
