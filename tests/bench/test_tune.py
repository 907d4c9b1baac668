"""`cvplgraph tune`: adaptive search, range widening, pooled crops, flooding, objectives, readable
values and trial files, checked against an independent whole-array scipy pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cvplgraph.bench.metrics import match
from cvplgraph.bench.ranges import Range, even_steps, readable, widen
from cvplgraph.bench.space import grid_from_table, parse_param
from cvplgraph.bench.suite import load_suite
from cvplgraph.bench.tune import tune
from cvplgraph.errors import CvplError
from cvplgraph.io.stores import read_input
from cvplgraph.spec.model import InputSpec
from cvplgraph.synth.volume import SynthParams, write_synthetic

ROOT = Path(__file__).parents[2]
PARAMS = SynthParams(shape=(24, 80, 80), chunks=(12, 40, 40), seed=11, noise=0.04)
UM = ["z_um", "y_um", "x_um"]
TOLERANCE = 4.0


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tune")
    url, truth = folder / "image.ome.zarr", folder / "cells.csv"
    write_synthetic(str(url), PARAMS, str(truth))
    return url, truth


def threshold_spec(folder: Path, url: Path, extra: str = "") -> Path:
    """threshold → connected components → centroids, with its own cache."""
    spec = folder / "spec.toml"
    spec.write_text(
        f'[input]\nurl = "{url}"\n\n[cache]\nurl = "{folder / "cache"}"\n\n'
        '[nodes.mask]\nop = "threshold"\nimage = "input"\nlevel = 0.3\n\n'
        '[nodes.cells]\nop = "connected_components"\nmask = "mask"\n\n'
        f'[nodes.centroids]\nop = "centroids"\nlabels = "cells"\nimage = "input"\n{extra}'
    )
    return spec


def reference(
    url: Path, truth: Path, level: float, box: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(found, true) centres in µm: the whole-array scipy pipeline (threshold, label,
    intensity-weighted centres) on the box, and the truth inside it."""
    image = read_input(InputSpec(str(url)))
    box = box or tuple(v for n in image.shape for v in (0, n))
    cut = tuple(slice(a, b) for a, b in zip(box[::2], box[1::2]))
    scale = np.asarray(image.attrs["scale"])
    pixels = np.asarray(image.data[cut])
    origin = np.asarray(image.attrs["translation"]) + scale * np.array(box[::2])
    labels, n = ndimage.label(pixels > level)
    found = origin + np.array(ndimage.center_of_mass(pixels, labels, range(1, n + 1))).reshape(-1, 3) * scale
    true = pd.read_csv(truth)[UM].to_numpy()
    low, high = origin - scale / 2, origin + (np.array(pixels.shape) - 0.5) * scale
    return found, true[np.all((true >= low) & (true < high), axis=1)]


