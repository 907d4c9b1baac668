"""The cache on an object store: an S3 API server (moto) started here on 127.0.0.1.

The same promises as on a local disk: hits, invalidation, kill -9 safety, chunk-level resume,
`cache verify`. The endpoint reaches cvplgraph the way a user would configure it, through fsspec's
environment configuration (``FSSPEC_S3_ENDPOINT_URL``) and the usual AWS variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from test_cache_crash import BLOCKS, assert_same, kill_after, project, run_to_end, start, stored

import cvplgraph

pytestmark = pytest.mark.cluster  # real dask clusters or an S3 server; see pyproject.toml's markers


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    url = tmp_path_factory.mktemp("s3volume") / "volume.ome.zarr"
    write_synthetic(str(url), SynthParams(shape=(64, 128, 128), chunks=(16, 32, 32), seed=5))
    return url


def s3_records(prefix: str) -> int:
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    try:
        found = fs.find(f"{prefix}/partial")
    except FileNotFoundError:
        return 0
    return sum(1 for p in found if not p.endswith("layout.json"))


@pytest.fixture(scope="module")
def local_reference(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], bytes]:
    spec = project(tmp_path_factory.mktemp("s3reference"), volume, seconds=0.0)
    out = run_to_end(spec, dict(os.environ))
    assert out.returncode == 0, out.stderr
    return stored(spec), (spec.parent / "results" / "centroids.csv").read_bytes()


def test_hits_and_invalidation_on_s3(s3: dict[str, str], volume: Path, tmp_path: Path,
                                     local_reference: tuple[dict[str, object], bytes]) -> None:  # fmt: skip
    spec = project(tmp_path, volume, seconds=0.0, cache="s3://cvplgraph-test/hits")
    first = run_to_end(spec, s3)
    assert first.returncode == 0, first.stderr
    assert_same(stored(spec), local_reference[0])  # same bytes as with a local cache
    assert (tmp_path / "results" / "centroids.csv").read_bytes() == local_reference[1]
    assert cvplgraph.plan(cvplgraph.load_spec(spec)).to_compute() == []
    spec.write_text(spec.read_text().replace("level = 0.3", "level = 0.35"))
    plan = cvplgraph.plan(cvplgraph.load_spec(spec))
    assert plan.to_compute() == ["mask", "cells", "centroids"]
    assert plan.nodes["mask"].reasons == ("parameter `level` changed 0.3 → 0.35",)


def test_kill_and_resume_on_s3(s3: dict[str, str], volume: Path, tmp_path: Path,
                               local_reference: tuple[dict[str, object], bytes]) -> None:  # fmt: skip
    prefix = "cvplgraph-test/resume"
    spec = project(tmp_path, volume, cache=f"s3://{prefix}")
    spec.write_text(spec.read_text().split("[nodes.cells]")[0])
    kill_after(start(spec, s3), tmp_path, BLOCKS // 2, counter=lambda: s3_records(prefix))
    plan = cvplgraph.plan(cvplgraph.load_spec(spec))
    now = stored(spec)  # whatever is committed is complete and right
    assert_same(now, {n: local_reference[0][n] for n in now})
    slow = plan.nodes["slow"]
    if "slow" in plan.entries:
        pytest.fail("the run finished before it could be killed; slow down the plugin op")
    assert slow.done is not None and 0 < slow.done < 1
    # the killed run's store and records are leftovers, kept while younger than --grace
    gc = [sys.executable, "-m", "cvplgraph.cli", "cache", "gc", "--spec", str(spec), "--dry-run"]
    young = subprocess.run(gc, capture_output=True, text=True, env=s3)
    assert young.returncode == 0 and "0 leftovers to remove" in young.stdout, young.stderr
    idle = subprocess.run([*gc, "--grace", "0"], capture_output=True, text=True, env=s3)
    assert f"stores/{slow.key}" in idle.stdout and f"partial/{slow.key}" in idle.stdout, idle.stderr
    for f in (tmp_path / "log").iterdir():
        f.unlink()
    again = run_to_end(spec, s3)
    assert again.returncode == 0, again.stderr
    assert 0 < len(list((tmp_path / "log").iterdir())) < BLOCKS  # resumed, not restarted
    assert_same(stored(spec), {n: local_reference[0][n] for n in ("slow", "mask")})


def test_verify_finds_a_deleted_object(s3: dict[str, str], volume: Path, tmp_path: Path) -> None:
    prefix = "cvplgraph-test/verify"
    spec = project(tmp_path, volume, seconds=0.0, cache=f"s3://{prefix}")
    assert run_to_end(spec, s3).returncode == 0
    plan = cvplgraph.plan(cvplgraph.load_spec(spec))
    fs = fsspec.filesystem("s3")
    chunks = sorted(fs.find(f"{prefix}/{plan.entries['mask'].store}/0/c"))
    fs.rm(chunks[len(chunks) // 2])
    out = subprocess.run([sys.executable, "-m", "cvplgraph.cli", "cache", "verify", "--spec", str(spec)],
                         capture_output=True, text=True, env=s3)  # fmt: skip
    assert out.returncode == 1 and "mask" in out.stdout and "missing" in out.stdout
    assert cvplgraph.plan(cvplgraph.load_spec(spec)).nodes["mask"].status == "compute"
