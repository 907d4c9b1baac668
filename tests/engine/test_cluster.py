"""Scale-out on real dask processes on 127.0.0.1: plugins on workers, a factory, a volume larger
than the workers' memory, a worker killed in the middle of a run, an object store shared by workers
that share no disk with the client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SPEC
from dask_processes import dask_processes
from test_cache_crash import assert_same, stored

import cvplgraph

pytestmark = pytest.mark.cluster  # real dask clusters or an S3 server; see pyproject.toml's markers

#: A plugin op whose kernel is a module-level function: a worker can run it only if it can import
#: the module. Each block leaves ``<started>/<block>-<pid>`` when it starts and, when ``gate`` is set,
#: waits for that file before it returns — blocks in z-slabs before ``hold_from`` do not wait.
PLUGIN = '''\
import os, time
import numpy as np
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import like


def _gated(block, gate, started, hold_from, block_id=None):
    if started:
        name = "-".join(map(str, block_id)) + f"-{os.getpid()}"
        open(os.path.join(started, name), "w").close()
    deadline = time.monotonic() + 300
    while gate and block_id[0] >= hold_from and not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no gate file {gate}")
        time.sleep(0.02)
    return block * np.float32(1.5)


@op("gated_scale", version=1, inputs={"image": PortType.Image}, output=PortType.Image, halo="none",
    cost="waits for a file")
def gated_scale(image, *, gate: str = "", started: str = "", hold_from: int = 0):
    """The image × 1.5, block by block, blocks from z-slab ``hold_from`` on waiting for the file ``gate``."""
    return like(image.data.map_blocks(_gated, gate, started, hold_from, meta=np.array((), dtype=np.float32)), image)
'''

PIPELINE = SPEC.replace('image = "input"\nlevel', 'image = "scaled"\nlevel')


def gated_project(
    folder: Path, volume: Path, gate: str = "", started: str = "", extra: str = "", hold_from: int = 0
) -> Path:
    """A project whose spec runs the standard pipeline on the plugin's output, with its plugin beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lab_gated.py").write_text(PLUGIN)
    spec = folder / "spec.toml"
    head = f'plugins = ["lab_gated"]\n{extra}\n'
    node = f'\n[nodes.scaled]\nop = "gated_scale"\nimage = "input"\ngate = "{gate}"\nstarted = "{started}"\n'
    node += f"hold_from = {hold_from}\n"
    spec.write_text(head + PIPELINE.format(url=volume, level=0.45) + node)
    return spec