def reference_f1(url: Path, truth: Path, level: float, box: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """(found, tp, true) of :func:`reference` matched within the tolerance."""
    found, true = reference(url, truth, level, box)
    return len(found), match(found, true, TOLERANCE).tp, len(true)


def f1_of(found: int, tp: int, true: int) -> float:
    return 2 * tp / (found + true) if found + true else 1.0


def quiet(*_: object) -> None:
    return None


# --------------------------------------------------------------------------- parameters (no runs)


def test_parameter_forms_and_readable_values() -> None:
    assert parse_param("mask.level=0.1..0.5") == (("mask", "level"), Range(0.1, 0.5))
    assert parse_param("cells.threshold=2..12:log") == (("cells", "threshold"), Range(2.0, 12.0, log=True))
    assert parse_param("blobs.num_sigma=3..10:int") == (("blobs", "num_sigma"), Range(3, 10, integer=True))
    for bad in ("mask.level=0.5..0.1", "mask.level=0..1:log", "mask.level=1..2:cubic", "mask.level=1.5..3:int"):
        with pytest.raises(CvplError, match=r"--param 'mask\.level=.*': "):
            parse_param(bad)
    table = {"mask.level": {"low": 0.02, "high": 0.3, "log": True}, "cells.connectivity": [6, 26]}
    assert grid_from_table(table, "s.toml") == {("mask", "level"): Range(0.02, 0.3, log=True),
                                                ("cells", "connectivity"): [6, 26]}  # fmt: skip
    # grid steps and drawn values are rounded: no 0.5857142857
    steps = parse_param("mask.level=0.1:0.5:8")[1]
    assert steps == [0.1, 0.157, 0.214, 0.271, 0.329, 0.386, 0.443, 0.5] and even_steps(0, 1, 3) == [0, 0.5, 1]
    assert readable(0.5857142857, Range(0.1, 0.9)) == 0.586
    assert readable(7.53219, Range(2.0, 12.0, log=True)) == 7.53
    assert readable(0.0123456, Range(0.01, 1.0, log=True)) == 0.0123
    assert readable(6.6, Range(3, 10, integer=True)) == 7
    assert readable(0.09999, Range(0.1, 0.9)) == 0.1  # never outside the range


def test_widening_respects_the_ops_checks() -> None:
    """Linear ends move by half the width, log ends ×2; an end the op refuses moves less."""
    positive = lambda v: None if v > 0 else "a number > 0"  # noqa: E731  (gaussian's sigma check)
    assert widen(Range(1.0, 3.0), "high", positive) == Range(1.0, 4.0)
    assert widen(Range(1.0, 4.0, log=True), "low", positive) == Range(0.5, 4.0, log=True)
    narrower = widen(Range(0.5, 2.0), "low", positive)  # 0.5 - 0.75 < 0: half the step, 0.125, to 0.01
    assert narrower == Range(0.12, 2.0)
    assert widen(Range(0.0001, 2.0), "low", lambda v: None if v >= 0.0001 else "≥ 0.0001") is None
    assert widen(Range(3, 10, integer=True), "high", positive) == Range(3, 14, integer=True)


def test_a_suite_takes_an_anisotropic_tolerance(tmp_path: Path) -> None:
    for given, expected in (("[4, 4, 8]", (4.0, 4.0, 8.0)), ("5", 5)):
        path = tmp_path / "suite.toml"
        path.write_text(f'[bench]\ntolerance_um = {given}\n\n[datasets.d]\ninput = {{ url = "x.ome.zarr" }}\n\n'
                        f'[variants.v]\nspec = "{ROOT / "specs" / "otsu.toml"}"\n')  # fmt: skip
        assert load_suite(path).tolerance_um == expected
    path.write_text(path.read_text().replace("tolerance_um = 5", "tolerance_um = [4, 4]"))
    with pytest.raises(CvplError, match=r"bench\.tolerance_um: expected a positive number of µm, or \[z, y, x\]"):
        load_suite(path)


@pytest.mark.slow
def test_errors_speak_the_commands_syntax(volume: tuple[Path, Path], tmp_path: Path) -> None:
    """Two Points nodes: say --points NODE; unknown parameters and invalid range ends are named."""
    url, truth = volume
    spec = threshold_spec(tmp_path, url, '\n[nodes.again]\nop = "centroids"\nlabels = "cells"\nimage = "input"\n')
    with pytest.raises(CvplError, match=r"has 2 Points nodes \(centroids, again\); say which to score with "
                       r"--points NODE$"):  # fmt: skip
        tune(spec, str(truth), params={("mask", "level"): [0.3]}, log=quiet)
    with pytest.raises(CvplError, match=r"cannot tune mask\.lvl: op threshold has no parameter 'lvl'"):
        tune(spec, str(truth), params={("mask", "lvl"): [0.3]}, points="centroids", log=quiet)
    with pytest.raises(CvplError, match=r"--crop given 2 times for 1 --truth"):
        tune(spec, str(truth), params={("mask", "level"): [0.3]}, points="centroids",
             crop=[(0, 8, 0, 8, 0, 8), (0, 8, 0, 8, 0, 8)], log=quiet)  # fmt: skip
    with pytest.raises(CvplError, match=r"--objective 'precision': expected f1, or recall@K"):
        tune(spec, str(truth), params={("mask", "level"): [0.3]}, points="centroids", objective="precision")


# --------------------------------------------------------------------------- searches (runs)


@pytest.mark.slow
def test_adaptive_search_reaches_the_grids_best_and_scores_like_the_reference(
    volume: tuple[Path, Path], tmp_path: Path
) -> None:
    """One threshold: the adaptive search over the grid's span finds an F1 at least the grid's best,
    and every trial's counts are those of the whole-array scipy pipeline at its level."""
    url, truth = volume
    spec = threshold_spec(tmp_path, url)
    levels = [0.15, 0.3, 0.45, 0.6, 0.75]
    grid = tune(spec, str(truth), params={("mask", "level"): levels}, tolerance_um=TOLERANCE, probe=0, log=quiet)
    adaptive = tune(spec, str(truth), params={("mask", "level"): Range(0.15, 0.75)}, trials=12,
                    tolerance_um=TOLERANCE, probe=0, log=quiet)  # fmt: skip
    assert grid.search == "grid" and adaptive.search == "adaptive" and len(adaptive.trials) == 12
    assert adaptive.best.f1 >= grid.best.f1
    for trial in [*grid.trials, *adaptive.trials]:
        level = trial.values[("mask", "level")]
        found, tp, true = reference_f1(url, truth, level)
        assert (trial.pooled.found, trial.pooled.tp, trial.pooled.true) == (found, tp, true), level
    # the adaptive best is the best of its own trials by the reference, and written as drawn
    best = max(f1_of(*reference_f1(url, truth, t.values[("mask", "level")])) for t in adaptive.trials)
    assert adaptive.best.f1 == pytest.approx(best)
    text = adaptive.spec.read_text()
    chosen = adaptive.values[("mask", "level")]
    assert f"level = {chosen!r}" in text and len(repr(chosen)) <= 5  # 0.xyz: three decimals at most


@pytest.mark.slow
def test_adaptive_batches_share_the_unchanged_prefix_through_the_cache(
    volume: tuple[Path, Path], tmp_path: Path
) -> None:
    """Three batches of a local-threshold offset search: the smoothing no trial changes is computed
    once in the whole search, each trial's own nodes once per trial."""
    url, truth = volume
    text = (ROOT / "specs" / "local_threshold.toml").read_text().replace('url = "synthetic.ome.zarr"', f'url = "{url}"')
    spec = tmp_path / "local.toml"
    spec.write_text(text.replace('url = "cache"', f'url = "{tmp_path / "cache"}"').split("[nodes.counts]")[0])
    result = tune(spec, str(truth), params={("mask", "offset"): Range(0.05, 0.2)}, trials=6, batch=2,
                  tolerance_um=TOLERANCE, probe=0, log=quiet)  # fmt: skip
    distinct = len({tuple(t.values.values()) for t in result.trials})
    assert len([n for n in result.computed if n.endswith(".smooth")]) == 1
    assert len([n for n in result.computed if n.endswith(".mask")]) == distinct


@pytest.mark.slow
def test_a_range_whose_end_holds_the_best_is_widened(volume: tuple[Path, Path], tmp_path: Path) -> None:
    """The optimum threshold lies above 0.2: a search over 0.1..0.2 widens its upper end and finds
    a level above 0.2 that beats every level inside the first range (by the reference)."""
    url, truth = volume
    spec = threshold_spec(tmp_path, url)
    lines: list[str] = []
    result = tune(spec, str(truth), params={("mask", "level"): Range(0.1, 0.2)}, trials=16, batch=4,
                  tolerance_um=TOLERANCE, probe=0, budget=None, log=lines.append)  # fmt: skip
    assert any("lies at the high end of 0.1..0.2; range widened to 0.1..0.25" in line for line in lines), lines
    level = result.values[("mask", "level")]
    inside_first = max(f1_of(*reference_f1(url, truth, v)) for v in (0.1, 0.15, 0.2))
    assert level > 0.2 and result.best.f1 > inside_first


@pytest.mark.slow
def test_a_timeout_stops_between_batches(volume: tuple[Path, Path], tmp_path: Path) -> None:
    """A timeout already passed: the first batch still runs (something to choose from), no more."""
    url, truth = volume
    lines: list[str] = []
    result = tune(threshold_spec(tmp_path, url), str(truth), params={("mask", "level"): Range(0.3, 0.6)}, trials=12,
                  batch=3, timeout=0, tolerance_um=TOLERANCE, probe=0, log=lines.append)  # fmt: skip
    assert len(result.trials) == 3 and result.spec is not None
    assert "timeout: 0 s passed; stopped after 3 trials" in lines


@pytest.mark.slow
def test_two_crops_are_pooled_and_every_trial_is_written(volume: tuple[Path, Path], tmp_path: Path) -> None:
    """Two crops: the pooled counts are the sums of the per-crop counts, which are the reference's on
    each crop; trials.csv and each trial's points file hold what was scored."""
    url, truth = volume
    spec = threshold_spec(tmp_path, url)
    boxes = [(0, 24, 0, 40, 0, 80), (0, 24, 40, 80, 0, 80)]
    result = tune(spec, [str(truth), str(truth)], crop=boxes, params={("mask", "level"): [0.3, 0.5]},
                  tolerance_um=TOLERANCE, probe=0, cv=True, log=quiet)  # fmt: skip
    assert result.crops == ["crop1", "crop2"]
    table = pd.read_csv(result.folder / "trials.csv")
    assert list(table.columns[:2]) == ["trial", "mask.level"] and {"f1 crop1", "f1 crop2", "flooded"} <= set(table)
    for trial, row in zip(result.trials, table.itertuples()):
        per = [reference_f1(url, truth, trial.values[("mask", "level")], box) for box in boxes]
        for name, (found, tp, true) in zip(("crop1", "crop2"), per):
            assert (trial.crops[name].found, trial.crops[name].tp, trial.crops[name].true) == (found, tp, true)
        s = trial.pooled
        assert (s.found, s.tp, s.true) == tuple(sum(p[i] for p in per) for i in range(3))
        assert (s.fp, s.fn) == (s.found - s.tp, s.true - s.tp) and s.f1 == pytest.approx(f1_of(s.found, s.tp, s.true))
        assert (row.found, row.tp, row.fp, row.fn) == (s.found, s.tp, s.fp, s.fn) and row.f1 == pytest.approx(s.f1)
        points = pd.read_csv(result.folder / "trials" / f"{trial.number:04d}.csv")
        assert points["crop"].value_counts().to_dict() == {n: c.found for n, c in trial.crops.items()}
        for (name, score), box in zip(trial.crops.items(), boxes):  # the written points re-scored: same tp
            mine = points[points["crop"] == name][UM].to_numpy()
            _, true = reference(url, truth, 0.5, box)
            assert match(mine, true, TOLERANCE).tp == score.tp
    assert [held for held, _, _ in result.cv] == ["crop1", "crop2"]


@pytest.mark.slow
def test_flooding_trials_are_stopped_after_the_probe(volume: tuple[Path, Path], tmp_path: Path) -> None:
    """A threshold in the noise floods: marked, run on the probe only (its points file holds probe
    points), scored 0; a sensible one runs on the crop. Without the probe the flood is still marked."""
    url, truth = volume
    spec = threshold_spec(tmp_path, url)
    result = tune(spec, str(truth), params={("mask", "level"): [0.1, 0.45]}, tolerance_um=TOLERANCE, budget=5,
                  log=quiet)  # fmt: skip
    flood, good = result.trials
    found, _, true = reference_f1(url, truth, 0.1)
    assert found > 5 * true  # the reference agrees that 0.1 floods
    assert flood.flooded and flood.crops == {} and flood.objective == 0.0
    assert set(pd.read_csv(result.folder / "trials" / "0001.csv")["crop"]) == {"probe"}
    assert not good.flooded and set(good.crops) == {"crop"} and result.values == {("mask", "level"): 0.45}
    whole = tune(spec, str(truth), params={("mask", "level"): [0.1, 0.45]}, tolerance_um=TOLERANCE, budget=5,
                 probe=0, log=quiet)  # fmt: skip
    assert whole.trials[0].flooded and whole.trials[0].crops["crop"].found == found
    assert pd.read_csv(whole.folder / "trials.csv")["flooded"].tolist() == [True, False]


@pytest.mark.slow
def test_a_probe_smaller_than_a_halo_is_given_up(volume: tuple[Path, Path], tmp_path: Path) -> None:
    """The local threshold's 20 µm mean reaches farther than the probe is wide: the search says so
    and runs every trial on the crop."""
    url, truth = volume
    text = (ROOT / "specs" / "local_threshold.toml").read_text().replace('url = "synthetic.ome.zarr"', f'url = "{url}"')
    spec = tmp_path / "local.toml"
    spec.write_text(text.replace('url = "cache"', f'url = "{tmp_path / "cache"}"').split("[nodes.counts]")[0])
    lines: list[str] = []
    result = tune(spec, str(truth), params={("mask", "offset"): [0.1]}, tolerance_um=TOLERANCE, log=lines.append)
    assert any("cannot run this spec" in line and "trials run on the crops only" in line for line in lines), lines
    (trial,) = result.trials
    assert not trial.flooded and set(trial.crops) == {"crop"} and trial.pooled.tp > 0


@pytest.mark.slow
def test_recall_at_k_scores_trials_over_k_zero(volume: tuple[Path, Path], tmp_path: Path) -> None:
    url, truth = volume
    spec = threshold_spec(tmp_path, url)
    levels = [0.2, 0.45]
    counts = [reference_f1(url, truth, v) for v in levels]
    k = (counts[0][0] / counts[0][2] + counts[1][0] / counts[1][2]) / 2  # between the two trials' ratios
    assert counts[0][0] > k * counts[0][2] >= counts[1][0]
    result = tune(spec, str(truth), params={("mask", "level"): levels}, tolerance_um=TOLERANCE, objective=f"recall@{k}",
                  budget=None, log=quiet)  # fmt: skip
    over, within = result.trials
    assert over.over_budget and over.objective == 0.0 and not within.over_budget
    assert within.objective == pytest.approx(counts[1][1] / counts[1][2])
    assert result.values == {("mask", "level"): 0.45}


@pytest.mark.slow
def test_nothing_matched_warns_and_writes_no_spec(volume: tuple[Path, Path], tmp_path: Path) -> None:
    """Truth moved away from every cell (2 tolerances along x, still inside the image): F1 0 → a
    warning and no tuned spec."""
    url, truth = volume
    moved = tmp_path / "moved.csv"
    cells = pd.read_csv(truth)
    cells["x_um"] = np.where(cells["x_um"] > 60, cells["x_um"] - 2.5 * TOLERANCE, cells["x_um"] + 2.5 * TOLERANCE)
    cells[UM].to_csv(moved, index=False)
    assert reference_f1(url, moved, 0.45)[1] == 0  # nothing matches, by the reference
    lines: list[str] = []
    spec = threshold_spec(tmp_path, url)
    result = tune(spec, str(moved), params={("mask", "level"): [0.45]}, tolerance_um=TOLERANCE, log=lines.append)
    assert result.spec is None and not (tmp_path / "spec.tuned.toml").exists()
    assert any(line.startswith("warning: the best F1 is 0") for line in lines)
    assert not math.isnan(result.best.f1 or 0.0)
