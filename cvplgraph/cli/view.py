"""``cvplgraph view``: the input and cached nodes as napari layers, in physical coordinates."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_common
from cvplgraph.errors import CvplError


def _size(text: str) -> tuple[int, int]:
    """``WxH`` → (width, height) for argparse."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1024x768, got {text!r}") from None
    if width < 64 or height < 64:
        raise argparse.ArgumentTypeError(f"expected at least 64x64 pixels, got {text!r}")
    return width, height


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``view`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "view",
        help="open the input and cached nodes in napari",
        description="Open napari with the input image, the atlases and the requested cached nodes "
        "(default: every cached node) as layers in physical coordinates: images and densities as "
        "image layers, masks and labels as labels layers, points with their features, the atlas "
        "with region names. Nothing is computed: a node that is not cached is reported.",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument("nodes", nargs="*", help="nodes to show (default: every cached node)")
    p.add_argument("--no-window", action="store_true", help="list the layers instead of opening napari")
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        help="render the layers in a napari window, save the canvas to PNG and exit "
        "(needs a display: a desktop, or a virtual one such as `xvfb-run cvplgraph view …`)",
    )
    p.add_argument(
        "--z", type=float, metavar="UM", help="with --screenshot: the plane shown, in µm (default: the input's middle)"
    )
    p.add_argument(
        "--thickness",
        type=float,
        metavar="UM",
        help="with --screenshot: draw points within this slab around the plane (µm)",
    )
    p.add_argument(
        "--size", type=_size, default=(1024, 768), metavar="WxH", help="screenshot size in pixels (default 1024x768)"
    )
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """List the layers, save a screenshot, or open napari; 1 when a node named is not cached."""
    import sys

    from cvplgraph.inspect.view import add, layers, screenshot
    from cvplgraph.spec.parse import load_spec

    spec = load_spec(args.spec)
    found = layers(spec, args.nodes)
    for name, why in found.missing.items():
        print(f"cvplgraph: {name}: {why}", file=sys.stderr)
    status = 1 if found.missing and args.nodes else 0  # a node named but not cached
    if args.no_window:
        for data, kwargs, layer_type in found.data:
            levels = len(data) if kwargs.get("multiscale") else 1
            shape = tuple((data[0] if kwargs.get("multiscale") else data).shape)
            print(f"{kwargs['name']}: {layer_type}, shape {shape}, {levels} level(s), "
                  f"scale {tuple(kwargs['scale'])}, translate {tuple(kwargs['translate'])}")  # fmt: skip
        return status
    try:
        import napari
    except ImportError:
        raise CvplError("napari is not installed; install it with: pip install 'cvplgraph[napari]'") from None
    title = f"cvplgraph: {spec.path}"
    if args.screenshot:
        screenshot(found, args.screenshot, size=args.size, z=args.z, thickness=args.thickness, title=title)
        print(f"screenshot: {args.screenshot}")
        return status
    viewer = napari.Viewer(title=title)
    add(viewer, found)
    napari.run()
    return 0
