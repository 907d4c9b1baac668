"""Shared fixtures: small synthetic volumes written as real OME-Zarr stores."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from cvplgraph.demo import write_synthetic
from cvplgraph.synth import SynthParams

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SPEC = """\
[input]
url = "{url}"

[cache]
url = "cache"

[nodes.mask]
op = "threshold"
image = "input"
level = {level}

[nodes.cells]
op = "connected_components"
mask = "mask"

[nodes.centroids]
op = "centroids"
labels = "cells"
image = "input"

[nodes.counts]
op = "count"
objects = "centroids"
block = [32, 128, 128]

[outputs]
centroids = "results/centroids.csv"
counts = "results/counts.csv"
"""


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A (48, 192, 192) volume in (24, 96, 96) chunks and its true cells."""
    folder = tmp_path_factory.mktemp("synthetic")
    url = folder / "volume.ome.zarr"
    cells = write_synthetic(str(url), SynthParams(shape=(48, 192, 192), chunks=(24, 96, 96), seed=3))
    return url, cells


@pytest.fixture
def spec_file(tmp_path: Path, synthetic: tuple[Path, pd.DataFrame]) -> Path:
    """A fresh project folder with the standard 4-node spec over the synthetic volume."""
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(url=synthetic[0], level=0.3))
    return path


@pytest.fixture(autouse=True)
def _plugin_forgotten() -> Iterator[None]:
    """The cache tests load a plugin op, `slow_copy`, into this process: forget it after each test."""
    from cvplgraph.registry import REGISTRY

    yield
    REGISTRY.pop("slow_copy", None)  # together: a later import registers it afresh
    sys.modules.pop("slow_ops", None)
