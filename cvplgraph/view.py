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

from .atlas import Atlas, read_atlas
from .errors import CvplError
from .plan import CACHED, Plan, make_plan
from .spec import INPUT, Spec
from .storage import multiscales, open_group, read_array, read_input, read_value
from .types import PortType
from .values import BlockCounts, Geometry, Table

#: napari's (data, kwargs, layer type) triple.
LayerData = tuple[Any, dict[str, Any], str]


class NotCachedError(CvplError):
    """A node asked for display has no cache entry yet."""


@dataclass
class Layers:
    """The layers of a spec, and the nodes that could not be shown (with the reason)."""

    data: list[LayerData] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


def _placement(geometry: Geometry) -> dict[str, Any]:
    return {"scale": tuple(geometry.scale), "translate": tuple(geometry.translation)}


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
            kwargs.update(colormap="inferno")
    kwargs.update(dict(options.get("layer", {})))
    return (data if len(data) > 1 else data[0], kwargs, layer_type)


def _points_layer(name: str, frame: pd.DataFrame, geometry: Geometry, options: dict[str, Any]) -> LayerData:
    coords = frame[["z", "y", "x"]].to_numpy(dtype=np.float64)
    features = frame.drop(columns=["z", "y", "x"]).reset_index(drop=True)
    kwargs: dict[str, Any] = {
        "name": name,
        **_placement(geometry),
        "features": features,
        "size": 3 * min(geometry.scale) if len(frame) else 1.0,
        "face_color": "yellow",
        "opacity": 0.8,
    }
    kwargs.update(dict(options.get("layer", {})))
    return (coords, kwargs, "points")


def _counts_layer(name: str, value: BlockCounts, options: dict[str, Any]) -> LayerData:
    """Block counts as an image whose pixels are the blocks, centred on them."""
    g = value.geometry
    scale = tuple(s * b for s, b in zip(g.scale, value.block))
    translate = tuple(t + s * (b - 1) / 2 for t, s, b in zip(g.translation, g.scale, value.block))
    counts = np.asarray(value.compute(scheduler="sync"), dtype=np.float32)
    kwargs = {"name": name, "scale": scale, "translate": translate, "colormap": "viridis", "opacity": 0.5,
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
    node = plan.graph.nodes[name]["node"]
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
    wanted = list(nodes) or [n for n in known if plan.nodes[n].status == CACHED]
    out.data.append(_input_layer(spec))
    for name, atlas in spec.atlases:
        out.data.append(atlas_layer(name, read_atlas(atlas)))
    for name in wanted:
        if name in spec.sources:
            continue
        if plan.nodes[name].status != CACHED:
            out.missing[name] = f"not cached yet; run `cvplgraph run {spec.path}` first"
            continue
        layer = _node_layer(plan, name)
        if layer is not None:
            out.data.append(layer)
    return out


def show(viewer: Any, spec: Spec, nodes: Sequence[str] = (), *, plan: Plan | None = None) -> Layers:
    """Add the layers of :func:`layers` to a napari viewer (or ``ViewerModel``)."""
    found = layers(spec, nodes, plan=plan)
    for data, kwargs, layer_type in found.data:
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return found
