"""OME-Zarr in and out: NGFF 0.4 (zarr v2) and 0.5 (zarr v3) inputs, stores readable by ome-zarr."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from cvplgraph.errors import InputError
from cvplgraph.io.stores import read_array, read_input, write_array
from cvplgraph.spec.model import InputSpec, StoreSpec
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, wrap

pytestmark = pytest.mark.slow  # outside the core loop (keys, spec, components, filters, counts)


def write_ngff04(path: Path, data: np.ndarray, scale: list[float], translation: list[float]) -> None:
    """An NGFF 0.4 (zarr v2) tczyx image, the layout many existing scans have."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=data, chunks=(1, 1, 4, 16, 16))
    group.create_array("1", data=data[..., ::2, ::2], chunks=(1, 1, 4, 8, 8))
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"
    ]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1, 1, *scale]},
                        {"type": "translation", "translation": [0, 0, *translation]},
                    ],
                },
                {
                    "path": "1",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1, 1, scale[0], scale[1] * 2, scale[2] * 2]},
                        {"type": "translation", "translation": [0, 0, *translation]},
                    ],
                },
            ],
        }
    ]


@pytest.fixture
def ngff04(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65535, size=(2, 3, 8, 32, 32), dtype=np.uint16)
    path = tmp_path / "scan.ome.zarr"
    write_ngff04(path, data, [5.0, 2.0, 2.0], [100.0, 0.0, 10.0])
    return path, data


def test_reads_ngff04_channel_timepoint_level(ngff04: tuple[Path, np.ndarray]) -> None:
    path, data = ngff04
    image = read_input(InputSpec(str(path), channel=2, timepoint=1))
    assert image.dtype == np.float32 and image.dims == ("z", "y", "x")
    np.testing.assert_allclose(image.values, data[1, 2] / 65535.0, rtol=1e-6)
    assert image.attrs["scale"] == [5.0, 2.0, 2.0] and image.attrs["translation"] == [100.0, 0.0, 10.0]
    level1 = read_input(InputSpec(str(path), channel=0, level=1))
    assert level1.shape == (8, 16, 16) and level1.attrs["scale"] == [5.0, 4.0, 4.0]


