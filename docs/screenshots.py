"""Napari screenshots of the demo brain for docs/viewing.md.

Runs the demo (a synthetic brain with known cells per region, no downloads),
then renders its cached steps in a napari window, one picture per step, into
``docs/images/``, and a whole napari window with the plugin's dock widget after
it ran a crop around the busiest plane (``napari-widget.png``). Needs a display
and a Qt binding; on a machine without a screen use a virtual one:

    pip install -e ".[test]"          # napari and PyQt6
    xvfb-run -a python docs/screenshots.py
    xvfb-run -a python docs/screenshots.py --only widget   # only the widget's picture
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from cvplgraph.cli.demo import run_demo
from cvplgraph.inspect import napari_widget
from cvplgraph.inspect.view import Layers, layers, screenshot
from cvplgraph.spec.parse import load_spec
from cvplgraph.synth.brain import busiest_plane

HERE = Path(__file__).resolve().parent

#: picture name → (layers shown, bottom first; extra layer options; magnification)
PICTURES: dict[str, tuple[list[str], dict[str, dict], float]] = {
    "raw": (["input"], {}, 2.0),
    "mask": (["input", "mask"], {"mask": {"opacity": 0.5}}, 2.0),
    "labels": (["input", "cells"], {"cells": {"opacity": 0.6}}, 2.0),
    "centroids": (["input", "centroids"], {}, 2.0),
    "region-density": (["region_map", "input"], {"region_map": {"visible": True, "opacity": 1.0}}, 1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="demo folder to reuse (default: a temporary one)")
    parser.add_argument("--out", default=str(HERE / "images"), help="where the PNG files go")
    parser.add_argument("--only", nargs="+", choices=[*PICTURES, "widget"], help="make only these pictures")
    args = parser.parse_args()
    wanted = set(args.only or [*PICTURES, "widget"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        run_demo(folder, say=lambda *_: None)
        spec = load_spec(folder / "demo.toml")
        found = layers(spec)
        by_name = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in found.data}
        z = busiest_plane(pd.read_csv(folder / "cells.csv"), step_um=spec_voxel_z(by_name))
        print(f"plane z = {z:.0f} µm")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for picture, (names, options, zoom) in PICTURES.items():
            if picture not in wanted:
                continue
            shown = Layers([(by_name[n][0], {**by_name[n][1], **options.get(n, {})}, by_name[n][2]) for n in names])
            path = out / f"view-{picture}.png"
            screenshot(shown, str(path), size=(900, 600), z=z, zoom=zoom, thickness=4 * spec_voxel_z(by_name))
            print(f"{_shown(path)}: {', '.join(names)}")
        if "widget" in wanted:  # the widget on the demo spec, after a run of a crop around the plane z
            path = out / "napari-widget.png"
            crop = widget_crop(folder / "demo.toml", by_name, z)
            shot = napari_widget.screenshot(folder / "demo.toml", path, crop=crop, size=(1280, 800))
            print(f"{_shown(path)}: the dock widget; {shot.status}")


def widget_crop(spec: Path, by_name: dict, z: float) -> tuple[tuple[int, int], ...]:
    """32 planes around the plane ``z`` (µm) and the middle 128 × 160 voxels of each: cells large enough
    to see beside the widget."""
    shape = napari_widget.load(str(spec)).shape
    scale, translate = by_name["input"][1]["scale"], by_name["input"][1]["translate"]
    plane = int(round((z - translate[0]) / scale[0]))
    first = min(max(plane - 16, 0), shape[0] - 32)
    return ((first, first + 32), *napari_widget.centre_crop(((0, shape[1]), (0, shape[2])), (128, 160)))


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it."""
    return path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path


def spec_voxel_z(by_name: dict) -> float:
    """The input's voxel size along z (µm)."""
    return float(by_name["input"][1]["scale"][0])


if __name__ == "__main__":
    main()
