"""Every shipped spec loads, and every method family finds the synthetic cells."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

import cvplgraph
from cvplgraph.synth.volume import SynthParams, write_synthetic

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

SPECS = Path(__file__).resolve().parents[2] / "specs"
RUNNABLE = ["cells", "otsu", "local_threshold", "watershed", "blob_log", "blob_dog"]
#: Run elsewhere on the data they need: the demo on a synthetic brain (test_demo.py, test_cli.py); the
#: trained classifiers on their models (tests/ops/test_classifier.py, tests/bench/test_train_objects.py).
ELSEWHERE = ["demo", "classifier", "candidates"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    folder = tmp_path_factory.mktemp("specs")
    cells = write_synthetic(
        str(folder / "synthetic.ome.zarr"), SynthParams(shape=(48, 192, 256), chunks=(24, 96, 128), seed=2)
    )
    for spec in SPECS.glob("*.toml"):
        shutil.copy(spec, folder / spec.name)
    return folder, len(cells)


def test_every_shipped_spec_is_covered() -> None:
    assert sorted(p.stem for p in SPECS.glob("*.toml")) == sorted([*RUNNABLE, *ELSEWHERE])


@pytest.mark.parametrize("name", [*RUNNABLE, "classifier", "candidates"])
def test_spec_loads_and_plans(folder: tuple[Path, int], name: str) -> None:
    """Every shipped spec loads and plans against the synthetic volume: each node gets a key and,
    in a cache that holds nothing of it yet, is to be computed (planning reads no model file, so
    the classifier specs plan too before their models are trained)."""
    spec = cvplgraph.load_spec(folder[0] / f"{name}.toml")
    assert spec.nodes and spec.outputs
    plan = cvplgraph.plan(spec)
    assert sorted(plan.to_compute()) == sorted(n.name for n in spec.nodes)
    keys = [plan.nodes[n.name].key for n in spec.nodes]
    assert all(len(k) == 24 for k in keys) and len(set(keys)) == len(keys)


@pytest.mark.parametrize("name", RUNNABLE)
def test_method_counts_the_synthetic_cells(folder: tuple[Path, int], name: str) -> None:
    path, truth = folder
    spec = cvplgraph.load_spec(path / f"{name}.toml")
    cvplgraph.run(spec, scheduler="threads")
    for node, target in spec.outputs:
        if target.endswith("cells.csv") or node == "centroids":
            found = len(pd.read_csv(target))
            assert abs(found - truth) <= 0.02 * truth, f"{name}/{node}: {found} cells, truth {truth}"


@pytest.mark.parametrize(("gain", "offset"), [(1000.0, 100.0), (20000.0, 0.0)])
def test_cells_spec_finds_the_same_cells_in_uint16_and_float(tmp_path: Path, gain: float, offset: float) -> None:
    """The scan as the microscope writes it (uint16 counts, read as a fraction of 65 535 without
    `normalize`) and as float gives the same cells with the shipped specs/cells.toml: cells at
    0.7–1.4 % of the dtype's range are not lost (a fixed level on [0, 1] would find none)."""
    from cvplgraph.bench.metrics import match

    shape, chunks = (40, 160, 192), (20, 80, 96)
    found = {}
    for dtype, g, o in (("float32", 1.0, 0.0), ("uint16", gain, offset)):
        folder = tmp_path / dtype
        folder.mkdir()
        params = SynthParams(shape=shape, chunks=chunks, seed=4, dtype=dtype, gain=g, offset=o)
        cells = write_synthetic(str(folder / "synthetic.ome.zarr"), params)
        shutil.copy(SPECS / "cells.toml", folder / "cells.toml")
        spec = cvplgraph.load_spec(folder / "cells.toml")
        cvplgraph.run(spec, scheduler="threads")
        found[dtype] = pd.read_csv(folder / "results" / "cells.csv")
    um = ["z_um", "y_um", "x_um"]
    assert len(found["float32"]) >= 0.97 * len(cells)
    m = match(found["uint16"][um].to_numpy(), found["float32"][um].to_numpy(), 1.0)
    assert m.tp >= 0.99 * max(len(found["uint16"]), len(found["float32"])), (m.tp, len(found["uint16"]))


@pytest.mark.parametrize("name", RUNNABLE)
def test_plan_estimates_equal_the_lowered_values(folder: tuple[Path, int], name: str, tmp_path: Path) -> None:
    """`plan` estimates shapes from the ops' kernels without building per-block graphs; every estimate equals
    the shape, chunks and dtype of the value the run's lowering builds."""
    from cvplgraph.engine.estimate import estimate_values, plan_with_estimates
    from cvplgraph.engine.lower import lower
    from cvplgraph.engine.status import Status
    from cvplgraph.values import BlockCounts, Table

    (tmp_path / "synthetic.ome.zarr").symlink_to(folder[0] / "synthetic.ome.zarr")
    shutil.copy(folder[0] / f"{name}.toml", tmp_path)
    spec = cvplgraph.load_spec(tmp_path / f"{name}.toml")  # in an empty cache: every node to compute
    planned = plan_with_estimates(spec)
    assert {p.status for n, p in planned.nodes.items() if n != "input"} == {Status.COMPUTE}
    lowered = lower(planned, with_writes=False).values
    stand_ins = estimate_values(planned)
    assert set(stand_ins) == set(lowered)
    compared = 0
    for node, value in lowered.items():
        estimate = planned.nodes[node]
        if isinstance(value, BlockCounts):
            assert (estimate.shape, estimate.nbytes) == (value.grid_shape, 8 * value.counts.compute().size)
            compared += 1
        elif isinstance(value, Table):
            assert stand_ins[node].geometry == value.geometry, node
        elif hasattr(value, "data") and node != "input":
            chunks = tuple(c[0] for c in value.data.chunks)
            assert (estimate.shape, estimate.chunks, estimate.dtype) == (value.shape, chunks, str(value.dtype)), node
            assert estimate.nbytes == value.data.nbytes
            compared += 1
    assert compared >= 1
