"""`cvplgraph cache`: ls, show (provenance), verify (deleted and corrupted chunks), gc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import cvplgraph
from cvplgraph.cache.manifest import Manifest
from cvplgraph.registry import get_op

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvplgraph.cli", *args], capture_output=True, text=True)


def cached(spec_file: Path) -> tuple[cvplgraph.Spec, Manifest]:
    spec = cvplgraph.load_spec(spec_file)
    cvplgraph.run(spec, scheduler="threads")
    return spec, Manifest(spec.cache_url)


def entry_of(manifest: Manifest, node: str):  # noqa: ANN201
    (entry,) = [e for e in manifest.entries() if e.node == node]
    return entry


def stored_chunks(manifest: Manifest, node: str) -> list[Path]:
    store = Path(manifest.root) / entry_of(manifest, node).store
    return sorted(p for p in (store / "0" / "c").rglob("*") if p.is_file())


def test_ls_and_show_give_every_entry_with_its_provenance(spec_file: Path) -> None:
    spec, manifest = cached(spec_file)
    listing = cli("cache", "ls", "--spec", str(spec_file))
    assert listing.returncode == 0, listing.stderr
    for node in ("mask", "cells", "centroids", "counts"):
        assert node in listing.stdout
    mask = entry_of(manifest, "mask")
    shown = cli("cache", "show", mask.key[:8], "--spec", str(spec_file))
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["cvplgraph_version"] == cvplgraph.__version__
    assert document["op_versions"] == {"threshold": get_op("threshold").version}
    assert document["input_fingerprints"] == {"input": cvplgraph.plan(spec).nodes["input"].key}
    assert document["host"] and document["spec"] == str(spec_file.resolve())
    assert document["started"] <= document["finished"]
    cells = json.loads(cli("cache", "show", entry_of(manifest, "counts").key, "--spec", str(spec_file)).stdout)
    upstream = ("threshold", "connected_components", "centroids", "count")
    assert cells["op_versions"] == {op: get_op(op).version for op in upstream}


def test_verify_passes_on_a_sound_cache(spec_file: Path) -> None:
    cached(spec_file)
    for deep in ([], ["--deep"]):
        out = cli("cache", "verify", "--spec", str(spec_file), *deep)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "4 of 4 entries verified" in out.stdout


def test_verify_finds_a_deleted_chunk_and_the_next_run_recomputes(spec_file: Path) -> None:
    spec, manifest = cached(spec_file)
    reference = np.asarray(cvplgraph.run(spec, scheduler="threads")["cells"])
    chunk = stored_chunks(manifest, "cells")[0]
    chunk.unlink()
    out = cli("cache", "verify", "--spec", str(spec_file))
    assert out.returncode == 1
    assert "cells" in out.stdout and "missing" in out.stdout
    assert "cells" in cvplgraph.plan(spec).to_compute() and "mask" not in cvplgraph.plan(spec).to_compute()
    again = cvplgraph.run(spec, scheduler="threads")
    assert again.report.computed[:1] == ["cells"]
    np.testing.assert_array_equal(np.asarray(again["cells"]), reference)
    assert cli("cache", "verify", "--spec", str(spec_file)).returncode == 0


def test_deep_verify_finds_changed_values_that_shallow_verify_cannot(spec_file: Path) -> None:
    spec, manifest = cached(spec_file)
    store = Path(manifest.root) / entry_of(manifest, "mask").store
    array = zarr.open_array(str(store / "0"), mode="r+")
    block = np.asarray(array[:8, :8, :8])
    array[:8, :8, :8] = 1 - block  # a well-formed chunk with other values
    assert cli("cache", "verify", "--spec", str(spec_file)).returncode == 0
    deep = cli("cache", "verify", "--spec", str(spec_file), "--deep")
    assert deep.returncode == 1 and "mask" in deep.stdout and "other values" in deep.stdout
    assert cvplgraph.plan(spec).nodes["mask"].status == "compute"


def test_corrupted_chunk_bytes_are_found_by_deep_verify(spec_file: Path) -> None:
    spec, manifest = cached(spec_file)
    chunk = stored_chunks(manifest, "cells")[0]
    chunk.write_bytes(b"\x00garbage" * 7)
    deep = cli("cache", "verify", "--spec", str(spec_file), "--deep")
    assert deep.returncode == 1 and "cells" in deep.stdout


def test_gc_keeps_everything_a_spec_needs(spec_file: Path, tmp_path: Path) -> None:
    spec, manifest = cached(spec_file)
    old = {e.node: e.key for e in manifest.entries()}
    spec_file.write_text(spec_file.read_text().replace("level = 0.3", "level = 0.4"))
    cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="threads")
    assert len(manifest.entries()) == 8
    dry = cli("cache", "gc", str(spec_file), "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("would remove") == 4 and len(manifest.entries()) == 8
    out = cli("cache", "gc", str(spec_file))
    assert out.returncode == 0, out.stderr
    left = {e.key for e in manifest.entries()}
    assert left.isdisjoint(old.values()) and len(left) == 4
    assert cvplgraph.plan(cvplgraph.load_spec(spec_file)).to_compute() == []  # nothing the spec needs went
    for key in old.values():
        assert not (Path(manifest.root) / "stores" / key).exists()


def test_gc_removes_leftovers_once_idle_and_keeps_every_entry(spec_file: Path) -> None:
    """Leftovers of killed runs (a store and its records without an entry) go once idle for
    --grace hours; records beside a committed entry go at once; entries stay without a spec."""
    spec, manifest = cached(spec_file)
    root = Path(manifest.root)
    cells = entry_of(manifest, "cells")

    def leftover(key: str, days_idle: float) -> list[Path]:
        store = root / "stores" / key / "abc.ome.zarr"
        shutil.copytree(root / cells.store, store)
        record = root / "partial" / key / "abc" / "0" / "0-1.0-1.0-1"
        record.parent.mkdir(parents=True)
        record.write_text('{"0.0.0": null}')
        stamp = time.time() - days_idle * 86400
        for path in [*store.rglob("*"), *record.parent.parent.rglob("*"), store]:
            os.utime(path, (stamp, stamp))
        return [root / "stores" / key, root / "partial" / key]

    stale, fresh = leftover("0" * 24, days_idle=2), leftover("1" * 24, days_idle=0)
    beside = root / "partial" / cells.key / "abc" / "0" / "0-1.0-1.0-1"  # a concurrent run's late record
    beside.parent.mkdir(parents=True)
    beside.write_text("{}")
    entries = {e.key for e in manifest.entries()}

    dry = cli("cache", "gc", "--spec", str(spec_file), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would remove") == 3 and "1" * 24 not in dry.stdout
    assert all(p.exists() for p in [*stale, *fresh, beside])
    out = cli("cache", "gc", "--spec", str(spec_file))
    assert out.returncode == 0 and "entries kept" in out.stdout, out.stderr
    assert not any(p.exists() for p in [*stale, beside]) and all(p.exists() for p in fresh)
    assert {e.key for e in manifest.entries()} == entries
    assert cvplgraph.plan(cvplgraph.load_spec(spec_file)).to_compute() == []
    assert cli("cache", "gc", "--spec", str(spec_file), "--grace", "0").returncode == 0
    assert not any(p.exists() for p in fresh) and {e.key for e in manifest.entries()} == entries


def test_outputs_carry_the_keys_they_came_from(spec_file: Path) -> None:
    spec, manifest = cached(spec_file)
    sidecar = json.loads((spec_file.parent / "results" / "centroids.csv.cvplgraph.json").read_text())
    assert sidecar["node"] == "centroids" and sidecar["key"] == entry_of(manifest, "centroids").key
    assert sidecar["input_fingerprints"] == {"input": cvplgraph.plan(spec).nodes["input"].key}
    assert sidecar["spec"] == str(spec_file.resolve()) and sidecar["cache"] == manifest.url


# --------------------------------------------------------------------------- confinement


def test_a_cache_root_carries_the_cachedir_tag(spec_file: Path) -> None:
    _, manifest = cached(spec_file)
    tag = (Path(manifest.root) / "CACHEDIR.TAG").read_text()
    assert tag.startswith("Signature: 8a477f597d28d172789f06886806bc55")  # the Cache Directory Tagging value


def test_an_entry_naming_a_store_outside_the_cache_touches_nothing_there(spec_file: Path, tmp_path: Path) -> None:
    """A manifest entry whose store is ../../victim: gc with every budget at zero removes the real
    entries and leaves the victim; a run that looks the entry up stops with one line naming it."""
    spec, manifest = cached(spec_file)
    root = Path(manifest.root)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    cells = entry_of(manifest, "cells")
    document = json.loads((root / "manifest" / f"{cells.key}.json").read_text())
    document["store"] = os.path.relpath(victim, root)  # ../../victim
    (root / "manifest" / f"{cells.key}.json").write_text(json.dumps(document))
    assert cells.key not in {e.key for e in manifest.entries()}  # it is no entry
    done = cli("run", str(spec_file), "--quiet", "--scheduler", "threads")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "field store" in done.stderr and "outside the cache" in done.stderr and cells.key in done.stderr
    out = cli("cache", "gc", "--cache", spec.cache_url, "--max-size", "0", "--grace", "0")
    assert out.returncode == 0, out.stderr
    assert (victim / "thesis.txt").read_text() == "years of work"
    assert [p.name for p in (root / "manifest").iterdir()] == [f"{cells.key}.json"]  # the others went


def test_gc_refuses_a_folder_that_is_not_a_cache(tmp_path: Path) -> None:
    """`[cache] url = "."` in a project folder that holds its own stores/ and partial/: no marker, no
    entry: gc says so in one line, exit 1, and deletes nothing."""
    for name in ("stores/data/a.bin", "partial/notes/b.txt"):
        (tmp_path / name).parent.mkdir(parents=True)
        (tmp_path / name).write_text("mine")
    out = cli("cache", "gc", "--cache", str(tmp_path), "--grace", "0")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "not a cvplgraph cache" in out.stderr
    assert (tmp_path / "stores/data/a.bin").read_text() == (tmp_path / "partial/notes/b.txt").read_text() == "mine"


@pytest.mark.parametrize("action", ["ls", "verify", "gc"])
def test_a_cache_url_with_nothing_there_or_a_file_is_one_line(tmp_path: Path, action: str) -> None:
    """A mistyped --cache must not read as an empty, healthy cache ("0 of 0 verified", exit 0)."""
    afile = tmp_path / "cache.txt"
    afile.write_text("not a cache")
    for url, words in ((tmp_path / "nowhere", "no cache there"), (afile, "is a file")):
        out = cli("cache", action, "--cache", str(url))
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert words in out.stderr and str(url) in out.stderr and "Traceback" not in out.stderr
    assert afile.read_text() == "not a cache" and not (tmp_path / "nowhere").exists()


GARBAGE = {
    "random bytes": bytes(np.random.default_rng(4).integers(0, 256, 300, dtype=np.uint8)),
    "not JSON": b'{"key": ',
    "a JSON list": b"[1, 2]",
    "missing fields": b'{"key": "abc"}',
    "an extra field": None,  # the real entry with one field more
    "a wrong type": None,  # the real entry with created = "yesterday"
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_a_garbage_entry_file_is_one_line_listed_and_set_aside(spec_file: Path, kind: str) -> None:
    """run: one line naming the file and the fix; ls: the good entries, the bad file on stderr; verify: the
    file reported and moved to invalid/, exit 1; then the run recomputes that node only."""
    spec, manifest = cached(spec_file)
    counts = entry_of(manifest, "counts")
    path = Path(manifest.root) / "manifest" / f"{counts.key}.json"
    document = json.loads(path.read_text())
    if kind == "an extra field":
        path.write_text(json.dumps({**document, "colour": "blue"}))
    elif kind == "a wrong type":
        path.write_text(json.dumps({**document, "created": "yesterday"}))
    else:
        path.write_bytes(GARBAGE[kind])
    garbage = path.read_bytes()
    shown = f"{spec.cache_url}/manifest/{counts.key}.json: unreadable cache entry ("

    done = cli("run", str(spec_file), "--quiet", "--scheduler", "threads")
    assert done.returncode == 1 and done.stderr.startswith(f"cvplgraph: error: {shown}"), done.stderr
    assert done.stderr.count("\n") == 1 and f"`cvplgraph cache verify --cache {spec.cache_url}`" in done.stderr

    listing = cli("cache", "ls", "--spec", str(spec_file))
    assert listing.returncode == 0, listing.stderr
    assert all(node in listing.stdout for node in ("mask", "cells", "centroids")) and "counts" not in listing.stdout
    assert listing.stderr.startswith(f"warning: {shown}") and listing.stderr.count("\n") == 1

    checked = cli("cache", "verify", "--spec", str(spec_file))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert f"invalid {spec.cache_url}/manifest/{counts.key}.json: unreadable (" in checked.stdout
    assert "3 of 4 entries verified" in checked.stdout
    assert (Path(manifest.root) / "invalid" / f"{counts.key}.json").read_bytes() == garbage
    assert not path.exists()

    again = cli("run", str(spec_file), "--quiet", "--scheduler", "threads")
    assert again.returncode == 0, again.stderr
    assert entry_of(manifest, "counts").key == counts.key
