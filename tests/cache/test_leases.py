"""Leases: `cache gc` while a run reads and writes the same cache.

Each test starts `cvplgraph cache gc` as a real process at the moment the run's first task starts
(a dask callback), so gc acts while the run holds open stores; every result is compared with the
same spec run on a cache of its own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dask.callbacks import Callback

import cvplgraph
from cvplgraph.cache.lease import LIVE_SECONDS, Holder, leased_keys, leases
from cvplgraph.cache.manifest import Manifest
from cvplgraph.engine.execute import execute
from cvplgraph.errors import CacheError

pytestmark = pytest.mark.slow  # whole runs and subprocesses; see pyproject.toml's markers


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvplgraph.cli", *args], capture_output=True, text=True)


def variant(spec_file: Path, name: str, *, level: float = 0.3, connectivity: int = 6, cache: str = "cache") -> Path:
    """The fixture's spec with another threshold level, connectivity or cache."""
    text = spec_file.read_text().replace("level = 0.3", f"level = {level}")
    text = text.replace('mask = "mask"\n', f'mask = "mask"\nconnectivity = {connectivity}\n', 1)
    text = text.replace('url = "cache"', f'url = "{cache}"').replace("results/", f"results-{name}/")
    path = spec_file.parent / f"{name}.toml"
    path.write_text(text)
    return path


class DuringRun(Callback):
    """Calls ``action`` once, when the first task of the run's compute starts."""

    def __init__(self, action) -> None:  # noqa: ANN001
        super().__init__()
        self.action, self.out = action, None

    def _pretask(self, key, dask, state) -> None:  # noqa: ANN001
        if self.out is None:
            self.out = self.action()


def counted(results) -> pd.DataFrame:  # noqa: ANN001
    return results["centroids"].to_dataframe().sort_values(["z", "y", "x"]).reset_index(drop=True)


@pytest.fixture
def setup(spec_file: Path) -> tuple[Path, Path, pd.DataFrame, Manifest]:
    """A cache holding the fixture spec's nodes; spec ``b`` reads its mask and computes other labels;
    spec ``other`` shares no node with either; ``b``'s reference run on a cache of its own."""
    cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="threads")
    b = variant(spec_file, "b", connectivity=26)
    other = variant(spec_file, "other", level=0.5)
    alone = cvplgraph.load_spec(variant(spec_file, "ref", connectivity=26, cache="ref"))
    reference = counted(cvplgraph.run(alone, scheduler="threads"))
    return b, other, reference, Manifest(cvplgraph.load_spec(spec_file).cache_url)


def mask_key(spec: Path) -> str:
    return cvplgraph.plan(cvplgraph.load_spec(spec)).nodes["mask"].key


def test_gc_leaves_what_a_running_run_reads_and_writes(setup: tuple[Path, Path, pd.DataFrame, Manifest]) -> None:
    """gc of a spec sharing nothing with the run, every budget at zero, while the run computes: the
    cached mask it reads and the stores it writes stay; the run's cells equal the reference."""
    b, other, reference, manifest = setup
    key = mask_key(b)
    with DuringRun(lambda: cli("cache", "gc", str(other), "--max-size", "0", "--grace", "0")) as during:
        results = cvplgraph.run(cvplgraph.load_spec(b), scheduler="threads")
    assert during.out.returncode == 0, during.out.stderr
    assert f"kept {key} (mask): in use by a run of " in during.out.stdout
    assert results.report.cached == ["mask"]
    pd.testing.assert_frame_equal(counted(results), reference)
    assert cli("cache", "verify", "--deep", "--spec", str(b)).returncode == 0
    assert leased_keys(manifest) == {}  # released when the run ended
    out = cli("cache", "gc", str(other), "--grace", "0")  # nobody holds them now: removed
    assert f"removed {key} (mask" in out.stdout


def test_an_expired_lease_protects_nothing_and_the_run_notices(
    setup: tuple[Path, Path, pd.DataFrame, Manifest],
) -> None:
    """A run whose lease is gone (as when it was not renewed in time): gc removes the mask it reads
    mid-run; the reads notice the absent chunks (never zeros), the run invalidates the entry,
    computes the mask again and gives the reference cells."""
    b, other, reference, manifest = setup

    def expire_then_gc() -> subprocess.CompletedProcess[str]:
        for path in (Path(manifest.root) / "leases").glob("*.json"):
            path.unlink()
        return cli("cache", "gc", str(other))

    with DuringRun(expire_then_gc) as during:
        results = cvplgraph.run(cvplgraph.load_spec(b), scheduler="threads")
    assert f"removed {mask_key(b)} (mask" in during.out.stdout
    assert "mask" in results.report.computed  # planned again: the mask was computed, not read as zeros
    pd.testing.assert_frame_equal(counted(results), reference)
    assert cli("cache", "verify", "--deep", "--spec", str(b)).returncode == 0
    again = cvplgraph.run(cvplgraph.load_spec(b), scheduler="threads")
    assert again.report.computed == []
    pd.testing.assert_frame_equal(counted(again), reference)


