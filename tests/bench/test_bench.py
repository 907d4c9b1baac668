"""`cvplgraph bench` and `cvplgraph tune`: merged graphs, scores against independent references."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import cvplgraph
from cvplgraph.bench.metrics import match
from cvplgraph.bench.report import write_report
from cvplgraph.bench.run import run_suite
from cvplgraph.bench.space import grid_from_table, parse_param
from cvplgraph.bench.suite import load_suite, split_node_param
from cvplgraph.bench.tune import tune
from cvplgraph.errors import CvplError, SpecError
from cvplgraph.io.stores import read_input
from cvplgraph.synth.volume import SynthParams, write_synthetic

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

ROOT = Path(__file__).parents[2]
PARAMS = SynthParams(shape=(24, 80, 80), chunks=(12, 40, 40), seed=11, noise=0.04)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bench")
    url, truth = folder / "image.ome.zarr", folder / "cells.csv"
    write_synthetic(str(url), PARAMS, str(truth))
    return url, truth


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvplgraph.cli", *args], capture_output=True, text=True, cwd=cwd)


def suite_file(folder: Path, body: str) -> Path:
    path = folder / "suite.toml"
    path.write_text(body)
    return path


def scipy_points(image: np.ndarray, level: float, scale: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Whole-array reference: threshold, label (6-connectivity), intensity-weighted centres, in µm."""
    labels, n = ndimage.label(image > level)
    centres = np.array(ndimage.center_of_mass(image, labels, range(1, n + 1))).reshape(-1, 3)
    return origin + centres * scale


