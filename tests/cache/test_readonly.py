"""A read-only cache: it serves fully cached specs, and everything else is one line.

The cache and the first outputs are made read-only with chmod and the commands run without the
right to override file permissions: as root (CI), through `setpriv` dropping CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH, so the permission bits apply as they do to any user.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole runs in subprocesses

UNPRIVILEGED = (
    ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    if os.geteuid() == 0
    else []
)


def cli(*args: str, unprivileged: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = UNPRIVILEGED if unprivileged else []
    return subprocess.run([*prefix, sys.executable, "-m", "cvplgraph.cli", *args], capture_output=True, text=True)


def read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def frozen(spec_file: Path) -> Path:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("running as root needs util-linux's setpriv to drop the permission override")
    assert cli("run", str(spec_file), "--scheduler", "threads", unprivileged=False).returncode == 0
    cache = spec_file.parent / "cache"
    read_only(cache)
    yield cache
    writable(cache)


def test_a_read_only_cache_serves_a_fully_cached_run(spec_file: Path, frozen: Path) -> None:
    results = spec_file.parent / "results"
    before, first = snapshot(frozen), snapshot(results)
    for path in results.iterdir():
        path.unlink()
    out = cli("run", str(spec_file), "--scheduler", "threads")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "not recorded: the cache refused the record" in out.stdout
    assert snapshot(results) == first  # the same outputs, byte for byte
    assert snapshot(frozen) == before  # and the cache untouched
    assert cli("plan", str(spec_file)).returncode == 0
    assert cli("cache", "verify", "--deep", str(spec_file)).returncode == 0


def test_what_a_read_only_cache_cannot_do_is_one_line(spec_file: Path, frozen: Path) -> None:
    before = snapshot(frozen)
    other = spec_file.parent / "other.toml"
    other.write_text(spec_file.read_text().replace("level = 0.3", "level = 0.35").replace("results/", "other/"))
    out = cli("run", str(other), "--scheduler", "threads")
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line == (
        f"cvplgraph: error: {frozen}: cannot write into the cache (read-only?), and 4 node(s) are to be computed "
        "and stored (mask, cells, centroids, counts); expected a writable cache (a read-only one serves fully "
        "cached specs)"
    )
    assert not (spec_file.parent / "other").exists()
    read_only(spec_file.parent / "results")
    try:
        out = cli("run", str(spec_file), "--scheduler", "threads")
    finally:
        writable(spec_file.parent / "results")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"cvplgraph: error: {spec_file.parent / 'results' / 'centroids.csv'}: output 'centroids' cannot be written "
        "(Permission denied)"
    )
    assert snapshot(frozen) == before
