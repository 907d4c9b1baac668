"""Fused tasks spill their small results: a worker holds a handle per block, not a whole brain's partial sums.

Each fused task writes its pass summary and its reduces' partials into the run's scratch folder
(``partial/scratch-<lease id>``) and returns a handle; the union and the slab merges read them back. The kept
labels of a cached node are read back once the lookup table exists (no barrier over every block). A run
removes its scratch folder; the next run removes those of killed runs (their lease is dead), not of live ones.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import zarr
from dask._task_spec import convert_legacy_graph
from scipy import ndimage

import cvplgraph
from cvplgraph.cache.checkpoint import Spilled
from cvplgraph.engine.lower import lower
from cvplgraph.engine.plan import make_plan
from cvplgraph.ops.components import BLOCK_LABELS_ATTR


def _fused_keys(graph: dict) -> list:
    return sorted((k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("fused-")), key=lambda k: k[1])


def test_a_fused_task_returns_a_handle_to_what_it_spilled(spec_file: Path, tmp_path: Path) -> None:
    """Every block's handle names files holding its label count, faces and per-object sums: checked against the
    block labelled on its own (scipy), and the table merged from them equals the one merged in memory."""
    plan = make_plan(cvplgraph.load_spec(spec_file))
    scratch = tmp_path / "scratch"
    spilled = lower(plan, scratch=str(scratch))
    graph = dict(spilled.values["centroids"].frame.__dask_graph__())
    image = zarr.open_group(str(plan.spec.input.url), mode="r")["0"]
    chunks = image.chunks
    grid = [s // c for s, c in zip(image.shape, chunks)]
    keys = _fused_keys(graph)
    assert len(keys) == int(np.prod(grid))
    for flat, key in enumerate(keys):
        (handle, written) = dask.get(graph, key)
        assert isinstance(handle, Spilled) and written == 1  # the cached mask's block
        z, y, x = np.unravel_index(flat, grid)
        block = image[z * chunks[0] : (z + 1) * chunks[0], y * chunks[1] : (y + 1) * chunks[1],
                      x * chunks[2] : (x + 1) * chunks[2]]  # fmt: skip
        labels, n = ndimage.label(block > np.float32(0.3))
        assert int(handle.head) == n
        summary, (ids, stats) = handle.load(0), handle.load(1)
        assert int(summary[0]) == n and ids.tolist() == list(range(1, n + 1))
        assert stats[:, 0].tolist() == np.bincount(labels.ravel())[1:].tolist()  # voxels per object
        assert Path(handle.url + ".0").is_file() and Path(handle.url + ".1").is_file()
        assert Path(handle.url).parent.parent == scratch
    # the same table whether the blocks' results were spilled or held
    held = lower(make_plan(cvplgraph.load_spec(spec_file)))  # no scratch folder: results in memory
    held_graph = dict(held.values["centroids"].frame.__dask_graph__())
    assert isinstance(dask.get(held_graph, _fused_keys(held_graph)[0])[0], tuple)
    (a,), (b,) = dask.compute(spilled.values["centroids"].frame), dask.compute(held.values["centroids"].frame)
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_kept_labels_are_read_back_after_the_lookup_table_only(spec_file: Path, tmp_path: Path) -> None:
    """The kept blocks of a cached labels node wait for the lookup table (which their relabelling waits for anyway),
    not for a task of their own over every block."""
    plan = make_plan(cvplgraph.load_spec(spec_file))
    lowered = lower(plan, scratch=str(tmp_path / "scratch"))
    cells = lowered.values["cells"]
    lut = cells.attrs[BLOCK_LABELS_ATTR].lut.key
    graph = convert_legacy_graph(dict(cells.data.__dask_graph__()))
    kept = [t for k, t in graph.items() if isinstance(k, tuple) and str(k[0]).startswith("kept-")]
    assert len(kept) == int(np.prod(cells.data.numblocks))
    assert all(set(t.dependencies) == {lut} for t in kept)


def _scratch(cache: Path) -> list[str]:
    partial = cache / "partial"
    return sorted(p.name for p in partial.iterdir() if p.name.startswith("scratch-")) if partial.is_dir() else []


def test_a_run_removes_its_scratch_and_a_killed_runs(spec_file: Path) -> None:
    """After a run its scratch folder is gone. A later run removes a killed run's folder (no live lease names it)
    and keeps a running one's (its lease is live)."""
    first = cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="threads")
    assert first.report.fused and len(first["centroids"].to_dataframe()) > 0
    cache = spec_file.parent / "cache"
    assert _scratch(cache) == []
    for name in ("scratch-0123456789abcdef", "scratch-fedcba9876543210"):
        (cache / "partial" / name).mkdir(parents=True)
        (cache / "partial" / name / "7-0.0").write_bytes(b"left by a run")
    lease = {"id": "fedcba9876543210", "host": socket.gethostname(), "pid": os.getpid(), "spec": "another",
             "reads": [], "writes": [], "started": time.time()}  # fmt: skip
    (cache / "leases").mkdir(exist_ok=True)
    (cache / "leases" / "fedcba9876543210.json").write_text(json.dumps(lease))
    spec_file.write_text(spec_file.read_text().replace("level = 0.3", "level = 0.35"))  # something to compute
    second = cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="threads")
    assert second.report.computed
    assert _scratch(cache) == ["scratch-fedcba9876543210"]  # the live run's, untouched