def test_intensity_range_and_crop(ngff04: tuple[Path, np.ndarray]) -> None:
    path, data = ngff04
    image = read_input(
        InputSpec(str(path), channel=1, intensity_range=(1000.0, 2000.0), crop=((2, 6), (0, -1), (4, 20)))
    )
    expected = np.clip((data[0, 1, 2:6, :, 4:20].astype(np.float32) - 1000) / 1000, 0, 1)
    np.testing.assert_allclose(image.values, expected, rtol=1e-6, atol=1e-7)
    assert image.attrs["translation"] == [110.0, 0.0, 18.0]
    assert float(image.x[0]) == 18.0


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(channel=3), "c=3 requested but axis 'c' has size 3"),
        (dict(level=2), "level 2 requested but the store has 2 level(s)"),
        (dict(crop=((0, 9), (0, -1), (0, -1))), "crop z = [0, 9] exceeds the axis size 8"),
    ],
)
def test_bad_selection_is_a_clear_error(ngff04: tuple[Path, np.ndarray], bad: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        read_input(InputSpec(str(ngff04[0]), **bad))


def test_not_ome_zarr(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(InputError, match="no OME-NGFF 'multiscales' metadata"):
        read_input(InputSpec(str(tmp_path / "plain.zarr")))


def ome_zarr_nodes(path: Path) -> list:
    return list(Reader(parse_url(str(path)))())


@pytest.mark.parametrize("kind", [PortType.Image, PortType.Labels])
def test_written_stores_open_with_ome_zarr_reader(tmp_path: Path, kind: PortType) -> None:
    rng = np.random.default_rng(1)
    values = (
        rng.random((8, 40, 36)).astype(np.float32)
        if kind is PortType.Image
        else rng.integers(0, 2**31 - 1, size=(8, 40, 36)).astype(np.int32)
    )
    geometry = Geometry((8, 40, 36), (4.0, 1.5, 1.5), (8.0, 0.0, -3.0))
    url = tmp_path / "out.ome.zarr"
    dask.compute(
        *write_array(
            str(url),
            wrap(da.from_array(values, chunks=(4, 16, 16)), geometry),
            kind,
            StoreSpec(chunks=(8, 20, 20), multiscale=3),
            "node",
        )
    )
    nodes = ome_zarr_nodes(url)
    assert nodes, "ome-zarr found no image"
    node = nodes[0]
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert len(node.data) == 3
    np.testing.assert_array_equal(np.asarray(node.data[0]), values)
    transforms = node.metadata["coordinateTransformations"]
    assert transforms[0][0]["scale"] == [4.0, 1.5, 1.5]
    assert transforms[1][0]["scale"] == [8.0, 3.0, 3.0]
    level2 = np.asarray(node.data[2])
    if kind is PortType.Labels:
        np.testing.assert_array_equal(level2, values[::4, ::4, ::4])  # nearest keeps exact ids
        assert "image-label" in zarr.open_group(str(url)).attrs["ome"]
    else:
        np.testing.assert_allclose(
            level2, values[:8, :40, :36].reshape(2, 4, 10, 4, 9, 4).mean(axis=(1, 3, 5)), rtol=1e-5
        )
    back = read_array(str(url))
    assert back.attrs["translation"] == [8.0, 0.0, -3.0]
    np.testing.assert_array_equal(back.values, values)


@pytest.mark.parametrize("kind", [PortType.Image, PortType.Labels])
def test_pyramid_levels_sit_where_their_voxels_came_from(tmp_path: Path, kind: PortType) -> None:
    """A mean over 4 voxels is centred 1.5 voxels in; a strided label voxel is the first one."""
    values = np.zeros((8, 40, 36), np.float32 if kind is PortType.Image else np.int32)
    geometry = Geometry((8, 40, 36), (4.0, 1.5, 1.5), (8.0, 0.0, -3.0))
    url = tmp_path / "pyramid.ome.zarr"
    data = wrap(da.from_array(values, chunks=(4, 16, 16)), geometry)
    dask.compute(*write_array(str(url), data, kind, StoreSpec(multiscale=3), "node"))
    level2 = Geometry.of(read_array(str(url), 2))
    shift = np.zeros(3) if kind is PortType.Labels else 1.5 * np.asarray(geometry.scale)
    np.testing.assert_allclose(level2.translation, np.asarray(geometry.translation) + shift)
    np.testing.assert_allclose(level2.scale, 4 * np.asarray(geometry.scale))


def test_display_chunks_are_stored_and_working_chunks_come_back(tmp_path: Path) -> None:
    values = np.random.default_rng(2).random((8, 40, 36)).astype(np.float32)
    url = tmp_path / "display.ome.zarr"
    data = wrap(da.from_array(values, chunks=(4, 16, 16)), Geometry((8, 40, 36)))
    dask.compute(*write_array(str(url), data, PortType.Image, StoreSpec(chunks=(1, 40, 36)), "node"))
    assert zarr.open_group(str(url))["0"].chunks == (1, 40, 36)  # what a 2-D browser reads fastest
    assert read_array(str(url)).data.chunks == data.data.chunks  # computation gets its chunking back
    assert read_array(str(url), working=False).data.chunks[0] == (1,) * 8
    np.testing.assert_array_equal(read_array(str(url)).values, values)


# --------------------------------------------------------------------------- damaged inputs


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A float32 NGFF 0.5 image of (16, 32, 32) in (8, 16, 16) chunks whose chunk (1, 0, 1) holds NaN, +Inf, -Inf."""
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    url = tmp_path / "scan.ome.zarr"
    write_synthetic(str(url), SynthParams(shape=(16, 32, 32), chunks=(8, 16, 16), seed=1))
    array = zarr.open_group(str(url), mode="r+")["0"]
    block = array[8:16, 0:16, 16:32]
    block[1, 2, 3], block[4, 5, 6], block[7, 15, 15] = np.nan, np.inf, -np.inf
    array[8:16, 0:16, 16:32] = block
    return url, np.asarray(array[:])


def test_nonfinite_voxels_stop_the_read_naming_the_block_and_how_many(damaged: tuple[Path, np.ndarray]) -> None:
    url, _ = damaged
    with pytest.raises(InputError) as info:
        read_input(InputSpec(str(url))).compute(scheduler="sync")
    message = str(info.value)
    assert message.startswith(f"{url} level 0: block (1, 0, 1) (voxels z 8:16, y 0:16, x 16:32) holds 3 non-finite")
    assert "(1 NaN, 2 ±Inf)" in message and 'nonfinite = "zero"' in message and "\n" not in message
    # a crop names voxels of the level, not of the crop
    with pytest.raises(InputError, match=r"block \(0, 0, 0\) \(voxels z 8:16, y 0:16, x 18:32\) holds 3"):
        read_input(InputSpec(str(url), crop=((8, 16), (0, 16), (18, 32)))).compute(scheduler="sync")


def test_nonfinite_zero_reads_them_as_0_and_counts_them(damaged: tuple[Path, np.ndarray]) -> None:
    from cvplgraph.io.stores import open_input

    url, raw = damaged
    image, replaced = open_input(InputSpec(str(url), nonfinite="zero"))
    assert replaced is not None
    values, count = dask.compute(image.data, replaced, scheduler="threads")
    np.testing.assert_array_equal(values, np.where(np.isfinite(raw), raw, 0).astype(np.float32))
    assert int(count) == int((~np.isfinite(raw)).sum()) == 3
    # with an intensity range, "0" is the image's 0: the range's low end
    ranged, _ = open_input(InputSpec(str(url), nonfinite="zero", intensity_range=(0.25, 0.75)))
    expected = np.clip((np.where(np.isfinite(raw), raw, 0.25) - 0.25) / 0.5, 0, 1)
    np.testing.assert_allclose(ranged.values, expected, atol=1e-6)


def test_huge_finite_voxels_are_not_taken_for_nonfinite_ones(tmp_path: Path) -> None:
    """Each block is checked by its sum first (one pass, no mask): finite values whose sum overflows must still
    pass, and a single NaN or ±Inf among them must still be found and counted."""
    from cvplgraph.io.stores import open_input
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    url = tmp_path / "bright.ome.zarr"
    write_synthetic(str(url), SynthParams(shape=(4, 8, 8), chunks=(4, 8, 8), seed=1))
    zarr.open_group(str(url), mode="r+")["0"][...] = np.float32(3e38)  # 256 of them sum to +Inf in float32
    image, replaced = open_input(InputSpec(str(url), nonfinite="zero", intensity_range=(0.0, 3.4e38)))
    values, count = dask.compute(image.data, replaced, scheduler="sync")
    assert int(count) == 0 and np.isfinite(values).all()
    read_input(InputSpec(str(url), intensity_range=(0.0, 3.4e38))).compute(scheduler="sync")  # "error": no error
    array = zarr.open_group(str(url), mode="r+")["0"]
    array[1, 2, 3] = -np.inf
    _, replaced = open_input(InputSpec(str(url), nonfinite="zero", intensity_range=(0.0, 3.4e38)))
    assert int(replaced.compute(scheduler="sync")) == 1
    with pytest.raises(InputError, match=r"holds 1 non-finite value\(s\) \(0 NaN, 1 ±Inf\)"):
        read_input(InputSpec(str(url), intensity_range=(0.0, 3.4e38))).compute(scheduler="sync")


def test_integer_inputs_are_not_checked(ngff04: tuple[Path, np.ndarray]) -> None:
    """An integer image cannot hold NaN: no task is added to its graph and nothing is counted."""
    from cvplgraph.io.stores import open_input

    path, _ = ngff04
    image, replaced = open_input(InputSpec(str(path), nonfinite="zero"))
    assert replaced is None
    assert not [name for name in image.data.dask.layers if "finite" in name]
    same, _ = open_input(InputSpec(str(path)))
    assert set(same.data.dask.layers) == set(image.data.dask.layers)


def test_nonfinite_zero_changes_the_input_key_and_error_keeps_it(damaged: tuple[Path, np.ndarray]) -> None:
    from cvplgraph.cache.fingerprint import fingerprint_input

    url, _ = damaged
    keys = {mode: fingerprint_input(InputSpec(str(url), nonfinite=mode)) for mode in ("error", "zero")}
    assert keys["error"] != keys["zero"]
    assert keys["error"] == fingerprint_input(InputSpec(str(url)))  # the default: keys made before it stay valid


def test_a_chunk_of_garbage_bytes_is_one_error_naming_its_file(damaged: tuple[Path, np.ndarray]) -> None:
    url, _ = damaged
    chunk = url / "0" / "c" / "0" / "1" / "0"
    chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    with pytest.raises(InputError) as info:  # (its NaN block read as 0, so that only the garbage stops it)
        read_input(InputSpec(str(url), nonfinite="zero")).compute(scheduler="sync")
    message = str(info.value)
    assert message.startswith(f"{chunk}: chunk (0, 1, 0) of level 0 of {url} cannot be read (")
    assert "blosc" in message and "\n" not in message


def test_cached_tables_open_with_their_readers_and_carry_units(spec_file: Path) -> None:
    """A run's cached Points table opens with ``pandas.read_parquet`` (a dataset of one file per partition) and
    its block counts with ``xarray.open_zarr`` (their arrays name their dimensions), with the same values the run
    handed out; the run hands the table out lazily (dask-backed columns), every column and coordinate with a
    physical unit saying it."""
    import dask.array as da
    import xarray as xr

    import cvplgraph
    from cvplgraph.cache.manifest import Manifest

    spec = cvplgraph.load_spec(spec_file)
    results = cvplgraph.run(spec, scheduler="threads")
    manifest = Manifest(spec.cache_url)
    stores = {e.node: manifest.store_url(e.store) for e in manifest.entries()}
    table = pd.read_parquet(stores["centroids"])
    expected = results["centroids"]
    assert all(isinstance(expected[name].data, da.Array) for name in expected.data_vars)
    assert set(table.columns) == set(expected.data_vars) and len(table) == expected.sizes["cell"] > 0
    for name in expected.data_vars:
        np.testing.assert_array_equal(table[name].to_numpy(), expected[name].values)
    assert expected["z_um"].attrs["units"] == "micrometer"
    assert expected["volume_um3"].attrs["units"] == "micrometer ** 3" and expected["z"].attrs["units"] == "voxel"
    assert "units" not in expected["label"].attrs
    counts = xr.open_zarr(stores["counts"], consolidated=False)["counts"].compute()
    assert counts.dims == ("z", "y", "x")
    np.testing.assert_array_equal(counts.values, results["counts"].values)
    assert all(results["counts"][d].attrs["units"] == "micrometer" for d in "zyx")
    assert all(results["mask"][d].attrs["units"] == "micrometer" for d in "zyx")


def test_every_store_written_validates_as_ome_ngff(tmp_path: Path) -> None:
    """Images, masks, labels (cached and as outputs) and synthetic inputs pass ome-zarr-models' own
    validation of OME-NGFF 0.5: images as images, masks and labels as image-labels."""
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    import cvplgraph
    from cvplgraph.cache.manifest import Manifest
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    write_synthetic(str(tmp_path / "v.ome.zarr"), SynthParams(shape=(32, 64, 64), chunks=(16, 32, 32), seed=1))
    (tmp_path / "spec.toml").write_text(f"""\
[input]
url = "{tmp_path / 'v.ome.zarr'}"
[cache]
url = "{tmp_path / 'cache'}"
[nodes.smooth]
op = "gaussian"
image = "input"
sigma = 1.0
[nodes.mask]
op = "threshold"
image = "smooth"
level = 0.3
[nodes.cells]
op = "connected_components"
mask = "mask"
[outputs]
cells = "{tmp_path / 'cells.ome.zarr'}"
smooth = "{tmp_path / 'smooth.ome.zarr'}"
""")
    spec = cvplgraph.load_spec(tmp_path / "spec.toml")
    cvplgraph.run(spec, scheduler="threads")
    manifest = Manifest(spec.cache_url)
    kinds = {e.node: manifest.store_url(e.store) for e in manifest.entries()}
    expected = {kinds["smooth"]: Image, kinds["mask"]: ImageLabel, kinds["cells"]: ImageLabel,
                str(tmp_path / "cells.ome.zarr"): ImageLabel, str(tmp_path / "smooth.ome.zarr"): Image,
                str(tmp_path / "v.ome.zarr"): Image}  # fmt: skip
    for url, kind in expected.items():
        assert isinstance(open_ome_zarr(zarr.open_group(url, mode="r")), kind), url
