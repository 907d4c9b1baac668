"""Napari layers for cached results: every node shown where it lies in physical space.

:func:`layers` turns a spec's input, its atlases and its cached nodes into napari
layer-data tuples ``(data, kwargs, layer_type)``; :func:`show` adds them to a
viewer. Nothing is computed: a node that is not cached is reported with
``cvplgraph run`` as the fix. Arrays are handed to napari as lazy dask arrays,
as a multiscale pyramid when the store has several levels, so a large store
opens at once. Every layer carries the physical ``scale`` and ``translate`` of
its grid, so layers of different resolutions overlay exactly.

Per-node ``view`` options in the spec are honoured: ``is_label`` (show an array
as a labels layer) and ``layer = { … }`` (keyword arguments for the napari
layer, such as ``colormap``, ``opacity``, ``contrast_limits``, ``visible``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from cvplgraph.engine.plan import Plan, Status, make_plan
from cvplgraph.errors import CvplError
from cvplgraph.io.atlas import read_atlas
from cvplgraph.io.stores import multiscales, open_group, read_array, read_input
from cvplgraph.io.tables import read_value
from cvplgraph.spec.model import INPUT, Spec
from cvplgraph.types import PortType
from cvplgraph.values import Atlas, BlockCounts, Geometry, Table

#: napari's (data, kwargs, layer type) triple.
LayerData = tuple[Any, dict[str, Any], str]


@dataclass
class Layers:
    """The layers of a spec, and the nodes that could not be shown (with the reason)."""

    data: list[LayerData] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


#: Every layer's axes: z, y, x in micrometres (napari shows pixels when a layer names no unit).
AXES: dict[str, Any] = {"units": ("micrometer",) * 3, "axis_labels": ("z", "y", "x")}


def _placement(geometry: Geometry) -> dict[str, Any]:
    return {"scale": tuple(geometry.scale), "translate": tuple(geometry.translation), **AXES}


def _pyramid(url: str) -> tuple[list[da.Array], Geometry]:
    """Every level of a stored OME-Zarr array (lazy), and the geometry of level 0."""
    levels = len(multiscales(open_group(url).attrs.asdict(), url)["datasets"])
    arrays = [read_array(url, level, working=False) for level in range(levels)]
    return [a.data for a in arrays], Geometry.of(arrays[0])


def _array_layer(
    name: str, data: list[da.Array], geometry: Geometry, kind: PortType, options: dict[str, Any]
) -> LayerData:
    as_labels = bool(options.get("is_label", kind.is_label))
    kwargs: dict[str, Any] = {"name": name, **_placement(geometry)}
    if len(data) > 1:
        kwargs["multiscale"] = True
    if as_labels:
        layer_type = "labels"
    else:
        layer_type = "image"
        kwargs["blending"] = "additive"
        if kind is PortType.Image:
            kwargs.update(contrast_limits=(0.0, 1.0), colormap="gray")
        elif kind is PortType.Density:
            kwargs.update(colormap="inferno", contrast_limits=_robust_limits(data[-1]))
    kwargs.update(dict(options.get("layer", {})))
    return (data if len(data) > 1 else data[0], kwargs, layer_type)


#: Largest pyramid level (voxels) read to choose the contrast of a density layer.
LIMITS_VOXELS = 16_000_000


def _robust_limits(smallest: da.Array) -> tuple[float, float] | None:
    """(0, 99.5th percentile of the non-zero values) of a pyramid's smallest level.

    napari would otherwise guess from the first plane it draws, which for a
    density map over an atlas is often one region. ``None`` (napari's guess)
    when even the smallest level is too large to read for this.
    """
    if smallest.size > LIMITS_VOXELS:
        return None
    values = np.asarray(smallest.compute(scheduler="threads"), dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    top = float(np.percentile(values, 99.5)) if values.size else 0.0
    return (0.0, top if top > 0 else 1.0)


def _points_layer(name: str, frame: pd.DataFrame, geometry: Geometry, options: dict[str, Any]) -> LayerData:
    coords = frame[["z", "y", "x"]].to_numpy(dtype=np.float64)
    features = frame.drop(columns=["z", "y", "x"]).reset_index(drop=True)
    kwargs: dict[str, Any] = {
        "name": name,
        **_placement(geometry),
        "features": features,
        "size": _marker_size(frame, geometry),
        "face_color": "transparent",
        "border_color": "yellow",
        "border_width": 0.15,
    }
    kwargs.update(dict(options.get("layer", {})))
    return (coords, kwargs, "points")


def _marker_size(frame: pd.DataFrame, geometry: Geometry) -> np.ndarray | float:
    """Marker diameters in voxels of the plane shown (napari scales them by the layer's scale).

    A ring as wide as the cell: the diameter of the sphere of the cell's volume
    when the table has ``volume_um3``, else three voxels.
    """
    pixel = float(np.mean(geometry.scale[-2:]))
    if "volume_um3" not in frame or not len(frame):
        return 3.0
    diameter = 2 * np.cbrt(3 * frame["volume_um3"].to_numpy(dtype=np.float64) / (4 * np.pi))
    return np.maximum(diameter / pixel, 1.0) * 1.3


def _counts_layer(name: str, value: BlockCounts, options: dict[str, Any]) -> LayerData:
    """Block counts as an image whose pixels are the blocks, centred on them."""
    g = value.geometry
    scale = tuple(s * b for s, b in zip(g.scale, value.block))
    translate = tuple(t + s * (b - 1) / 2 for t, s, b in zip(g.translation, g.scale, value.block))
    counts = np.asarray(value.compute(scheduler="sync"), dtype=np.float32)
    kwargs = {"name": name, "scale": scale, "translate": translate, **AXES, "colormap": "viridis", "opacity": 0.5,
              **dict(options.get("layer", {}))}  # fmt: skip
    return (counts, kwargs, "image")


def atlas_layer(name: str, atlas: Atlas) -> LayerData:
    """The atlas as a labels layer whose features name every region."""
    structures = atlas.structures
    features = pd.DataFrame(
        {"index": structures["id"].to_numpy(), "acronym": structures["acronym"], "name": structures["name"]}
    )
    features = pd.concat([pd.DataFrame({"index": [0], "acronym": ["none"], "name": ["no region"]}), features])
    kwargs = {"name": name, **_placement(atlas.geometry), "features": features.reset_index(drop=True), "opacity": 0.3}
    return (atlas.annotation.data, kwargs, "labels")


def _node_layer(plan: Plan, name: str) -> LayerData | None:
    node = plan.node(name)
    url = plan.manifest.store_url(plan.entries[name].store)
    options = dict(node.nodespec.view)
    kind = node.output
    if kind.is_array:
        data, geometry = _pyramid(url)
        return _array_layer(name, data, geometry, kind, options)
    value = read_value(url, kind)
    if kind is PortType.Points and isinstance(value, Table):
        return _points_layer(name, value.compute(scheduler="sync"), value.geometry, options)
    if kind is PortType.BlockCounts and isinstance(value, BlockCounts):
        return _counts_layer(name, value, options)
    return None  # RegionTable: a table, not a layer (its density map is)


def _input_layer(spec: Spec) -> LayerData:
    """The input image, with the store's own pyramid when the whole level 0 is shown."""
    image = read_input(spec.input)
    levels = [image.data]
    if not spec.input.crop and spec.input.level == 0:
        count = len(multiscales(open_group(spec.input.url).attrs.asdict(), spec.input.url)["datasets"])
        levels += [read_input(replace(spec.input, level=k)).data for k in range(1, count)]
    return _array_layer(INPUT, levels, Geometry.of(image), PortType.Image, {})


def layers(spec: Spec, nodes: Sequence[str] = (), *, plan: Plan | None = None) -> Layers:
    """Layer data for the input, the atlases and ``nodes`` (default: every cached node).

    A requested node that is not cached is listed in ``missing`` with the reason,
    never computed.
    """
    plan = plan or make_plan(spec)
    out = Layers()
    known = [n for n in plan.nodes if n not in spec.sources]
    unknown = [n for n in nodes if n not in plan.nodes]
    if unknown:
        raise CvplError(f"{spec.path}: unknown node(s) {', '.join(unknown)}; known: {', '.join(known)}")
    wanted = list(nodes) or [n for n in known if plan.nodes[n].status is Status.CACHED]
    out.data.append(_input_layer(spec))
    for name, atlas in spec.atlases:
        out.data.append(_start_hidden(atlas_layer(name, read_atlas(atlas)), name not in nodes))
    for name in wanted:
        if name in spec.sources:
            continue
        if plan.nodes[name].status is not Status.CACHED:
            out.missing[name] = f"not cached yet; run `cvplgraph run {spec.path}` first"
            continue
        layer = _node_layer(plan, name)
        if layer is not None:
            node = plan.node(name)
            covering = node.output in COVERING and "visible" not in dict(node.nodespec.view).get("layer", {})
            out.data.append(_start_hidden(layer, covering and name not in nodes))
    return out


#: Port types whose layers cover the whole field of view (shown only when asked for by name).
COVERING = frozenset({PortType.Density, PortType.BlockCounts})


def _start_hidden(layer: LayerData, hide: bool) -> LayerData:
    """``layer`` made invisible at first when ``hide`` (the user ticks it on in napari)."""
    data, kwargs, layer_type = layer
    return (data, {**kwargs, "visible": False} if hide else kwargs, layer_type)


def show(viewer: Any, spec: Spec, nodes: Sequence[str] = (), *, plan: Plan | None = None) -> Layers:
    """Add the layers of :func:`layers` to a napari viewer (or ``ViewerModel``)."""
    found = layers(spec, nodes, plan=plan)
    add(viewer, found)
    return found


def add(viewer: Any, found: Layers) -> None:
    """Add layer-data tuples to a napari viewer (or ``ViewerModel``)."""
    for data, kwargs, layer_type in found.data:
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)


def _fit(viewer: Any, name: str, canvas: tuple[int, int], z: float | None = None, zoom: float = 1.0) -> None:
    """Centre the camera on layer ``name`` and zoom so that it fills a ``canvas`` of (height, width) pixels.

    ``z``: the plane shown, in µm (default: the layer's middle plane); ``zoom``:
    magnification beyond fitting the layer.
    """
    low, high = np.asarray(viewer.layers[name].extent.world, dtype=np.float64)
    middle = (low + high) / 2
    if z is not None:
        middle[0] = z
    viewer.dims.point = tuple(middle)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(middle[-2:])
    camera.zoom = 0.95 * zoom * float(np.min(np.asarray(canvas) / (high - low)[-2:]))


def screenshot(
    found: Layers,
    path: str,
    *,
    size: tuple[int, int] = (1024, 768),
    z: float | None = None,
    zoom: float = 1.0,
    thickness: float | None = None,
    title: str = "cvplgraph",
) -> np.ndarray:
    """Render ``found`` in a napari window and save the canvas as a PNG at ``path``.

    Needs a display (a desktop session or a virtual one such as Xvfb) and a Qt
    binding. The window is shown (napari only renders shown canvases), resized
    to ``size`` (width, height), centred on the input at plane ``z`` (µm; default
    its middle) and magnified ``zoom`` times beyond fitting the input, captured
    and closed. ``thickness`` (µm): points within half of it from the plane are
    drawn too (napari's thick slicing; images still show the plane itself).
    Returns the RGBA picture.
    """
    import napari

    viewer = napari.Viewer(title=title, show=True)
    try:
        viewer.window.resize(*size)
        add(viewer, found)
        width, height = size
        _fit(viewer, INPUT, (height, width), z, zoom)
        if thickness:
            viewer.dims.thickness = (thickness, *viewer.dims.thickness[1:])
        return np.asarray(viewer.screenshot(path, size=(height, width), canvas_only=True, flash=False))
    finally:
        viewer.close()
