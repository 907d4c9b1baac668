"""Fused lowering: the same bytes as op-by-op lowering, one task per block for a chain.

Each spec runs twice from an empty cache, once with ``fuse=False`` (every op its own tasks) and once
fused; every stored chunk file, every table and every output file must be equal byte for byte, over
several chunkings whose blocks cut cells. scipy on the whole array is the independent reference for
the labels and centroids (tests/ops hold the op-level references; here the lowering is on trial).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

import cvplgraph
from cvplgraph.engine.fuse import find_groups
from cvplgraph.engine.lower import lower
from cvplgraph.engine.plan import make_plan
from cvplgraph.synth.volume import SynthParams, write_synthetic

CHAIN = """\
[input]
url = "{url}"

[cache]
url = "{cache}"

[nodes.mask]
op = "threshold"
image = "input"
level = 0.3
{mask_cache}
[nodes.cells]
op = "connected_components"
mask = "mask"
connectivity = {connectivity}
{cells_cache}
[nodes.centroids]
op = "centroids"
labels = "cells"
{image}
[nodes.counts]
op = "count"
objects = "centroids"
block = [16, 64, 64]

[outputs]
centroids = "{out}/centroids.csv"
"""


CHUNKINGS = [(24, 96, 96), (16, 40, 56), (48, 192, 192)]


@pytest.fixture(scope="module", params=CHUNKINGS, ids=lambda c: "x".join(map(str, c)))
def volume(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """(48, 192, 192) with cells cut by the block faces of each chunking (and one block: nothing cut)."""
    url = tmp_path_factory.mktemp("fuse") / "volume.ome.zarr"
    write_synthetic(str(url), SynthParams(shape=(48, 192, 192), chunks=request.param, seed=5))
    return url


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (chunk records and run-specific names left out) → digest of its bytes;
    stores are named by their content layout, tables by a run id, so tables are compared by value."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel.startswith("stores/") and ".ome.zarr" in rel:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run(tmp: Path, url: Path, fuse: bool, **fields: str) -> tuple[cvplgraph.Results, Path]:
    folder = tmp / ("fused" if fuse else "unfused")
    folder.mkdir()
    spec = folder / "spec.toml"
    text = CHAIN.format(url=url, cache=folder / "cache", out=folder / "results", **fields)
    spec.write_text(text)
    return cvplgraph.run(cvplgraph.load_spec(spec), scheduler="threads", fuse=fuse), folder


def _fields(mask_cache: bool, cells_cache: bool, connectivity: int, image: bool) -> dict[str, str]:
    return {
        "mask_cache": "" if mask_cache else "cache = false\n",
        "cells_cache": "" if cells_cache else "cache = false\n",
        "connectivity": str(connectivity),
        "image": 'image = "input"\n' if image else "",
    }


@pytest.mark.parametrize(
    "mask_cache, cells_cache, connectivity, image",
    [(True, True, 6, True), (False, False, 26, True), (True, False, 6, False), (False, True, 26, False)],
    ids=["all-stored-6", "none-stored-26", "mask-stored-no-image", "labels-stored-26-no-image"],
)
def test_fused_and_unfused_runs_store_the_same_bytes(
    volume: Path, tmp_path: Path, mask_cache: bool, cells_cache: bool, connectivity: int, image: bool
) -> None:
    fields = _fields(mask_cache, cells_cache, connectivity, image)
    plain, plain_dir = _run(tmp_path, volume, False, **fields)
    fused, fused_dir = _run(tmp_path, volume, True, **fields)
    assert plain.report.fused == []
    assert fused.report.fused == [["mask", "cells", "centroids"]]
    # every stored chunk of every array store: same names, same bytes
    stored = _tree(fused_dir / "cache")
    assert stored == _tree(plain_dir / "cache")
    assert any("/0/c/" in k for k in stored) == (mask_cache or cells_cache)
    # the tables, the output file and the written-block counts
    for name in ("centroids", "counts"):
        pd.testing.assert_frame_equal(fused[name].to_dataframe(), plain[name].to_dataframe(), check_exact=True)
    assert (fused_dir / "results/centroids.csv").read_bytes() == (plain_dir / "results/centroids.csv").read_bytes()
    assert fused.report.blocks == plain.report.blocks
    # and both are right: the whole-array reference (labels up to a permutation; centroids exactly)
    image = zarr.open_group(str(volume), mode="r")["0"][...]
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    truth, n = ndimage.label(image > np.float32(0.3), structure=structure)
    table = fused["centroids"].to_dataframe()
    assert len(table) == n
    expected = np.array(ndimage.center_of_mass(np.ones_like(truth), truth, np.arange(1, n + 1)))
    got = table[["z", "y", "x"]].to_numpy()
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], expected[np.lexsort(expected.T[::-1])], rtol=0, atol=1e-9)
    if cells_cache:
        labels = fused["cells"].data.compute()
        assert np.array_equal(labels > 0, truth > 0) and int(labels.max()) == n


def test_a_fused_chain_is_one_task_per_block(spec_file: Path) -> None:
    """read → threshold → label → faces → statistics: one fused task per block and no per-op block tasks."""
    plan = make_plan(cvplgraph.load_spec(spec_file))
    lowered = lower(plan)
    assert lowered.fused == [["mask", "cells", "centroids"]]
    frame = lowered.values["centroids"].frame
    graph = dict(frame.__dask_graph__())
    blocks = int(np.prod(lowered.values["input"].data.numblocks))
    prefixes = [str(k[0] if isinstance(k, tuple) else k).rsplit("-", 1)[0] for k in graph]
    assert prefixes.count("fused") == blocks
    # the mask is written by the fused tasks: no task computes a mask, labels or statistics block alone
    for alone in ("gt", "astype", "_label_block", "faces", "_partial_stats"):
        assert not any(p.startswith(alone) for p in prefixes), alone
    writes = lowered.writes["mask"]
    assert len(writes) == blocks and all("fused" in str(w.key[0]) for w in writes)
    # nothing else reads the input: its chunk reads and checks run inside the fused tasks (one task a block)
    run = {k for c in dask.optimize(frame, *writes) for k in dict(c.__dask_graph__())}
    per_block = [k for k in run if isinstance(k, tuple) and str(k[0]).startswith(("from-zarr", "_finite"))]
    assert per_block == [] and sum(re.fullmatch("fused-[0-9a-f]+", str(k[0])) is not None for k in run) == blocks


def test_five_thresholds_share_one_task_per_block(spec_file: Path, tmp_path: Path) -> None:
    """A sweep over one input: one group, one task per block, five chains inside; the same tables as unfused."""
    text = spec_file.read_text().split("[nodes.mask]")[0]
    for i, level in enumerate((0.2, 0.25, 0.3, 0.35, 0.4)):
        text += (f'[nodes.mask{i}]\nop = "threshold"\nimage = "input"\nlevel = {level}\ncache = false\n\n'
                 f'[nodes.cells{i}]\nop = "connected_components"\nmask = "mask{i}"\ncache = false\n\n'
                 f'[nodes.points{i}]\nop = "centroids"\nlabels = "cells{i}"\nimage = "input"\n\n')  # fmt: skip
    spec_file.write_text(text)
    plan = make_plan(cvplgraph.load_spec(spec_file))
    groups = find_groups(plan)
    assert len(groups) == 1 and groups[0].head == "input" and len(groups[0].chains) == 5
    fused = cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="threads")
    assert len(fused.report.fused) == 1 and len(fused.report.fused[0]) == 15
    spec_file.write_text(text.replace('url = "cache"', f'url = "{tmp_path / "plain"}"'))
    plain = cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="threads", fuse=False)
    for i in range(5):
        pd.testing.assert_frame_equal(fused[f"points{i}"].to_dataframe(), plain[f"points{i}"].to_dataframe(),
                                      check_exact=True)  # fmt: skip
    sizes = [len(fused[f"points{i}"].to_dataframe()) for i in range(5)]
    assert len(set(sizes)) > 1  # the five levels are five different answers, not one chain five times


def test_what_cannot_be_fused_is_lowered_op_by_op(spec_file: Path) -> None:
    """A mask declared as an output, or read by another node too, stays an op of its own (the chain
    starts after it); a multiscale mask store is not written block by block."""
    text = spec_file.read_text()
    spec_file.write_text(text.replace("[outputs]", '[outputs]\nmask = "results/mask.ome.zarr"'))
    groups = find_groups(make_plan(cvplgraph.load_spec(spec_file)))
    assert [(g.head, [c.nodes for c in g.chains]) for g in groups] == [("mask", [["cells", "centroids"]])]
    spec_file.write_text(text.replace('level = 0.3', 'level = 0.3\nstore = { multiscale = 2 }'))
    groups = find_groups(make_plan(cvplgraph.load_spec(spec_file)))
    assert [(g.head, [c.nodes for c in g.chains]) for g in groups] == [("mask", [["cells", "centroids"]])]
    # and the run (as `cvplgraph run` makes it): the record says what was fused
    from cvplgraph.inspect.runlog import run_and_record

    run = run_and_record(make_plan(cvplgraph.load_spec(spec_file)), scheduler="threads")
    assert run.results.report.fused == [["cells", "centroids"]]
    assert run.record["fused"] == [["cells", "centroids"]]
    assert json.loads(Path(run.record_url.removeprefix("file://")).read_text())["fused"] == [["cells", "centroids"]]


def test_kept_blocks_come_back_exactly_sparse_or_whole(tmp_path: Path) -> None:
    """A fused task keeps a pass's labels as their non-zero voxels (given the mask's foreground), or whole when
    the foreground it is given is not all of them (a plugin pass breaking its contract): both read back equal."""
    from cvplgraph.cache.checkpoint import keep_block, read_kept, unpack

    rng = np.random.default_rng(4)
    labels = ((rng.random((6, 7, 9)) < 0.1) * rng.integers(1, 50, (6, 7, 9))).astype(np.uint32)
    foreground = np.flatnonzero(labels)
    elsewhere = np.flatnonzero(labels == 0)[: foreground.size]  # as many voxels, but the wrong ones
    for name, given in (("sparse", foreground), ("short", foreground[1:]), ("wrong", elsewhere), ("none", None)):
        keep_block(labels, str(tmp_path / name), given)
        back = read_kept(str(tmp_path / name), None)
        assert back.dtype == labels.dtype and back.shape == labels.shape
        np.testing.assert_array_equal(back, labels)
    kept_as = {name: len(unpack((tmp_path / name).read_bytes())) for name in ("sparse", "short", "wrong", "none")}
    assert kept_as == {"sparse": 4, "short": 1, "wrong": 1, "none": 1}  # (shape, where, values, dtype) or whole


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("fails", [False, True])
def test_lowering_pauses_the_collector_and_puts_it_back(
    monkeypatch: pytest.MonkeyPatch, enabled: bool, fails: bool
) -> None:
    """The cyclic garbage collector is off while a plan is lowered (engine/lower.paused_gc) and as it was
    afterwards, also when the lowering fails."""
    import gc

    from cvplgraph.engine import lower as lower_module

    during = []

    def fake(*args: object) -> object:
        during.append(gc.isenabled())
        if fails:
            raise RuntimeError("lowering failed")
        return "lowered"

    monkeypatch.setattr(lower_module, "_lower", fake)
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        if fails:
            with pytest.raises(RuntimeError, match="lowering failed"):
                lower_module.lower(None)  # type: ignore[arg-type]
        else:
            assert lower_module.lower(None) == "lowered"  # type: ignore[arg-type]
        assert during == [False]
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