def test_variants_sharing_a_prefix_compute_it_once_and_score_like_the_reference(
    volume: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two offsets of a local threshold share the smoothing node: it is computed once. Each variant's
    score equals matching the whole-array scipy pipeline on its own mask against the truth."""
    url, truth = volume
    suite = suite_file(
        tmp_path,
        f"""
[bench]
output = "out"
tolerance_um = 4.0

[datasets.synthetic]
input = {{ url = "{url}" }}
truth = "{truth}"

[variants.local]
spec = "{ROOT / "specs" / "local_threshold.toml"}"
points = "centroids"
grid = {{ "mask.offset" = [0.05, 0.15] }}
""",
    )
    loaded = load_suite(suite)
    scores, runs = run_suite(loaded, log=lambda *_: None)
    (run,) = runs
    smooth = [n for n in run.computed if n.endswith(".smooth")]
    assert len(smooth) == 1  # shared prefix: once
    assert len(run.computed) == 1 + 2 * 3  # smooth, then mask, cells, centroids per variant
    assert [s.variant for s in scores] == ["local[offset=0.05]", "local[offset=0.15]"]
    true = pd.read_csv(truth)[["z_um", "y_um", "x_um"]].to_numpy()
    for score, offset in zip(scores, (0.05, 0.15)):
        alone = tmp_path / f"alone-{offset}.toml"
        text = (ROOT / "specs" / "local_threshold.toml").read_text()
        text = text.replace('url = "synthetic.ome.zarr"', f'url = "{url}"')
        text = text.replace("offset = 0.1", f"offset = {offset}")
        alone.write_text(text.replace('url = "cache"', f'url = "{tmp_path / "alone-cache"}"').split("[outputs]")[0])
        found = cvplgraph.run(cvplgraph.load_spec(alone), scheduler="threads")["centroids"].to_dataframe()
        m = match(found[["z_um", "y_um", "x_um"]].to_numpy(), true, 4.0)
        assert (score.found, score.tp, score.fp, score.fn) == (len(found), m.tp, m.fp, m.fn)
        assert score.f1 == pytest.approx(m.f1) and score.true == len(true)
    # the shared smoothing counts as the first variant's own time, in the second's total only
    assert scores[0].seconds_own == pytest.approx(scores[0].seconds_total) and scores[0].seconds_own > 0
    assert scores[1].seconds_total > scores[1].seconds_own > 0
    files = write_report(loaded.output, scores, runs, loaded.path)
    table = pd.read_csv(loaded.output / "results.csv")
    assert list(table["variant"]) == [s.variant for s in scores]
    assert table["f1"].tolist() == pytest.approx([s.f1 for s in scores])
    for png in [f for f in files if f.suffix == ".png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_tune_finds_the_best_threshold_of_an_independent_reference(volume: tuple[Path, Path], tmp_path: Path) -> None:
    """On a crop (not aligned with the chunks) the tuned level is the one whose whole-array scipy
    pipeline scores best against the truth inside the crop; the tuned spec carries it."""
    url, truth = volume
    spec = tmp_path / "spec.toml"
    text = (ROOT / "specs" / "demo.toml").read_text()
    text = text.replace('url = "image.ome.zarr"', f'url = "{url}"').replace('url = "atlas"', 'url = "no-atlas"')
    spec.write_text(text.split("[nodes.counts]")[0].replace("[inputs.atlas]", "# [inputs.atlas]")
                    .replace('url = "no-atlas"', '# url = "no-atlas"'))  # fmt: skip
    levels = [0.15, 0.3, 0.55, 0.8]
    crop = (2, 22, 5, 70, 9, 77)
    grid = {("mask", "level"): levels}
    # no flooding budget: every trial, 0.15 (in the noise) too, is scored to the end and compared
    result = tune(spec, str(truth), params=grid, crop=crop, tolerance_um=4.0, budget=None, log=lambda *_: None)

    image = read_input(cvplgraph.load_spec(spec).input)
    box = tuple(slice(a, b) for a, b in zip(crop[::2], crop[1::2]))
    scale = np.asarray(image.attrs["scale"])
    pixels = np.asarray(image.data[box])
    origin = np.asarray(image.attrs["translation"]) + scale * np.array(crop[::2])
    true = pd.read_csv(truth)[["z_um", "y_um", "x_um"]].to_numpy()
    low, high = origin - scale / 2, origin + (np.array(pixels.shape) - 0.5) * scale
    true = true[np.all((true >= low) & (true < high), axis=1)]
    reference = [match(scipy_points(pixels, level, scale, origin), true, 4.0).f1 for level in levels]
    assert [s.f1 for s in result.scores] == pytest.approx(reference)
    best = int(np.argmax(reference))
    assert 0 < best < len(levels) - 1  # the grid brackets the optimum: the test could fail either way
    assert result.values == {("mask", "level"): levels[best]} and result.trials_to_best == best + 1
    tuned = cvplgraph.load_spec(result.spec)
    assert dict(tuned.node("mask").params)["level"] == levels[best]
    assert f"F1 {reference[best]:.3f}" in result.spec.read_text().splitlines()[1]


def test_region_truth_is_compared_per_region(tmp_path: Path) -> None:
    """A synthetic brain crop: the per-region errors hold the true counts of its truth file and the
    found counts of the variant's region table, and big regions are counted within 5 %."""
    from cvplgraph.synth.brain import write_synthetic_brain

    brain = write_synthetic_brain(tmp_path / "brain", atlas="procedural", say=lambda *_: None,
                                  crop_um=((900.0, 1380.0), (4600.0, 5500.0), (2400.0, 3300.0)))  # fmt: skip
    suite = suite_file(
        tmp_path,
        f"""
[datasets.brain]
input = {{ url = "{brain.image}" }}
inputs.atlas = {{ url = "{brain.atlas}" }}
truth = "{brain.cells_csv}"
region_truth = "{brain.regions_csv}"

[variants.demo]
spec = "demo"
points = "centroids"
regions = "regions"
""",
    )
    loaded = load_suite(suite)
    scores, runs = run_suite(loaded, log=lambda *_: None)
    (score,) = scores
    written = {p.name for p in write_report(loaded.output, scores, runs, loaded.path)}
    assert {"regions.csv", "region_errors.png"} <= written
    assert len(pd.read_csv(loaded.output / "regions.csv")) == len(score.regions)
    table = score.regions.set_index("region")
    true = brain.regions.groupby("id")["cells"].sum()
    assert set(true.index) <= set(table.index)
    assert table["true"].to_dict() == {region: true.get(region, 0) for region in table.index}
    assert (table["error"] == table["found"] - table["true"]).all()
    assert table.loc[table.index > 0, "found"].sum() <= score.found
    big = table[(table["true"] >= 100) & (table.index > 0)]
    assert len(big) >= 2 and (big["error_pct"].abs() <= 5).all(), table


def test_parse_param_forms() -> None:
    assert parse_param("mask.level=0.1:0.5:5") == (("mask", "level"), [0.1, 0.2, 0.3, 0.4, 0.5])
    assert parse_param("cells.connectivity=6,26") == (("cells", "connectivity"), [6, 26])
    assert parse_param("blobs.method=log,dog") == (("blobs", "method"), ["log", "dog"])
    with pytest.raises(CvplError, match="node.parameter"):
        parse_param("level=0.3")


def test_node_parameter_keys_are_split_in_one_place_with_one_message() -> None:
    assert split_node_param("mask.level") == ("mask", "level")
    expected = "expected \"node.parameter\", got 'level'"
    with pytest.raises(ValueError, match=expected):
        split_node_param("level")
    with pytest.raises(CvplError, match=expected):  # cvplgraph tune --param
        parse_param("level=0.3")
    with pytest.raises(CvplError, match=expected):  # a spec's [tune] table
        grid_from_table({"level": [0.3]}, "spec.toml")


def test_a_suite_with_mistakes_names_each_line(tmp_path: Path) -> None:
    suite = suite_file(
        tmp_path,
        """
[bench]
tolerance_um = -1

[datasets.a]
synth = { shape = [8, 8] }

[variants.x]
spec = "no/such/spec.toml"

[variants.y]
spec = "otsu"
set = { level = 0.3 }
""",
    )
    with pytest.raises(SpecError) as info:
        load_suite(suite)
    text = str(info.value)
    assert f"{suite}:13: variants.y.set: expected \"node.parameter\", got 'level'" in text
    assert f"{suite}:3: bench.tolerance_um" in text
    assert f"{suite}:6: datasets.a.synth" in text and "shape" in text
    assert f"{suite}:9: variants.x.spec" in text


def test_unreadable_truth_fails_with_one_line_before_anything_runs(volume: tuple[Path, Path], tmp_path: Path) -> None:
    url, _ = volume
    bad = tmp_path / "truth.csv"
    bad.write_text("a,b\n1,2\n")
    suite = suite_file(
        tmp_path,
        f"""
[datasets.d]
input = {{ url = "{url}" }}
truth = "{bad}"

[variants.t]
spec = "{ROOT / "specs" / "otsu.toml"}"
""",
    )
    out = cli("bench", str(suite))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert str(bad) in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "suite-results" / "cache").exists()  # nothing ran


