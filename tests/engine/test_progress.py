"""Progress of a run (bar, JSON lines, quiet) and a clean stop on Ctrl-C.

Byte figures are checked against the stores themselves: a run reading the
input once and storing one node must report the input's size as read and the
stored levels' sizes as written, on dask's threaded scheduler and on a cluster.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import zarr
from test_cluster import gated_project

from cvplgraph.cache.resume import partial_progress
from cvplgraph.cli import main
from cvplgraph.engine.plan import make_plan
from cvplgraph.engine.progress import Snapshot, bar_line
from cvplgraph.spec.parse import load_spec

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

ONE_NODE = """\
[input]
url = "{url}"

[nodes.mask]
op = "threshold"
image = "input"
level = 0.3
"""


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def stored_level_bytes(store: Path) -> int:
    """Decoded bytes of every pyramid level of a stored array (what writing it had to produce)."""
    group = zarr.open_group(str(store), mode="r")
    return sum(array.nbytes for _, array in group.arrays())


@pytest.mark.parametrize("scheduler", ["threads", "cluster"], ids=["threads", "local-cluster"])
def test_json_progress_counts_every_task_and_the_bytes_the_stores_hold(
    scheduler: str, synthetic: tuple[Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(ONE_NODE.format(url=synthetic[0]))
    args = ["run", str(spec), "--json", "--scheduler", scheduler]
    assert main(args) == 0
    out = events(capsys.readouterr().out)
    assert [e["event"] for e in out][0] == "start" and out[-1]["event"] == "done"
    assert out[0]["compute"] == ["mask"]
    last = [e for e in out if e["event"] == "progress"][-1]
    assert last["done"] == last["total"] > 0 and last["eta"] == 0
    input_array = zarr.open_group(str(synthetic[0]), mode="r")["0"]
    assert last["read_bytes"] == input_array.nbytes  # every input chunk read exactly once
    (store,) = (tmp_path / "cache" / "stores").glob("*/*.ome.zarr")
    assert last["written_bytes"] == stored_level_bytes(store)
    record = json.loads(Path(out[-1]["record"]).read_text())
    assert record["io"] == {"tasks": last["total"], "read_bytes": last["read_bytes"],
                            "written_bytes": last["written_bytes"]}  # fmt: skip
    if scheduler == "cluster":
        assert any(e["event"] == "dashboard" and e["url"].startswith("http://127.0.0.1:") for e in out)
        assert record["environment"]["cluster"]["workers"] >= 1


def test_the_bar_goes_to_stderr_and_quiet_prints_nothing(
    synthetic: tuple[Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(ONE_NODE.format(url=synthetic[0]))
    assert main(["run", str(spec), "--scheduler", "threads"]) == 0
    out, err = capsys.readouterr()
    assert "1 node(s) to compute: mask" in out and "recorded" in out
    assert "100%" in err and "tasks" in err and "read 6.75 MiB" in err  # 48×192×192 float32 = 6.75 MiB
    spec.write_text(ONE_NODE.format(url=synthetic[0]).replace("0.3", "0.4"))
    assert main(["run", str(spec), "--scheduler", "threads", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_bar_line_and_eta() -> None:
    s = Snapshot(done=25, total=100, read_bytes=3 * 2**30, written_bytes=512 * 2**20, elapsed=10.0)
    assert s.eta == pytest.approx(30.0)
    line = bar_line(s, width=8)
    assert line.startswith("[##------]  25%  25/100 tasks  0:10 elapsed  ETA 0:30")
    assert line.endswith("read 3.00 GiB  written 512.00 MiB")
    assert Snapshot(0, 100, 0, 0, 5.0).eta is None


#: The run is held in the middle deterministically, not by timing: the plugin op's first z-slab is
#: stored (and recorded) while its second slab waits for a gate file; 6 threads leave room for both.
ONE_WORKER = "[cluster]\nn_workers = 1\nthreads_per_worker = 6\n"


def test_ctrl_c_commits_nothing_half_done_and_the_next_run_completes(
    synthetic: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    started, gate = tmp_path / "started", tmp_path / "gate"
    started.mkdir()
    spec = gated_project(tmp_path / "project", synthetic[0], str(gate), str(started), ONE_WORKER, hold_from=1)
    project = spec.parent
    scaled = make_plan(load_spec(spec)).nodes["scaled"].key
    cache = project / "cache"
    run = subprocess.Popen([sys.executable, "-m", "cvplgraph", "run", str(spec), "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        # held: every block of the second slab has started, and the first slab's chunks are recorded
        while len(list(started.glob("1-*"))) < 4 or not partial_progress(str(cache), scaled):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the run never reached the held blocks"
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        gate.touch()
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("cvplgraph:")]
    share = re.search(r"chunks already written are kept \(scaled (\d+)%[,)]", line)
    assert "no cache entry was committed" in line and share and 0 < int(share[1]) < 100, line
    assert line.endswith(f"resume with: cvplgraph run {spec}")
    assert list(cache.glob("manifest/*.json")) == []
    assert events(out)[-1]["event"] == "interrupted"
    interrupted = json.loads(Path(events(out)[-1]["record"]).read_text())
    assert interrupted["status"] == "interrupted"

    plan = subprocess.run([sys.executable, "-m", "cvplgraph", "plan", str(spec)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert f"partial {share[1]}%" in plan.stdout, plan.stdout
    again = subprocess.run([sys.executable, "-m", "cvplgraph", "run", str(spec), "--json"], capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    record = json.loads(Path(events(again.stdout)[-1]["record"]).read_text())
    blocks = {n["name"]: n["blocks"] for n in record["nodes"]}
    written, resumed = blocks["scaled"]
    assert resumed >= 1 and written + resumed == 8  # blocks stored before the interrupt are not computed again

    # the resumed results equal one uninterrupted run's
    fresh = gated_project(tmp_path / "fresh", synthetic[0], str(gate), str(started), hold_from=1)
    assert subprocess.run([sys.executable, "-m", "cvplgraph", "run", str(fresh), "--quiet", "--scheduler", "threads"],
                          timeout=300).returncode == 0  # fmt: skip
    columns = ["z", "y", "x", "volume_voxels"]
    resumed = pd.read_csv(project / "results" / "centroids.csv").sort_values(columns).reset_index(drop=True)
    reference = pd.read_csv(fresh.parent / "results" / "centroids.csv").sort_values(columns).reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed[columns], reference[columns])
    verify = subprocess.run([sys.executable, "-m", "cvplgraph", "cache", "verify", "--spec", str(spec)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_run_beside_another_threads_computes_under_a_dask_cache(spec_file: Path) -> None:
    """napari slices dask-backed layers under dask's opportunistic Cache (a global callback) while the dock
    widget runs a spec in another thread: neither compute may run the other's callbacks. Before each run's
    compute took its callbacks explicitly, both failed with KeyErrors from the callbacks' bookkeeping."""
    import threading

    import dask.array as da
    from dask.cache import Cache

    import cvplgraph

    reference = cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="threads")["centroids"]
    stop, errors, slices = threading.Event(), [], []
    volume = da.random.default_rng(1).random((64, 256, 256), chunks=(16, 64, 64))

    def slicer() -> None:
        cache = Cache(2e8)
        while not stop.is_set():
            try:
                with cache:  # registered while a layer is sliced, as napari does
                    plane = volume[len(slices) % 64]
                    time.sleep(0.002)
                    slices.append(float(plane.sum().compute(scheduler="threads")))
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(exc)

    thread = threading.Thread(target=slicer)
    thread.start()
    try:
        runs = []
        for n in range(4):
            spec = replace(cvplgraph.load_spec(spec_file), cache_url=str(spec_file.parent / f"cache-{n}"))
            runs.append(cvplgraph.run(spec, scheduler="threads")["centroids"])
    finally:
        stop.set()
        thread.join()
    assert errors == [] and len(slices) > 3
    assert all(run.equals(reference) for run in runs)
