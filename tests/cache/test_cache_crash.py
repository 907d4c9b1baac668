"""A cache you can trust: kill -9 at any moment, chunk-level resume, concurrent runs.

Runs are real `cvplgraph run` processes. A plugin op that sleeps per block makes a
run last a few seconds and logs every block it computes. Kill points are chosen by
how many chunk records exist (not by time), and pass/fail never depends on timing:
whatever moment the kill lands on, the next run must give byte-identical results.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

import cvplgraph
from cvplgraph.synth.volume import SynthParams, write_synthetic

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

PLUGIN = '''\
import os, time, uuid
import numpy as np
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import like


@op("slow_copy", version=1, inputs={"image": PortType.Image}, output=PortType.Image, halo="none",
    cost="sleeps per block")
def slow_copy(image, *, seconds: float = 0.05, log: str = ""):
    """The image, unchanged, one block every ``seconds``; each block computed leaves a file in ``log``."""
    def kernel(block):
        time.sleep(seconds)
        if log:
            open(os.path.join(log, uuid.uuid4().hex), "w").close()
        return block
    return like(image.data.map_blocks(kernel, meta=np.array((), dtype=np.float32)), image)
'''

SPEC = """\
plugins = ["slow_ops"]

[input]
url = "{url}"

[cache]
url = "{cache}"

[nodes.slow]
op = "slow_copy"
image = "input"
seconds = {seconds}
log = "{log}"
store = {{ multiscale = 2 }}

[nodes.mask]
op = "threshold"
image = "slow"
level = 0.3

[nodes.cells]
op = "connected_components"
mask = "mask"

[nodes.centroids]
op = "centroids"
labels = "cells"
image = "slow"

[outputs]
centroids = "{out}/centroids.csv"
"""

BLOCKS = 64  # (64, 128, 128) in (16, 32, 32) chunks


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    url = tmp_path_factory.mktemp("crash") / "volume.ome.zarr"
    write_synthetic(str(url), SynthParams(shape=(64, 128, 128), chunks=(16, 32, 32), seed=5))
    return url


def project(folder: Path, volume: Path, seconds: float = 0.05, cache: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slow_ops.py").write_text(PLUGIN)
    (folder / "log").mkdir(exist_ok=True)
    spec = folder / "spec.toml"
    spec.write_text(SPEC.format(url=volume, cache=cache or folder / "cache", seconds=seconds,
                                log=folder / "log", out=folder / "results"))  # fmt: skip
    return spec


def command(spec: Path, scheduler: str | None) -> list[str]:
    """`cvplgraph run SPEC` on ``scheduler`` (None: the spec's cluster, a LocalCluster here)."""
    where = ["--scheduler", scheduler or "cluster"]
    return [sys.executable, "-m", "cvplgraph.cli", "run", str(spec), *where, "--quiet"]


def run_to_end(
    spec: Path, env: dict[str, str] | None = None, scheduler: str | None = "threads"
) -> subprocess.CompletedProcess[str]:
    """`cvplgraph run SPEC` in a process of its own, to the end."""
    return subprocess.run(command(spec, scheduler), capture_output=True, text=True, env=env)


def start(spec: Path, env: dict[str, str] | None = None, scheduler: str | None = "threads") -> subprocess.Popen[str]:
    return subprocess.Popen(command(spec, scheduler), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)  # fmt: skip


def records(cache: Path) -> int:
    """Chunk records now under ``cache``."""
    return records_in(cache / "partial")


def records_in(folder: Path) -> int:
    """Chunk records below ``folder``, not counting ops' checkpoints (os.walk skips folders a
    committing run removes meanwhile)."""
    return sum(
        sum(1 for f in files if f != "layout.json" and not f.startswith("."))
        for path, _, files in os.walk(folder)
        if "checkpoints" not in Path(path).parts
    )


def kill_after(proc: subprocess.Popen[str], cache: Path, count: int, counter: Callable[[], int] | None = None) -> None:
    """SIGKILL the run's process group once ``count`` chunk records exist (counted by ``counter``)."""
    counter = counter or (lambda: records(cache))
    while proc.poll() is None and counter() < count:
        time.sleep(0.005)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def parquet_frame(url: str) -> pd.DataFrame:
    """A partitioned table's rows, partition after partition (pyarrow reads each file; fsspec finds them)."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(url)
    files = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".parquet"))
    return pd.concat([pq.read_table(fs.open(p, "rb")).to_pandas() for p in files], ignore_index=True)


def stored(spec_path: Path) -> dict[str, object]:
    """Every committed node's stored data (each pyramid level of arrays, the table of points)."""
    spec = cvplgraph.load_spec(spec_path)
    plan = cvplgraph.plan(spec)
    out: dict[str, object] = {}
    for name, entry in plan.entries.items():
        url = plan.manifest.store_url(entry.store)
        if entry.store.endswith(".parquet"):  # a Points table: a Parquet dataset, read by pyarrow
            frame = parquet_frame(url)
            out[name] = {k: frame[k].to_numpy() for k in sorted(frame.columns)}
            continue
        group = zarr.open_group(url, mode="r")
        if entry.type in ("Image", "Mask", "Labels"):
            out[name] = [np.asarray(group[str(level)][:]) for level in range(len(list(group.array_keys())))]
        else:
            out[name] = {k: np.asarray(group[k][:]) for k in sorted(group.array_keys())}
    return out


def assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        left, right = a[name], b[name]
        if isinstance(left, list):
            assert len(left) == len(right)  # type: ignore[arg-type]
            for x, y in zip(left, right):  # type: ignore[call-overload]
                np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            for k in left:  # type: ignore[union-attr]
                np.testing.assert_array_equal(left[k], right[k], err_msg=f"{name}.{k}")  # type: ignore[index]


@pytest.fixture(scope="module")
def reference(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], bytes]:
    """An uninterrupted run: stored values and the output file."""
    spec = project(tmp_path_factory.mktemp("reference"), volume, seconds=0.0)
    out = run_to_end(spec)
    assert out.returncode == 0, out.stderr
    return stored(spec), (spec.parent / "results" / "centroids.csv").read_bytes()