def cli(spec: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cvplgraph", "run", str(spec), "--quiet", *args]


def centroids(spec: Path) -> pd.DataFrame:
    frame = pd.read_csv(spec.parent / "results" / "centroids.csv")
    return frame.sort_values(["z", "y", "x"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two single-threaded worker processes, each in a folder of its own (not the projects')."""
    with dask_processes(tmp_path_factory.mktemp("dask-two"), workers=2, threads=1, memory_limit="1GiB") as address:
        yield address


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, synthetic: tuple[Path, pd.DataFrame]) -> Path:
    """The gated pipeline run in this process on dask's threaded scheduler."""
    spec = gated_project(tmp_path_factory.mktemp("reference"), synthetic[0])
    cvplgraph.run(cvplgraph.load_spec(spec), scheduler="threads")
    return spec


def test_a_plugin_beside_the_spec_is_uploaded_to_the_workers(
    two_workers: str, reference: Path, synthetic: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    spec = gated_project(tmp_path, synthetic[0])
    out = subprocess.run(cli(spec, "--scheduler", two_workers), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    pd.testing.assert_frame_equal(centroids(spec).drop(columns="label"), centroids(reference).drop(columns="label"))
    assert_same(stored(spec), stored(reference))


def test_an_installed_plugin_missing_on_the_workers_is_a_clear_error(
    two_workers: str, synthetic: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """A plugin from a package installed where the command runs but not on the workers."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "lab_installed.py").write_text(PLUGIN.replace("gated_scale", "installed_scale"))
    info = site / "lab_installed-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-installed\nVersion: 1.0\n")
    (info / "RECORD").write_text("lab_installed.py,,\n")
    project = tmp_path / "project"
    spec = gated_project(project, synthetic[0])
    spec.write_text(
        spec.read_text().replace('"lab_gated"', '"lab_installed"').replace('"gated_scale"', '"installed_scale"')
    )
    (project / "lab_gated.py").unlink()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(cli(spec, "--scheduler", two_workers), capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1
    assert "plugin module(s) lab_installed cannot be imported on 2 worker(s)" in out.stderr
    assert "install them on every worker" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (project / "cache").exists()  # stopped before anything was written


FACTORY = """\
from distributed import LocalCluster

made = []


def local(n_workers=1, memory_limit="1GiB"):
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, memory_limit=memory_limit,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0")
    made.append(cluster)
    return cluster


def broken():
    raise RuntimeError("no queue named gpu")
"""


def test_a_cluster_factory_makes_the_cluster_and_is_closed_after(
    reference: Path, synthetic: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    (tmp_path / "lab_cluster.py").write_text(FACTORY)
    options = '[cluster]\nfactory = "lab_cluster:local"\noptions = { n_workers = 2, memory_limit = "1GiB" }\n'
    spec = gated_project(tmp_path, synthetic[0], extra=options)
    loaded = cvplgraph.load_spec(spec)
    assert loaded.cluster.factory == "lab_cluster:local"
    assert dict(loaded.cluster.options) == {"n_workers": 2, "memory_limit": "1GiB"}
    result = cvplgraph.run(loaded)
    assert result.report.dashboard and result.report.dashboard.startswith("http://127.0.0.1:")
    made = sys.modules["lab_cluster"].made
    assert len(made) == 1 and made[0].status.name == "closed"
    pd.testing.assert_frame_equal(centroids(spec).drop(columns="label"), centroids(reference).drop(columns="label"))


def test_factory_errors_name_the_field_and_the_reason(synthetic: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    (tmp_path / "lab_cluster.py").write_text(FACTORY)
    spec = gated_project(tmp_path, synthetic[0], extra='[cluster]\nfactory = "lab_cluster.broken"\n')
    out = subprocess.run(cli(spec), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert 'spec.toml:3: cluster.factory: expected a "module:function" reference' in out.stderr
    assert "got 'lab_cluster.broken'" in out.stderr

    spec = gated_project(tmp_path, synthetic[0], extra='[cluster]\nfactory = "lab_cluster:broken"\n')
    out = subprocess.run(cli(spec), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "cluster.factory 'lab_cluster:broken' failed: RuntimeError: no queue named gpu" in out.stderr
    assert "Traceback" not in out.stderr

    spec = gated_project(tmp_path, synthetic[0], extra='[cluster]\nfactory = "lab_cluster:nothing"\n')
    out = subprocess.run(cli(spec), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "module 'lab_cluster' has no function 'nothing'" in out.stderr
    assert not (tmp_path / "cache").exists()


def worker_pids(address: str) -> dict[str, int]:
    from distributed import Client

    with Client(address, timeout="10s") as client:
        return client.run(os.getpid)


def test_a_worker_killed_mid_run_changes_nothing(
    two_workers: str, reference: Path, synthetic: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """Both workers block inside the plugin's tasks until the test has killed one of them, so the kill
    always lands in the middle of the run; the nanny restarts the worker and its tasks run again."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    started.mkdir()
    spec = gated_project(tmp_path / "project", synthetic[0], gate=str(gate), started=str(started))
    pids = worker_pids(two_workers)
    run = subprocess.Popen(cli(spec, "--scheduler", two_workers), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len({p.name.rsplit("-", 1)[1] for p in started.iterdir()}) < 2:  # a task blocked on each worker
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the gated tasks never started on both workers"
            time.sleep(0.05)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        gate.touch()
        _, err = run.communicate(timeout=300)
    finally:
        gate.touch()
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    starts = [p.name.rsplit("-", 1) for p in started.iterdir()]
    lost = {block for block, pid in starts if int(pid) == victim}
    assert lost and all(any(b == block and int(pid) != victim for b, pid in starts) for block in lost)
    pd.testing.assert_frame_equal(centroids(spec).drop(columns="label"), centroids(reference).drop(columns="label"))
    assert_same(stored(spec), stored(reference))
    assert [p for p in (spec.parent / "cache" / "partial").rglob("*") if p.is_file()] == []
    verify = subprocess.run([sys.executable, "-m", "cvplgraph", "cache", "verify", str(spec)], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert victim not in worker_pids(two_workers).values()  # replaced by its nanny


def test_a_volume_larger_than_the_workers_memory(tmp_path_factory: pytest.TempPathFactory) -> None:
    """1.5 GiB through two workers limited to 512 MiB each: every worker's peak RSS stays under its limit,
    nothing is spilled to disk, no worker is restarted, and the results equal a threaded run's."""
    from distributed import Client

    from cvplgraph.synth.volume import SynthParams, write_synthetic

    folder = tmp_path_factory.mktemp("large")
    volume = folder / "volume.ome.zarr"
    write_synthetic(str(volume), SynthParams(shape=(192, 1024, 2048), chunks=(64, 256, 256), seed=11))
    limit = 512 * 2**20
    spec = folder / "spec.toml"
    spec.write_text(SPEC.replace("[32, 128, 128]", "[64, 256, 256]").format(url=volume, level=0.3))
    local = folder / "local" / "spec.toml"
    local.parent.mkdir()
    local.write_text(spec.read_text())
    with dask_processes(folder, workers=2, threads=1, memory_limit=str(limit)) as address, Client(address) as client:
        before = client.run(os.getpid)
        result = cvplgraph.run(cvplgraph.load_spec(spec), client=client)
        # peak resident set size of each worker process in bytes (Linux reports KiB)
        peaks = client.run(lambda: __import__("resource").getrusage(0).ru_maxrss * 1024)
        spilled = client.run(lambda dask_worker: tuple(dask_worker.data.spilled_total))
        after = client.run(os.getpid)
    assert result.report.computed == ["mask", "cells", "centroids", "counts"]
    assert before == after  # no worker was restarted for exceeding its limit
    assert all(peak < limit for peak in peaks.values()), {w: f"{p / 2**20:.0f} MiB" for w, p in peaks.items()}
    assert all(s == (0, 0) for s in spilled.values()), spilled
    threaded = cvplgraph.run(cvplgraph.load_spec(local), scheduler="threads")
    assert int(result["counts"].attrs["total"]) == int(threaded["counts"].attrs["total"]) > 50_000
    a, b = centroids(spec), centroids(local)
    np.testing.assert_allclose(a[["z", "y", "x"]].to_numpy(), b[["z", "y", "x"]].to_numpy(), rtol=0, atol=1e-9)


def test_workers_sharing_no_disk_with_the_client_use_an_object_store(
    s3: dict[str, str], synthetic: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """Input and cache on the S3 server; the workers know only its address (from their environment)."""
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.put(str(synthetic[0]), "cvplgraph-test/cluster/volume.ome.zarr", recursive=True)
    project = tmp_path / "project"
    project.mkdir()
    spec = project / "spec.toml"
    spec.write_text(
        SPEC.format(url="s3://cvplgraph-test/cluster/volume.ome.zarr", level=0.3).replace(
            'url = "cache"', 'url = "s3://cvplgraph-test/cluster/cache"'
        )
    )
    local = tmp_path / "local" / "spec.toml"
    local.parent.mkdir()
    local.write_text(SPEC.format(url=synthetic[0], level=0.3))
    s3_env = {k: v for k, v in s3.items() if k.startswith(("AWS_", "FSSPEC_"))}
    worker_dir = tmp_path / "workers"
    worker_dir.mkdir()
    with dask_processes(tmp_path, workers=2, threads=1, env=s3_env, worker_dir=worker_dir) as address:
        out = subprocess.run(cli(spec, "--scheduler", address), capture_output=True, text=True, env=s3, timeout=300)
    assert out.returncode == 0, out.stderr
    cvplgraph.run(cvplgraph.load_spec(local), scheduler="threads")
    pd.testing.assert_frame_equal(centroids(spec).drop(columns="label"), centroids(local).drop(columns="label"))
    assert sorted(p.name for p in project.iterdir()) == ["results", "spec.toml"]  # the cache is on S3 only
    assert fs.ls("cvplgraph-test/cluster/cache/manifest")


SBATCH = """\
#!/usr/bin/env bash
# stand-in for SLURM's sbatch: start the job script on this machine, print a job id as sbatch does
cp "$1" "{jobs}/job-$$.sh"
setsid bash "{jobs}/job-$$.sh" > "{jobs}/job-$$.log" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
SCANCEL = """\
#!/usr/bin/env bash
echo "$@" >> "{jobs}/cancelled"
for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null; done
exit 0
"""


def test_the_slurm_recipe_from_the_docs_runs_a_pipeline(
    reference: Path, synthetic: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/cluster.md's SLURM factory, as written, through dask-jobqueue with stand-in sbatch/scancel."""
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is a test dependency: pip install -e '.[test]'")
    import re

    docs = (Path(__file__).resolve().parents[2] / "docs" / "cluster.md").read_text(encoding="utf-8")
    recipe = next(code for code in re.findall(r"```python\n(.*?)```", docs, flags=re.S) if "SLURMCluster" in code)
    jobs, bin_dir = tmp_path / "jobs", tmp_path / "bin"
    jobs.mkdir()
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(text.format(jobs=jobs))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    project = tmp_path / "project"
    project.mkdir()
    (project / "lab_cluster.py").write_text(recipe)
    options = (
        '[cluster]\nfactory = "lab_cluster:slurm"\noptions = { jobs = 1, cores = 2, processes = 2, memory = "2GiB", '
        f'host = "127.0.0.1", local_directory = "{tmp_path}", worker_extra_args = ["--host", "127.0.0.1"] }}\n'
    )
    spec = gated_project(project, synthetic[0], extra=options)
    result = cvplgraph.run(cvplgraph.load_spec(spec))
    assert result.report.computed == ["scaled", "mask", "cells", "centroids", "counts"]
    pd.testing.assert_frame_equal(centroids(spec).drop(columns="label"), centroids(reference).drop(columns="label"))
    (script,) = jobs.glob("job-*.sh")
    text = script.read_text()
    assert "#SBATCH --mem=" in text and "--nworkers 2" in text and "tcp://127.0.0.1:" in text
    assert (jobs / "cancelled").exists()  # the factory's cluster was closed: its job cancelled


def _profiling(dask_worker) -> bool:  # noqa: ANN001
    return "profile" in dask_worker.periodic_callbacks


@pytest.mark.parametrize("env", [None, "True"])
def test_the_local_cluster_runs_its_workers_without_the_profiler_unless_the_environment_says(
    spec_file: Path, env: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """distributed's statistical profiler keeps a history that grows through a long run (docs/scale.md): the
    LocalCluster a run starts has it off, over the caller's dask settings (on here, as by default); with the
    environment variable set the workers run as those settings say."""
    import dask

    from cvplgraph.engine.cluster import PROFILER_ENV, local_cluster

    spec_file.write_text(spec_file.read_text().replace("[nodes.mask]", "[cluster]\nn_workers = 1\n\n[nodes.mask]"))
    spec = cvplgraph.load_spec(spec_file)
    if env is not None:
        monkeypatch.setenv(PROFILER_ENV, env)
    with dask.config.set({"distributed.worker.profile.enabled": True}), local_cluster(spec) as client:
        (profiling,) = client.run(_profiling).values()
    assert profiling is (env is not None)