def test_a_store_removed_while_written_is_never_committed(setup: tuple[Path, Path, pd.DataFrame, Manifest]) -> None:
    """With the lease gone and --grace 0, gc deletes the stores the run is writing: the run stops with
    a CacheError and commits none of them; the next run computes them and equals the reference."""
    b, other, reference, manifest = setup

    def expire_then_gc() -> subprocess.CompletedProcess[str]:
        for path in (Path(manifest.root) / "leases").glob("*.json"):
            path.unlink()
        return cli("cache", "gc", "--spec", str(b), "--grace", "0")

    before = {e.key for e in manifest.entries()}
    with DuringRun(expire_then_gc) as during, pytest.raises(CacheError, match="removed while this run wrote"):
        cvplgraph.run(cvplgraph.load_spec(b), scheduler="threads")
    assert "leftovers removed" in during.out.stdout and "stores/" in during.out.stdout
    assert {e.key for e in manifest.entries()} == before  # nothing committed
    assert cli("cache", "verify", "--deep", "--spec", str(b)).returncode == 0
    pd.testing.assert_frame_equal(counted(cvplgraph.run(cvplgraph.load_spec(b), scheduler="threads")), reference)


def test_a_run_plans_again_when_gc_removed_an_entry_after_planning(
    setup: tuple[Path, Path, pd.DataFrame, Manifest],
) -> None:
    """gc between `plan` and the compute (no lease yet): the run finds the entry gone once its lease is
    written, plans again and computes the mask."""
    b, other, reference, _ = setup
    plan = cvplgraph.plan(cvplgraph.load_spec(b))
    assert plan.cached() == ["mask"]
    assert cli("cache", "gc", str(other)).returncode == 0
    results = execute(plan, scheduler="threads")
    assert "mask" in results.report.computed
    pd.testing.assert_frame_equal(counted(results), reference)


def test_lease_liveness(tmp_path: Path) -> None:
    """Live: renewed lately by a process that exists. Dead: a pid gone on this host, or not renewed
    for LIVE_SECONDS (any host); gc removes dead leases."""
    manifest = Manifest(str(tmp_path / "cache"))
    with Holder(manifest, "a.toml") as holder:
        holder.hold(["k1"], ["k2"])
        live, dead = leases(manifest)
        assert [lease.keys for lease in live] == [{"k1", "k2"}] and dead == []
        folder = tmp_path / "cache" / "leases"
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        document = {"id": "x", "host": socket.gethostname(), "pid": int(gone.stdout), "spec": "", "reads": ["k3"],
                    "writes": [], "started": 0.0}  # fmt: skip
        (folder / "x.json").write_text(json.dumps(document))
        elsewhere = {**document, "id": "y", "host": "another-host", "reads": ["k4"]}
        (folder / "y.json").write_text(json.dumps(elsewhere))
        stale = {**elsewhere, "id": "z", "reads": ["k5"]}
        (folder / "z.json").write_text(json.dumps(stale))
        old = time.time() - LIVE_SECONDS - 5
        os.utime(folder / "z.json", (old, old))
        assert set(leased_keys(manifest)) == {"k1", "k2", "k4"}
        assert sorted(Path(p).name for p in leases(manifest)[1]) == ["x.json", "z.json"]
    assert set(leased_keys(manifest)) == {"k4"}  # released


def test_a_read_only_cache_gives_no_lease_and_the_run_still_reads(spec_file: Path, tmp_path: Path) -> None:
    """A lease that cannot be written (here: `leases` is a file) leaves the holder without one; the
    fully cached run reads its results all the same."""
    spec = cvplgraph.load_spec(spec_file)
    first = cvplgraph.run(spec, scheduler="threads")
    Manifest(spec.cache_url).fs.rm(f"{Manifest(spec.cache_url).root}/leases", recursive=True)
    (Path(Manifest(spec.cache_url).root) / "leases").write_text("not a folder")
    again = cvplgraph.run(spec, scheduler="threads")
    assert again.report.computed == []
    np.testing.assert_array_equal(np.asarray(again["counts"]), np.asarray(first["counts"]))
