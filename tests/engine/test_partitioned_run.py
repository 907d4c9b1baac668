"""A run's Points tables in partitions: outputs written partition by partition, results read lazily from the
cache, the same rows as a table merged in one partition, over several chunkings."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from conftest import SPEC

import cvplgraph
from cvplgraph.ops import measure

pytestmark = pytest.mark.slow  # whole runs; see pyproject.toml's markers

OUTPUTS = """
[outputs]
centroids = ["results/centroids.csv", "results/centroids.parquet"]
counts = "results/counts.csv"
"""


def _run(
    folder: Path, url: Path, chunks: tuple[int, int, int], rows: int, monkeypatch: pytest.MonkeyPatch,
    blocks: int | None = None,
) -> Path:  # fmt: skip
    """The standard spec read in ``chunks`` in ``folder``: partitions of ``blocks`` blocks along x (or, None, of
    slabs of ``rows`` block rows)."""
    folder.mkdir()
    text = SPEC.format(url=url, level=0.3).replace("[cache]", f"chunks = {list(chunks)}\n\n[cache]")
    (folder / "spec.toml").write_text(text.split("[outputs]")[0] + OUTPUTS)
    monkeypatch.setattr(measure, "ROWS_PER_PARTITION", rows)
    monkeypatch.setattr(measure, "BLOCKS_PER_PARTITION", blocks)
    results = cvplgraph.run(cvplgraph.load_spec(folder / "spec.toml"), scheduler="threads")
    table = results["centroids"]
    assert all(isinstance(table[c].data, da.Array) for c in table.data_vars)  # read from the cache when asked
    return folder / "results"


@pytest.mark.parametrize("chunks", [(12, 96, 96), (16, 64, 192), (48, 48, 48)])
def test_partitioned_outputs_equal_one_partition(
    synthetic: tuple[Path, pd.DataFrame], tmp_path: Path, chunks: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the partitioning, the CSV (streamed partition after partition into one file) and the Parquet
    dataset hold the rows of the table merged in one partition, bit for bit; the counts are the same; no
    piece of an output is left beside it."""
    url, truth = synthetic
    one = _run(tmp_path / "one", url, chunks, 10**6, monkeypatch)
    many = _run(tmp_path / "many", url, chunks, 1, monkeypatch, blocks=1)
    expected = pd.read_csv(one / "centroids.csv")
    got = pd.read_csv(many / "centroids.csv")
    assert len(got) == len(expected) and abs(len(got) - len(truth)) <= 0.02 * len(truth)
    assert expected["label"].is_monotonic_increasing  # one partition: sorted by label, as always
    pd.testing.assert_frame_equal(got.sort_values("label", ignore_index=True), expected, check_exact=True)
    parquet = pd.read_parquet(many / "centroids.parquet")
    grid = [-(-n // c) for n, c in zip((48, 192, 192), chunks)]
    assert len(list((many / "centroids.parquet").glob("part-*.parquet"))) == grid[0] * grid[1] * grid[2] + 1
    pd.testing.assert_frame_equal(parquet, got, check_exact=True, check_dtype=False)
    assert (many / "counts.csv").read_bytes() == (one / "counts.csv").read_bytes()
    assert not [p for p in many.iterdir() if p.name.startswith(".")]


def test_a_failed_run_leaves_the_outputs_as_they_were(
    synthetic: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails after partitions were written keeps the earlier output files and leaves no pieces."""
    url, _ = synthetic
    results = _run(tmp_path / "run", url, (12, 96, 96), 1, monkeypatch)
    before = {p.name: p.read_bytes() for p in results.glob("*.csv")}
    (tmp_path / "run" / "spec.toml").write_text((tmp_path / "run" / "spec.toml").read_text().replace("0.3", "0.31"))

    def broken(*args: object) -> None:
        raise RuntimeError("a partition that cannot be made")

    monkeypatch.setattr(measure, "_partition_frame", broken)
    with pytest.raises(cvplgraph.errors.CvplError, match="cannot be made"):
        cvplgraph.run(cvplgraph.load_spec(tmp_path / "run" / "spec.toml"), scheduler="threads")
    assert {p.name: p.read_bytes() for p in results.glob("*.csv")} == before
    assert not [p for p in results.iterdir() if p.name.startswith(".")]
    np.testing.assert_array_equal(pd.read_parquet(results / "centroids.parquet")["label"],
                                  pd.read_csv(results / "centroids.csv")["label"])  # fmt: skip
