"""A worker forgets what it no longer needs of a task once the task's result is in memory (engine/lean.py), on
a real LocalCluster: what a worker keeps of a finished graph, a task computed again after that, and a run
leaving no plugin behind."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import SPEC
from distributed.diagnostics.plugin import WorkerPlugin

import cvplgraph
from cvplgraph.engine.lean import lean_workers

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="1GiB", host="127.0.0.1",
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, Client(cluster) as c:  # fmt: skip
        yield c


def add(*values: int) -> int:
    return sum(values)


def chains(n: int, tag: str) -> dict[Any, Any]:
    """``n`` chains ``a → b``, each ``a`` carrying a list of 200 numbers, and one task adding every ``b``."""
    graph: dict[Any, Any] = {}
    for i in range(n):
        graph[(f"a-{tag}", i)] = (add, *range(i, i + 200))
        graph[(f"b-{tag}", i)] = (add, (f"a-{tag}", i), 1)
    graph[f"root-{tag}"] = (add, *[(f"b-{tag}", i) for i in range(n)])
    return graph


def expected(n: int) -> int:
    return sum(sum(range(i, i + 200)) + 1 for i in range(n))


def kept(dask_worker: Any, tag: str) -> dict[str, tuple[str, bool]]:
    """The chain tasks the worker still knows: their state and whether it still holds their call."""
    return {
        str(ts.key): (ts.state, ts.run_spec is not None)
        for ts in dask_worker.state.tasks.values()
        if isinstance(ts.key, tuple) and ts.key[0].endswith(tag)
    }


def test_a_worker_forgets_the_tasks_under_a_result_it_holds(client: Any) -> None:
    # without the plugin (the control): the worker keeps every task under the result it holds, calls and all
    root = client.get(chains(20, "plain"), "root-plain", sync=False)
    assert root.result() == expected(20)
    (plain,) = client.run(kept, tag="plain").values()
    assert len(plain) == 40 and {state for state, _ in plain.values()} == {"released"}
    assert all(holds for _, holds in plain.values())
    with lean_workers(client) as taken:
        assert taken
        root = client.get(chains(20, "lean"), "root-lean", sync=False)
        assert root.result() == expected(20)
        (lean,) = client.run(kept, tag="lean").values()
        assert lean == {}  # the result is still held (root), the tasks under it are forgotten
        (held,) = client.run(lambda dask_worker: dask_worker.state.tasks["root-lean"].state).values()
        assert held == "memory"
        # a forgotten task asked for again is computed again from the call the scheduler sends
        again = client.get(chains(20, "lean"), ("b-lean", 7), sync=False)
        assert again.result() == sum(range(7, 207)) + 1
    names = client.run(lambda dask_worker: [n for n in dask_worker.plugins if n.startswith("cvplgraph-lean")])
    assert list(names.values()) == [[]]


def test_a_run_on_a_cluster_leaves_no_plugin_and_the_same_table(
    client: Any, synthetic: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cvplgraph.engine.execute as execute

    taken: list[bool] = []

    @contextlib.contextmanager
    def spied(c: Any) -> Iterator[bool]:
        with lean_workers(c) as ok:
            taken.append(ok)
            yield ok

    monkeypatch.setattr(execute, "lean_workers", spied)
    image, _ = synthetic
    tables = []
    for name, scheduler in (("threads", {"scheduler": "threads"}), ("cluster", {"client": client})):
        folder = tmp_path / name
        folder.mkdir()
        spec = folder / "spec.toml"
        spec.write_text(SPEC.format(url=image, level=0.3))
        cvplgraph.run(cvplgraph.load_spec(spec), progress=False, **scheduler)
        tables.append(pd.read_csv(folder / "results" / "centroids.csv").sort_values(["z", "y", "x"], ignore_index=True))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert taken == [True]  # the cluster run had the plugin, the threaded one no cluster to put it on
    names = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert not [n for ns in names.values() for n in ns if n.startswith("cvplgraph-lean")]


class FusedSeen(WorkerPlugin):
    """A worker plugin: the most block tasks (``fused-…``, not their writes' counts) the worker knew at once."""

    name = "fused-seen"

    def setup(self, worker: Any) -> None:
        self.live: set[Any] = set()
        self.peak = 0

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if not (isinstance(key, tuple) and str(key[0]).startswith("fused-") and not str(key[0]).endswith("-written")):
            return
        if finish == "forgotten":
            self.live.discard(key)
        else:
            self.live.add(key)
            self.peak = max(self.peak, len(self.live))


def _fused_peak(dask_worker: Any) -> int:
    return dask_worker.plugins[FusedSeen.name].peak


def test_a_worker_forgets_a_block_task_once_the_small_tasks_of_its_rows_ran(client: Any, tmp_path: Path) -> None:
    """A fused block task's results are read by its row's small tasks (label counts, pairs) and, from the
    scratch folder by block number, by the partitions' merges after every block is done: a worker forgets the
    task within a couple of slabs of blocks, not at the run's end (48 blocks in 12 slabs of 4, one worker; the
    volume stored in those blocks, as a scan is read)."""
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    image = tmp_path / "volume.ome.zarr"
    write_synthetic(str(image), SynthParams(shape=(48, 192, 192), chunks=(4, 96, 96), seed=3))
    tables = []
    for name in ("threads", "cluster"):
        folder = tmp_path / name
        folder.mkdir()
        spec = folder / "spec.toml"
        spec.write_text(SPEC.format(url=image, level=0.3))
        if name == "threads":
            cvplgraph.run(cvplgraph.load_spec(spec), scheduler="threads", progress=False)
        else:
            client.register_plugin(FusedSeen())
            try:
                result = cvplgraph.run(cvplgraph.load_spec(spec), client=client, progress=False)
                (peak,) = client.run(_fused_peak).values()
            finally:
                client.unregister_worker_plugin(FusedSeen.name)
        tables.append(pd.read_csv(folder / "results" / "centroids.csv"))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert result.report.fused
    assert 0 < peak <= 3 * 4  # 3 slabs; all 48 were kept until the run's end before