@pytest.mark.parametrize("where", ["threads", "cluster"])
def test_task_seconds_are_attributed_to_every_computed_node(
    where: str, volume: tuple[Path, Path], tmp_path: Path
) -> None:
    """With profile=True a run reports, per node it computed, the seconds spent in its tasks —
    from dask's profiler on threads, from the task stream on a distributed cluster."""
    from distributed import Client, LocalCluster

    from cvplgraph.engine.execute import execute

    url, _ = volume
    spec = tmp_path / "spec.toml"
    text = (ROOT / "specs" / "local_threshold.toml").read_text().replace('url = "synthetic.ome.zarr"', f'url = "{url}"')
    spec.write_text(text.replace('url = "cache"', f'url = "{tmp_path / "cache"}"').split("[outputs]")[0])
    plan = cvplgraph.plan(cvplgraph.load_spec(spec))
    if where == "threads":
        report = execute(plan, scheduler="threads", profile=True).report
    else:
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster) as client:
                report = execute(plan, client=client, profile=True).report
    assert set(report.node_seconds) == {*report.computed, "input"}  # reading the input is the input's
    assert all(seconds > 0 for seconds in report.node_seconds.values())


def test_a_tiff_dataset_is_converted_once_with_its_values_and_voxel_size(tmp_path: Path) -> None:
    """The TIFF becomes an OME-Zarr input holding the same values (scaled by the input's
    intensity range) and the dataset's voxel size; a second run reuses it."""
    import tifffile

    from cvplgraph.spec.model import InputSpec

    rng = np.random.default_rng(0)
    pixels = (rng.random((10, 300, 270)) * 4000).astype(np.uint16)  # planes not multiples of the blocks
    tifffile.imwrite(tmp_path / "crop.tif", pixels)
    suite = suite_file(
        tmp_path,
        f"""
[datasets.crop]
tiff = "crop.tif"
voxel_size = [5.0, 2.0, 2.0]
input = {{ intensity_range = [0, 4000] }}

[variants.t]
spec = "{ROOT / "specs" / "otsu.toml"}"
points = "centroids"
""",
    )
    loaded = load_suite(suite)
    (score,), _ = run_suite(loaded, log=lambda *_: None)
    (store,) = (loaded.output / "datasets").glob("crop-*/image.ome.zarr")
    image = read_input(InputSpec(str(store), intensity_range=(0.0, 4000.0)))  # as the run reads it
    assert tuple(image.attrs["scale"]) == (5.0, 2.0, 2.0)
    np.testing.assert_allclose(np.asarray(image.data), pixels / np.float32(4000), rtol=1e-6)
    stamp = (store / "zarr.json").stat().st_mtime_ns
    (again,), _ = run_suite(loaded, log=lambda *_: None)
    assert (store / "zarr.json").stat().st_mtime_ns == stamp and again.found == score.found
    # a conversion stopped half-way (metadata written, no chunks, no `converted` mark) is done again
    (store.parent / "converted").unlink()
    shutil.rmtree(store / "0")
    (third,), _ = run_suite(loaded, log=lambda *_: None)
    assert third.found == score.found
    np.testing.assert_allclose(np.asarray(read_input(InputSpec(str(store), intensity_range=(0.0, 4000.0))).data),
                               pixels / np.float32(4000), rtol=1e-6)  # fmt: skip


