"""Faults injected into real runs: each ends in one line (or a recomputation), never a wrong result.

| fault                        | expected                                                   | test               |
|------------------------------|------------------------------------------------------------|--------------------|
| SIGKILL mid-run              | only whole stores committed; the rerun is byte-identical   | test_cache_crash   |
| SIGTERM mid-run              | exit 143, one line, record saved, nothing partial          | here               |
| a cached chunk deleted       | the run reading it recomputes that node; results equal     | here               |
| disk full while writing      | exit 1, one line naming the store; nothing committed       | here               |
| `cache gc` during a run      | leased keys kept; else the read notices and recomputes     | test_leases        |
| a read-only cache            | cached specs served; the rest one line                     | test_readonly      |
| a garbage manifest entry     | run: one line; ls lists the rest; verify sets it aside     | test_cache_tool    |
| an entry's store outside     | no entry: gc deletes nothing outside the cache             | test_cache_tool    |
| an undecodable input chunk   | one line naming the chunk's file                           | io/test_storage    |
| an input chunk absent        | counted and said by plan and run; refused on request       | io/test_missing_chunks |
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cache.test_cache_crash import (
    assert_same,
    command,
    committed_entries_are_complete,
    project,
    records,
    reference,  # noqa: F401 — a fixture
    run_to_end,
    stored,
    volume,  # noqa: F401 — a fixture
)

pytestmark = pytest.mark.slow  # whole runs in subprocesses


@pytest.mark.parametrize("scheduler", ["threads", None])
def test_sigterm_stops_a_run_like_ctrl_c(
    scheduler: str | None, volume: Path, tmp_path: Path, reference: tuple[dict[str, object], bytes]  # noqa: F811
) -> None:
    """SIGTERM (what a batch system sends at the time limit) to the run's process once chunks are being
    written: exit 143, one line, the record of the interrupted run saved, only whole stores committed,
    no worker left behind; the rerun resumes and is byte-identical."""
    spec = project(tmp_path, volume)
    proc = subprocess.Popen(command(spec, scheduler), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    while proc.poll() is None and records(tmp_path / "cache") < 8:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("cvplgraph: terminated (SIGTERM), interrupted")
    (record,) = (tmp_path / "cache" / "runs").glob("*.json")
    assert json.loads(record.read_text())["status"] == "interrupted"
    with pytest.raises(ProcessLookupError):  # the whole session is gone: no worker process left
        time.sleep(2)
        os.killpg(proc.pid, 0)
    committed_entries_are_complete(spec, reference[0])
    out = run_to_end(spec)
    assert out.returncode == 0, out.stderr
    assert_same(stored(spec), reference[0])
    assert (tmp_path / "results" / "centroids.csv").read_bytes() == reference[1]


def test_a_deleted_cached_chunk_is_recomputed_not_read_as_zeros(
    volume: Path, tmp_path: Path, reference: tuple[dict[str, object], bytes]  # noqa: F811
) -> None:
    """One chunk of the cached mask deleted, then a spec reading the mask (another connectivity): the
    read notices, the mask entry is invalidated and computed again, and the mask equals the reference."""
    spec = project(tmp_path, volume, seconds=0.0)
    assert run_to_end(spec).returncode == 0
    (mask,) = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "manifest").glob("*.json")
               if json.loads(p.read_text())["node"] == "mask"]  # fmt: skip
    chunk = sorted(p for p in (tmp_path / "cache" / mask["store"] / "0" / "c").rglob("*") if p.is_file())[3]
    chunk.unlink()
    spec.write_text(spec.read_text().replace('mask = "mask"\n', 'mask = "mask"\nconnectivity = 26\n'))
    out = run_to_end(spec)
    assert out.returncode == 0, out.stderr
    assert f"chunk 0/{chunk.relative_to(chunk.parents[3]).as_posix()} is missing" in out.stderr
    assert "is invalidated and computed again" in out.stderr
    assert (tmp_path / "cache" / "invalid" / f"{mask['key']}.json").exists()
    assert_same({"mask": stored(spec)["mask"]}, {"mask": reference[0]["mask"]})


def _file_limit(limit: int):  # noqa: ANN202
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_and_commits_nothing(
    volume: Path, tmp_path: Path, reference: tuple[dict[str, object], bytes]  # noqa: F811
) -> None:
    """Files may not grow past 2 kB (RLIMIT_FSIZE: writes fail as on a full disk) — chunk files are
    larger: exit 1, one line naming a file and the reason, no entry committed; the rerun with room
    equals the reference."""
    spec = project(tmp_path, volume, seconds=0.0)
    out = subprocess.run(command(spec, "threads"), capture_output=True, text=True, preexec_fn=_file_limit(2048))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("cvplgraph: error: ") and "File too large" in line and str(tmp_path / "cache") in line
    assert not list((tmp_path / "cache" / "manifest").glob("*.json"))
    out = run_to_end(spec)
    assert out.returncode == 0, out.stderr
    assert_same(stored(spec), reference[0])



def test_every_lowering_writes_under_keys_of_its_own(spec_file: Path) -> None:
    """Writes are effects: two lowerings of the same plan must not share a write task's key, or a
    distributed scheduler that still holds the first run's finished task hands its result back and
    nothing is written (seen in the pipeline benchmark: a client reused after the cache was deleted
    committed a mask store with none of its chunks — now refused as not whole)."""
    import cvplgraph
    from cvplgraph.engine.lower import lower

    plan = cvplgraph.plan(cvplgraph.load_spec(spec_file))
    keys = [{str(w.key) for ws in lower(plan).writes.values() for w in ws} for _ in range(2)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
