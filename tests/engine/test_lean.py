"""A worker forgets a task's call once the task's result is in memory (engine/lean.py), on a real
LocalCluster: what a worker keeps of a finished graph, a task computed again after that, and a run
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


def test_a_worker_keeps_finished_tasks_without_their_calls(client: Any) -> None:
    # without the plugin (the control): the worker keeps every task under the result it holds, calls and all
    root = client.get(chains(20, "plain"), "root-plain", sync=False)
    assert root.result() == expected(20)
    (plain,) = client.run(kept, tag="plain").values()
    assert len(plain) == 40 and all(holds for _, holds in plain.values())
    with lean_workers(client) as taken:
        assert taken
        root = client.get(chains(20, "lean"), "root-lean", sync=False)
        assert root.result() == expected(20)
        (lean,) = client.run(kept, tag="lean").values()
        assert len(lean) == 40  # distributed's bookkeeping stays until the result is released
        assert {state for state, _ in lean.values()} == {"released"}
        assert not any(holds for _, holds in lean.values())
        # a task whose call was dropped, asked for again, is computed again from the call the scheduler sends
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
