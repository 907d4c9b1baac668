"""run and plan through the Python API: caching, invalidation, outputs, results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import ndimage

import cvplgraph
from cvplgraph.cache.manifest import Manifest
from cvplgraph.io.stores import read_input
from cvplgraph.spec.model import InputSpec

pytestmark = pytest.mark.slow  # whole runs, subprocesses or every op's conformance; see pyproject.toml's markers


def entries(spec: cvplgraph.Spec) -> dict[str, float]:
    return {e.key: e.created for e in Manifest(spec.cache_url).entries()}


def test_first_run_computes_and_commits_everything(spec_file: Path, synthetic: tuple[Path, pd.DataFrame]) -> None:
    spec = cvplgraph.load_spec(spec_file)
    plan = cvplgraph.plan(spec)
    assert plan.to_compute() == ["mask", "cells", "centroids", "counts"]
    assert all(plan.nodes[n].reasons == ("new",) for n in plan.to_compute())
    results = cvplgraph.run(spec, scheduler="threads")
    assert results.report.computed == ["mask", "cells", "centroids", "counts"]
    assert sorted(results.report.committed) == sorted(results.report.computed)
    assert len(entries(spec)) == 4
    # results are xarray objects with physical coordinates
    assert isinstance(results["mask"], xr.DataArray) and results["mask"].dims == ("z", "y", "x")
    assert isinstance(results["centroids"], xr.Dataset)
    np.testing.assert_allclose(results["mask"].attrs["scale"], [4.0, 1.5, 1.5])


def test_results_equal_scipy_on_the_whole_volume(spec_file: Path) -> None:
    spec = cvplgraph.load_spec(spec_file)
    results = cvplgraph.run(spec, scheduler="threads")
    image = read_input(InputSpec(spec.input.url)).values
    reference, n = ndimage.label(image > np.float32(0.3))
    assert int(results["counts"].attrs["total"]) == n
    table = pd.read_csv(spec_file.parent / "results" / "centroids.csv")
    assert len(table) == n
    com = np.array(ndimage.center_of_mass(image > np.float32(0.3), reference, np.arange(1, n + 1)))
    got = table.sort_values(["z", "y", "x"])[["z", "y", "x"]].to_numpy()
    want = com[np.lexsort(com.T[::-1])]
    np.testing.assert_allclose(got, want, atol=1e-9)
    stored = results["cells"].values  # the stored labels, read back from the cache
    assert stored.max() == n and ((stored > 0) == (reference > 0)).all()


def test_second_run_computes_nothing_and_outputs_are_identical(spec_file: Path) -> None:
    spec = cvplgraph.load_spec(spec_file)
    cvplgraph.run(spec, scheduler="threads")
    outputs = {p: p.read_bytes() for p in (spec_file.parent / "results").iterdir()}
    before = entries(spec)
    assert cvplgraph.plan(spec).to_compute() == []
    again = cvplgraph.run(spec, scheduler="threads")
    assert again.report.computed == [] and again.report.committed == []
    assert sorted(again.report.cached) == ["cells", "centroids", "counts", "mask"]
    assert entries(spec) == before  # no entry rewritten
    assert {p: p.read_bytes() for p in (spec_file.parent / "results").iterdir()} == outputs


def test_parameter_change_recomputes_only_descendants(spec_file: Path) -> None:
    spec = cvplgraph.load_spec(spec_file)
    cvplgraph.run(spec, scheduler="threads")
    spec_file.write_text(spec_file.read_text().replace("block = [32, 128, 128]", "block = [48, 96, 96]"))
    changed = cvplgraph.load_spec(spec_file)
    plan = cvplgraph.plan(changed)
    assert plan.to_compute() == ["counts"]
    assert plan.nodes["counts"].reasons == ("parameter `block` changed [32, 128, 128] → [48, 96, 96]",)
    results = cvplgraph.run(changed, scheduler="threads")
    assert results.report.computed == ["counts"]
    assert results["counts"].shape == (1, 2, 2)

    spec_file.write_text(spec_file.read_text().replace("level = 0.3", "level = 0.35"))
    plan = cvplgraph.plan(cvplgraph.load_spec(spec_file))
    assert plan.to_compute() == ["mask", "cells", "centroids", "counts"]
    assert plan.nodes["mask"].reasons == ("parameter `level` changed 0.3 → 0.35",)
    assert plan.nodes["cells"].reasons == ("input `mask` changed",)


def test_changing_back_reuses_the_old_entries(spec_file: Path) -> None:
    spec = cvplgraph.load_spec(spec_file)
    cvplgraph.run(spec, scheduler="threads")
    text = spec_file.read_text()
    spec_file.write_text(text.replace("level = 0.3", "level = 0.4"))
    cvplgraph.run(cvplgraph.load_spec(spec_file), scheduler="threads")
    spec_file.write_text(text)
    assert cvplgraph.plan(cvplgraph.load_spec(spec_file)).to_compute() == []


def test_uncached_node_is_computed_in_memory_and_not_stored(spec_file: Path) -> None:
    text = spec_file.read_text().replace('mask = "mask"\n', 'mask = "mask"\ncache = false\n')
    spec_file.write_text(text)
    spec = cvplgraph.load_spec(spec_file)
    plan = cvplgraph.plan(spec)
    assert plan.nodes["cells"].reasons == ("cache = false",)
    results = cvplgraph.run(spec, scheduler="threads")
    assert "cells" not in results.report.committed
    assert {e.node for e in Manifest(spec.cache_url).entries()} == {"mask", "centroids", "counts"}
    # on the next run `cells` is needed by nobody to compute, so it is skipped
    plan = cvplgraph.plan(spec)
    assert plan.nodes["cells"].status == "skip"
    assert cvplgraph.run(spec, scheduler="threads").report.computed == []


def test_rewritten_input_chunk_invalidates_everything(
    spec_file: Path, tmp_path: Path, synthetic: tuple[Path, pd.DataFrame]
) -> None:
    import shutil

    import zarr

    copy = tmp_path / "copy.ome.zarr"
    shutil.copytree(synthetic[0], copy)
    spec_file.write_text(spec_file.read_text().replace(str(synthetic[0]), str(copy)))
    spec = cvplgraph.load_spec(spec_file)
    cvplgraph.run(spec, scheduler="threads")
    array = zarr.open_array(str(copy / "0"), mode="r+")
    array[0, 0, :4] = 1.0
    plan = cvplgraph.plan(spec)
    assert plan.to_compute() == ["mask", "cells", "centroids", "counts"]
    assert plan.nodes["mask"].reasons == ("input `image` changed",)


def test_crop_carries_physical_translation(spec_file: Path) -> None:
    text = spec_file.read_text().replace("[cache]", "crop = { z = [8, 40], y = [10, 150] }\n\n[cache]")
    spec_file.write_text(text)
    spec = cvplgraph.load_spec(spec_file)
    results = cvplgraph.run(spec, scheduler="threads")
    mask = results["mask"]
    assert mask.shape == (32, 140, 192)
    np.testing.assert_allclose(mask.attrs["translation"], [8 * 4.0, 10 * 1.5, 0.0])
    assert float(mask.z[0]) == 32.0
    table = results["centroids"]
    np.testing.assert_allclose(table.z_um.values, 32.0 + 4.0 * table.z.values)


@pytest.mark.parametrize("chunks", [[16, 64, 64], [13, 70, 50]])
def test_working_chunks_do_not_change_results_or_keys(spec_file: Path, chunks: list[int]) -> None:
    spec = cvplgraph.load_spec(spec_file)
    first = cvplgraph.run(spec, scheduler="threads")
    table = first["centroids"].to_dataframe().sort_values(["z", "y", "x"]).reset_index(drop=True)
    text = (
        spec_file.read_text()
        .replace("[cache]", f"chunks = {chunks}\n\n[cache]")
        .replace('url = "cache"', 'url = "other"')
    )
    spec_file.write_text(text)
    rechunked = cvplgraph.load_spec(spec_file)
    assert cvplgraph.plan(rechunked).nodes["centroids"].key == cvplgraph.plan(spec).nodes["centroids"].key
    second = cvplgraph.run(rechunked, scheduler="threads")
    other = second["centroids"].to_dataframe().sort_values(["z", "y", "x"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(table.drop(columns="label"), other.drop(columns="label"), atol=1e-9, rtol=0)


def test_fsspec_file_urls_for_input_and_cache(spec_file: Path, synthetic: tuple[Path, pd.DataFrame]) -> None:
    text = spec_file.read_text().replace(f'url = "{synthetic[0]}"', f'url = "file://{synthetic[0]}"')
    text = text.replace('url = "cache"', f'url = "file://{spec_file.parent}/url-cache"')
    spec_file.write_text(text)
    spec = cvplgraph.load_spec(spec_file)
    assert spec.input.url.startswith("file://") and spec.cache_url.startswith("file://")
    assert cvplgraph.run(spec, scheduler="threads").report.committed
    assert (spec_file.parent / "url-cache" / "manifest").is_dir()
    assert cvplgraph.plan(spec).to_compute() == []


def test_content_fingerprint_ignores_a_touch_but_not_new_bytes(
    spec_file: Path, tmp_path: Path, synthetic: tuple[Path, pd.DataFrame]
) -> None:
    """`fingerprint = "content"`: a chunk rewritten with the same bytes keeps the key; other bytes change it."""
    import os
    import shutil

    import zarr

    copy = tmp_path / "copy.ome.zarr"
    shutil.copytree(synthetic[0], copy)
    text = spec_file.read_text().replace(str(synthetic[0]), str(copy))
    spec_file.write_text(text.replace("[input]\n", '[input]\nfingerprint = "content"\n'))
    listing_file = tmp_path / "listing.toml"
    listing_file.write_text(text)
    key = {name: cvplgraph.plan(cvplgraph.load_spec(p)).nodes["input"].key
           for name, p in (("content", spec_file), ("listing", listing_file))}  # fmt: skip
    chunk = next(p for p in (copy / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    stat = chunk.stat()
    os.utime(chunk, (stat.st_atime + 100, stat.st_mtime + 100))  # same bytes, new mtime
    assert cvplgraph.plan(cvplgraph.load_spec(spec_file)).nodes["input"].key == key["content"]
    assert cvplgraph.plan(cvplgraph.load_spec(listing_file)).nodes["input"].key != key["listing"]
    array = zarr.open_array(str(copy / "0"), mode="r+")
    array[0, 0, :4] = np.asarray(array[0, 0, :4]) + 0.25  # new bytes
    assert cvplgraph.plan(cvplgraph.load_spec(spec_file)).nodes["input"].key != key["content"]


def test_changed_storage_options_store_the_node_anew(spec_file: Path) -> None:
    """Same key (same values), other pyramid: plan says why, the run stores it again, the view gets the levels."""
    spec = cvplgraph.load_spec(spec_file)
    cvplgraph.run(spec, scheduler="threads")
    text = spec_file.read_text()
    pyramid = 'op = "connected_components"\nstore = { multiscale = 3 }'
    spec_file.write_text(text.replace('op = "connected_components"', pyramid))
    spec = cvplgraph.load_spec(spec_file)
    plan = cvplgraph.plan(spec)
    assert plan.to_compute() == ["cells"]
    assert plan.nodes["cells"].reasons == ("storage options changed: multiscale 1 → 3",)
    cvplgraph.run(spec, scheduler="threads")
    again = cvplgraph.plan(spec)
    assert again.to_compute() == []
    from cvplgraph.io.stores import multiscales, open_group

    url = again.manifest.store_url(again.entries["cells"].store)
    assert len(multiscales(open_group(url).attrs.asdict(), url)["datasets"]) == 3