def committed_entries_are_complete(spec: Path, reference: dict[str, object]) -> None:
    """No entry may describe a store that is incomplete or wrong."""
    now = stored(spec)
    assert_same(now, {name: reference[name] for name in now})


@pytest.mark.parametrize("kill_at", [0, 1, BLOCKS // 2, BLOCKS + 12, 10_000])
def test_kill_minus_9_then_rerun_gives_identical_results(
    kill_at: int, volume: Path, tmp_path: Path, reference: tuple[dict[str, object], bytes]
) -> None:
    """kill_at: chunk records written before the kill (0: at once; 10 000: after every write, i.e. at commit)."""
    spec = project(tmp_path, volume)
    kill_after(start(spec), tmp_path / "cache", kill_at)
    committed_entries_are_complete(spec, reference[0])
    out = run_to_end(spec)
    assert out.returncode == 0, out.stderr
    assert_same(stored(spec), reference[0])
    assert (tmp_path / "results" / "centroids.csv").read_bytes() == reference[1]
    leftovers = [p for p in (tmp_path / "cache" / "partial").rglob("*") if p.is_file()]
    assert leftovers == []  # committed: records and checkpoints are gone


def test_kill_minus_9_on_a_local_cluster_then_rerun(
    volume: Path, tmp_path: Path, reference: tuple[dict[str, object], bytes]
) -> None:
    """The same on a LocalCluster of two worker processes (the kill takes the run's whole process
    group, workers included), killed half-way through the first node's chunks."""
    spec = project(tmp_path, volume)
    spec.write_text(spec.read_text() + "\n[cluster]\nn_workers = 2\nthreads_per_worker = 1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = start(spec, env, scheduler=None)  # workers import the plugin op through PYTHONPATH
    kill_after(proc, tmp_path / "cache", BLOCKS // 2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    committed_entries_are_complete(spec, reference[0])
    out = run_to_end(spec, env, scheduler=None)
    assert out.returncode == 0, out.stderr
    assert_same(stored(spec), reference[0])
    assert (tmp_path / "results" / "centroids.csv").read_bytes() == reference[1]


def test_resume_computes_only_the_missing_blocks(volume: Path, tmp_path: Path,
                                                 reference: tuple[dict[str, object], bytes]) -> None:  # fmt: skip
    """Killed at ~70 % of `slow`'s chunks, the next run computes only the blocks without a record.

    `slow` → `mask` (blockwise) only, so each missing block is computed exactly once.
    """
    spec = project(tmp_path, volume)
    spec.write_text(spec.read_text().split("[nodes.cells]")[0])
    kill_after(start(spec), tmp_path / "cache", int(0.7 * BLOCKS))
    plan = cvplgraph.plan(cvplgraph.load_spec(spec))
    slow = plan.nodes["slow"]
    if "slow" in plan.entries:
        pytest.fail("the run finished before it could be killed; slow down the plugin op")
    level0 = _chunks(tmp_path / "cache", 0, slow.key)
    assert slow.done is not None and 0 < slow.done < 1 and 0 < len(level0) < BLOCKS
    shown = subprocess.run([sys.executable, "-m", "cvplgraph.cli", "plan", str(spec)], capture_output=True, text=True)
    assert f"partial {slow.done:.0%}" in shown.stdout
    log = tmp_path / "log"
    for f in log.iterdir():
        f.unlink()
    results = cvplgraph.run(cvplgraph.load_spec(spec), scheduler="threads")
    assert len(list(log.iterdir())) == BLOCKS - len(level0)  # the op ran on the missing blocks only
    written, resumed = results.report.blocks["slow"]
    assert resumed >= len(level0)
    assert_same(stored(spec), {name: reference[0][name] for name in ("slow", "mask")})


def _chunks(cache: Path, level: int, key: str) -> set[tuple[int, ...]]:
    """Chunk indices of ``level`` of the store of ``key`` that the records say are written."""
    from cvplgraph.cache.resume import parse_marker
    from cvplgraph.io.records import expand

    out: set[tuple[int, ...]] = set()
    for marker in cache.glob(f"partial/{key}/*/{level}/*"):
        ranges = parse_marker(marker.name)
        if ranges:
            out.update(expand(ranges))
    return out


def test_two_concurrent_runs_on_one_cache(volume: Path, tmp_path: Path,
                                          reference: tuple[dict[str, object], bytes]) -> None:  # fmt: skip
    """Same cache, same and overlapping specs, at once: both finish, both correct, nothing corrupted."""
    first = project(tmp_path / "a", volume, cache=str(tmp_path / "cache"))
    second = project(tmp_path / "b", volume, cache=str(tmp_path / "cache"))
    # b asks for one node more than a (overlapping), on the same blocks
    second.write_text(second.read_text().replace("[outputs]", '[nodes.counts]\nop = "count"\nobjects = "centroids"\n'
                                                  'block = [32, 64, 64]\n\n[outputs]'))  # fmt: skip
    second.write_text(second.read_text().replace(str(tmp_path / "b" / "log"), str(tmp_path / "a" / "log")))
    procs = [start(first), start(second)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    for spec in (first, second):
        assert (spec.parent / "results" / "centroids.csv").read_bytes() == reference[1]
        assert_same({k: v for k, v in stored(spec).items() if k != "counts"}, reference[0])
    assert "counts" in stored(second)
    again = cvplgraph.plan(cvplgraph.load_spec(second))
    assert again.to_compute() == []  # each reuses what the other committed


def test_no_entry_points_at_a_store_being_written(volume: Path, tmp_path: Path) -> None:
    """Mid-run, the manifest holds nothing for the nodes being computed."""
    spec = project(tmp_path, volume)
    proc = start(spec)
    kill_after(proc, tmp_path / "cache", BLOCKS // 3)
    assert list((tmp_path / "cache").glob("manifest/*.json")) == []


def test_plan_reads_partial_progress_from_records(volume: Path, tmp_path: Path) -> None:
    spec = project(tmp_path, volume)
    key = cvplgraph.plan(cvplgraph.load_spec(spec)).nodes["slow"].key
    # slow's own records (the fused mask → labels → centroids tasks record the mask's blocks too)
    partial = tmp_path / "cache" / "partial" / key
    kill_after(start(spec), tmp_path / "cache", BLOCKS // 2, counter=lambda: records_in(partial))
    slow = cvplgraph.plan(cvplgraph.load_spec(spec)).nodes["slow"]
    per_level = [len(_chunks(tmp_path / "cache", level, slow.key)) for level in (0, 1)]
    # level 0: 4 × 4 × 4 chunks; level 1 (32, 64, 64) in (8, 16, 16) chunks: 4 × 4 × 4 too
    assert slow.done == pytest.approx(sum(per_level) / (2 * BLOCKS))
    assert 0 < sum(per_level) < 2 * BLOCKS


def test_a_checkpoint_is_saved_then_loaded_instead_of_computed(tmp_path: Path) -> None:
    import dask

    from cvplgraph.cache.checkpoint import scope
    from cvplgraph.hooks import checkpoint

    calls: list[int] = []

    def first_pass() -> np.ndarray:
        calls.append(1)
        return np.arange(5, dtype=np.int64)

    outside = dask.delayed(first_pass)()
    assert checkpoint("lut-grid", outside) is outside  # no run: nothing kept
    with scope(str(tmp_path / "checkpoints")):
        saved = checkpoint("lut-grid", dask.delayed(first_pass)())
    np.testing.assert_array_equal(saved.compute(), np.arange(5))
    assert calls == [1] and (tmp_path / "checkpoints" / "lut-grid.npy").exists()
    with scope(str(tmp_path / "checkpoints")):
        loaded = checkpoint("lut-grid", dask.delayed(first_pass)())
    np.testing.assert_array_equal(loaded.compute(), np.arange(5))
    assert calls == [1]  # the second time it came from the file


def test_block_checkpoints_load_what_was_saved_and_compute_the_rest(tmp_path: Path) -> None:
    import dask

    from cvplgraph.cache.checkpoint import scope
    from cvplgraph.hooks import checkpoint_blocks

    calls: list[int] = []

    def summary(i: int) -> tuple[np.ndarray, ...]:
        calls.append(i)
        return (
            np.asarray(i, dtype=np.int64),
            np.full((2, 3), i, dtype=np.uint32),
            np.linspace(0, i, 4),
            np.empty((0, 3)),
        )

    def blocks(n: int) -> list:
        return [dask.delayed(summary, pure=True)(i) for i in range(n)]

    outside = blocks(3)
    assert checkpoint_blocks("faces", outside) is outside  # no run: nothing kept
    folder = tmp_path / "checkpoints"
    with scope(str(folder)):
        first = checkpoint_blocks("faces", blocks(4)[:2])  # an interrupted run saved blocks 0 and 1
    dask.compute(*first)
    assert sorted(calls) == [0, 1] and sorted(p.name for p in (folder / "faces").iterdir()) == ["0", "1"]
    calls.clear()
    with scope(str(folder)):
        resumed = checkpoint_blocks("faces", blocks(4))
    values = dask.compute(*resumed)
    assert sorted(calls) == [2, 3]  # blocks 0 and 1 came from their files
    for i, parts in enumerate(values):
        expected = summary(i)
        assert [(p.dtype, p.shape) for p in parts] == [(p.dtype, p.shape) for p in expected]
        for got, want in zip(parts, expected):
            np.testing.assert_array_equal(got, want)


def test_connected_components_resume_from_their_checkpoint(
    volume: Path, tmp_path: Path, reference: tuple[dict[str, object], bytes]
) -> None:
    """Killed while writing the labels: the lookup table was kept, and the rerun is still exact."""
    spec = project(tmp_path, volume)
    proc = start(spec)
    cells = cvplgraph.plan(cvplgraph.load_spec(spec)).nodes["cells"].key
    kill_after(proc, tmp_path / "cache", 1, counter=lambda: records_in(tmp_path / "cache" / "partial" / cells))
    kept = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "partial" / cells).glob("checkpoints/*.npy"))
    if not kept:
        pytest.fail("killed before the labels were written; the kill point is chosen by their records")
    assert kept == ["lut", "offsets"]
    out = run_to_end(spec)
    assert out.returncode == 0, out.stderr
    assert_same(stored(spec), reference[0])
    assert (tmp_path / "results" / "centroids.csv").read_bytes() == reference[1]
    assert not (tmp_path / "cache" / "partial" / cells).exists()  # cleared with the commit