def test_a_parameter_left_at_its_default_is_the_same_node_as_one_given_the_default(
    volume: tuple[Path, Path], tmp_path: Path
) -> None:
    """Nodes are merged by cache key: `level = 0.5` spelled out equals the op's default 0.5."""
    from cvplgraph.bench.graph import merge
    from cvplgraph.spec.parse import load_spec

    specs = {}
    for name, level in (("given", "level = 0.5\n"), ("default", "")):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'[input]\nurl = "{volume[0]}"\n\n[nodes.mask]\nop = "threshold"\nimage = "input"\n{level}'
                        '\n[nodes.cells]\nop = "connected_components"\nmask = "mask"\n')  # fmt: skip
        specs[name] = load_spec(path)
    merged, names = merge(specs, str(tmp_path / "suite.toml"))
    assert [n.name for n in merged.nodes] == ["given.mask", "given.cells"]
    assert names[("default", "cells")] == "given.cells"


def test_the_shipped_methods_suite_holds_the_stress_datasets_it_describes() -> None:
    """benchmarks/methods.toml parses, and each stress dataset has what its comment promises
    (checked on the cell tables, which cost no rendering)."""
    from cvplgraph.synth.cells import make_cells

    synth = {d.name: d.synth for d in load_suite(ROOT / "benchmarks" / "methods.toml").datasets if d.synth}
    for name in ("scaled_0.1", "scaled_10", "offset"):  # dense, only stored differently
        assert {k: v for k, v in synth[name].items() if k not in ("gain", "offset")} == synth["dense"]
    assert (synth["scaled_0.1"]["gain"], synth["scaled_10"]["gain"], synth["offset"]["offset"]) == (0.1, 10.0, 0.5)
    tune_, heldout = dict(synth["hard_tune"]), dict(synth["hard_heldout"])
    assert tune_.pop("seed") != heldout.pop("seed") and tune_ == heldout
    for name, pairs, dim in (("touching_pairs", 0.5, 0.0), ("dim_beside_bright", 0.3, 0.4), ("hard_tune", 0.3, 0.3)):
        params = SynthParams(**synth[name])
        cells = make_cells(params)
        partnered = int((cells["partner"] > cells.index).sum())  # one per pair
        assert abs(partnered / (len(cells) - partnered) - pairs) < 0.05
        if dim:
            assert abs(cells["brightness"].between(*params.dim_brightness).mean() - dim) < 0.05
    strong = SynthParams(**synth["strong_anisotropy"])
    assert strong.voxel_size[0] / strong.voxel_size[1] == 8.0
    assert SynthParams(**synth["low_photons"]).photons > 0
    hard = SynthParams(**synth["hard_tune"])
    assert hard.voxel_size == (4.0, 1.8, 1.8) and hard.photons > 0 and hard.background_amplitude > 0
