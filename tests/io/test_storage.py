"""OME-Zarr in and out: NGFF 0.4 (zarr v2) and 0.5 (zarr v3) inputs, stores readable by ome-zarr."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
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
