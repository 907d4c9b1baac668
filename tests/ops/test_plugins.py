"""User ops from plugin modules, and the conformance check plugin authors run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import cvplgraph
from cvplgraph import ops
from cvplgraph.errors import SpecError
from cvplgraph.ops.testing import ConformanceError, check_op

pytestmark = pytest.mark.slow  # whole runs, subprocesses or every op's conformance; see pyproject.toml's markers

PLUGIN = '''
import numpy as np
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import like


@op("lab_gain", version=3, inputs={"image": PortType.Image}, output=PortType.Image)
def lab_gain(image, *, gain: float = 1.0):
    """image × gain, clipped to [0, 1]."""
    return like(np.clip(image.data * np.float32(gain), 0, 1).astype(np.float32), image)


@op("lab_block_normalise", version=1, inputs={"image": PortType.Image}, output=PortType.Image)
def lab_block_normalise(image):
    """Divides each block by its own maximum: depends on the chunking (a bug conformance must catch)."""
    return like(image.data.map_blocks(lambda b: (b / b.max()).astype(np.float32)), image)
'''


@pytest.fixture
def plugin_spec(spec_file: Path) -> Path:
    (spec_file.parent / "lab_ops.py").write_text(PLUGIN)
    text = spec_file.read_text()
    text = 'plugins = ["lab_ops"]\n\n' + text.replace(
        '[nodes.mask]\nop = "threshold"\nimage = "input"',
        '[nodes.bright]\nop = "lab_gain"\nimage = "input"\ngain = 2.0\n\n[nodes.mask]\nop = "threshold"\n'
        'image = "bright"',
    )
    spec_file.write_text(text.replace("level = 0.3", "level = 0.6"))
    return spec_file


def test_spec_plugin_op_runs_like_a_builtin(plugin_spec: Path, synthetic: tuple[Path, object]) -> None:
    spec = cvplgraph.load_spec(plugin_spec)
    assert spec.plugins == ("lab_ops",)
    plan = cvplgraph.plan(spec)
    assert plan.nodes["bright"].op == "lab_gain" and plan.to_compute()[0] == "bright"
    results = cvplgraph.run(spec, scheduler="threads")
    image = results["input"].values
    np.testing.assert_allclose(results["bright"].values, np.clip(image * 2, 0, 1))
    # gain 2 and level 0.6 select the voxels that level 0.3 selects on the raw image
    expected = ndimage.label(image > np.float32(0.3))[1]
    assert int(results["counts"].attrs["total"]) == expected


def test_plugin_import_failure_is_a_spec_problem(spec_file: Path) -> None:
    spec_file.write_text('plugins = ["no_such_lab_module"]\n\n' + spec_file.read_text())
    with pytest.raises(SpecError) as info:
        cvplgraph.load_spec(spec_file)
    (problem,) = info.value.problems
    assert problem.field == "plugins" and problem.line == 1
    assert "cannot import plugin module 'no_such_lab_module': ModuleNotFoundError" in problem.message


FAILING = '''
import numpy as np
from cvplgraph.kernels import Pointwise
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import like


def _block(b):
    if b.shape[0] == 24:  # every block of the test volume, on whichever worker it runs
        raise ValueError("no threshold for a block of shape " + str(b.shape))
    return (b > 0.3).astype(np.uint8)


@op("my_threshold", version=1, inputs={"image": PortType.Image}, output=PortType.Mask)
def my_threshold(image, *, when: str = "compute"):
    """Raises in its block function, or while its graph is built (``when = "lowering"``)."""
    if when == "lowering":
        raise ValueError("cannot build a graph")
    return like(image.data.map_blocks(_block, dtype=np.uint8), image)


def _kernel(b, *, when="compute"):
    return _block(b)


@op("my_fused_threshold", version=1, inputs={"image": PortType.Image}, output=PortType.Mask,
    kernel=Pointwise(_kernel))
def my_fused_threshold(image, *, when: str = "compute"):
    """The same, with a kernel: fused into one task per block with the labelling after it."""
    return like(image.data.map_blocks(_kernel, dtype=np.uint8), image)
'''


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("threads", "ValueError: no threshold for a block of shape (24, 96, 96)"),
        ("cluster", "ValueError: no threshold for a block of shape (24, 96, 96)"),
        ("lowering", "ValueError: cannot build a graph"),
        ("fused-threads", "ValueError: no threshold for a block of shape (24, 96, 96)"),
        ("fused-cluster", "ValueError: no threshold for a block of shape (24, 96, 96)"),
    ],
)
def test_a_plugin_op_that_raises_is_one_line_naming_node_and_op(spec_file: Path, where: str, message: str) -> None:
    """An op raising in a dask task (local threads or a LocalCluster's worker process), also inside a fused
    task, or while its graph is built: one line with the node, the op and the exception, exit 1, and nothing
    committed to the cache."""
    import subprocess
    import sys

    (spec_file.parent / "my_ops.py").write_text(FAILING)
    name = "my_fused_threshold" if where.startswith("fused") else "my_threshold"
    where = where.removeprefix("fused-")
    text = 'plugins = ["my_ops"]\n\n' + spec_file.read_text().replace('op = "threshold"', f'op = "{name}"')
    text = text.replace("level = 0.3", 'when = "lowering"' if where == "lowering" else "")
    if where == "cluster":  # the spec's LocalCluster: one worker process, the plugin uploaded to it
        text += "\n[cluster]\nn_workers = 1\n"
    spec_file.write_text(text)
    if name == "my_fused_threshold":  # the op really runs inside the fused tasks
        from cvplgraph.engine.fuse import find_groups

        groups = find_groups(cvplgraph.plan(cvplgraph.load_spec(spec_file)))
        assert [c.nodes for g in groups for c in g.chains] == [["mask", "cells", "centroids"]]
    flag = [] if where == "cluster" else ["--scheduler", "threads"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cvplgraph", "run", str(spec_file), *flag, "--quiet", *extra],
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    out = run()
    assert out.returncode == 1, out.stderr
    assert out.stderr == f"cvplgraph: error: node 'mask' (op '{name}') failed: {message}\n"
    manifest = spec_file.parent / "cache" / "manifest"
    assert not manifest.exists() or not any(manifest.iterdir())
    debug = run("--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and message in debug.stderr


def test_an_op_failure_in_python_names_node_and_op(spec_file: Path) -> None:
    from cvplgraph.errors import OpFailed

    (spec_file.parent / "my_ops.py").write_text(FAILING)
    text = 'plugins = ["my_ops"]\n\n' + spec_file.read_text().replace('op = "threshold"', 'op = "my_threshold"')
    spec_file.write_text(text.replace("level = 0.3", ""))
    with pytest.raises(OpFailed) as info:
        cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="sync")
    assert (info.value.node, info.value.op) == ("mask", "my_threshold")
    assert isinstance(info.value.__cause__, ValueError)


def test_conformance_catches_a_chunk_dependent_op(plugin_spec: Path) -> None:
    cvplgraph.load_spec(plugin_spec)  # imports lab_ops
    import lab_ops  # type: ignore[import-not-found]

    volume = np.random.default_rng(0).random((16, 40, 40)).astype(np.float32)
    check_op(lab_ops.lab_gain, {"image": volume}, params={"gain": 0.5})
    with pytest.raises(ConformanceError, match=r"lab_block_normalise on chunks \(7, 11, 13\): values differ"):
        check_op(lab_ops.lab_block_normalise, {"image": volume})


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(3)
    return ndimage.gaussian_filter(rng.random((20, 48, 52)), 1.5).astype(np.float32)


@pytest.mark.parametrize(
    "op, params, port",
    [
        (ops.threshold, {"level": 0.5}, "image"),
        (ops.gaussian, {"sigma": 1.5}, "image"),
        (ops.background_subtract, {"radius": 3.0}, "image"),
        (ops.local_threshold, {"sigma": 4.0, "offset": 0.01}, "image"),
        (ops.otsu, {}, "image"),
        (ops.normalize, {}, "image"),
        (ops.blobs, {"method": "log", "min_sigma": 1.0, "max_sigma": 2.0, "num_sigma": 3, "threshold": 0.02}, "image"),
        (ops.blobs, {"method": "dog", "min_sigma": 1.0, "max_sigma": 2.0, "threshold": 0.02}, "image"),
        (ops.blobs, {"method": "peaks", "min_sigma": 1.0, "threshold": 0.4}, "image"),
    ],
)
def test_builtin_image_ops_conform(volume: np.ndarray, op, params: dict, port: str) -> None:  # type: ignore[no-untyped-def]
    check_op(op, {port: volume}, params=params)


def test_downsample_conforms(volume: np.ndarray) -> None:
    check_op(ops.downsample, {"image": volume}, params={"factor": (2, 3, 2)}, same_shape=False, atol=1e-6)


def test_builtin_mask_ops_conform(volume: np.ndarray) -> None:
    check_op(ops.connected_components, {"mask": (volume > 0.52).astype(np.uint8)}, params={"connectivity": 26})
    # watershed promises chunk invariance for cells no larger than max_radius: small balls
    z, y, x = np.ogrid[0:20, 0:48, 0:52]
    balls = np.zeros((20, 48, 52), np.uint8)
    for c in [(5, 10, 10), (5, 10, 16), (14, 30, 40), (10, 40, 8), (15, 20, 26)]:
        balls |= ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 12).astype(np.uint8)
    check_op(ops.watershed, {"mask": balls}, params={"min_distance": 3.0, "max_radius": 4.0})
    check_op(ops.watershed, {"mask": balls}, params={"min_distance": 3.0, "max_radius": 4.0, "renumber": False})


def test_conformance_rejects_wrong_dtype() -> None:
    from cvplgraph.registry import REGISTRY, op
    from cvplgraph.types import PortType
    from cvplgraph.values import like

    @op("test_bad_mask_dtype", version=1, inputs={"image": PortType.Image}, output=PortType.Mask)
    def bad(image):  # type: ignore[no-untyped-def]
        return like(image.data > 0.5, image)  # bool, not uint8

    try:
        with pytest.raises(ConformanceError, match="a Mask must be uint8, got bool"):
            check_op(bad, {"image": np.zeros((4, 4, 4), np.float32)})
    finally:
        del REGISTRY["test_bad_mask_dtype"]
