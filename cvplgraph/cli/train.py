"""``cvplgraph train``: fit a pixel classifier from painted voxels."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``train`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "train",
        help="fit a pixel classifier from painted voxels",
        description="Fit a random-forest pixel classifier on the spec's input from an annotation volume "
        "(0 = unlabelled, 1 = background, 2 = cell, as a Napari labels layer paints) and write a pickle-free "
        "model file for the pixel_classifier op.",
    )
    p.add_argument("spec", help="the spec whose [input] the annotations were painted on")
    p.add_argument("--annotations", required=True, help="OME-Zarr, zarr, TIFF or .npy label volume")
    p.add_argument("--out", default="models", help="folder for the model file (default: ./models)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="feature scales in µm")
    p.add_argument("--trees", type=int, default=32, help="trees in the forest (default 32)")
    p.add_argument("--depth", type=int, default=10, help="maximum tree depth (default 10)")
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Train, then print the held-out score and how to use the model."""
    from cvplgraph.bench.train import train
    from cvplgraph.spec.parse import load_spec

    report = train(load_spec(args.spec), args.annotations, args.out, sigmas_um=tuple(args.sigmas),
                   trees=args.trees, depth=args.depth)  # fmt: skip
    print(
        f"trained on {report.voxels['cell']} cell and {report.voxels['background']} background voxels; "
        f"cell F1 on held-out annotations: {report.held_out_f1:.3f}"
    )
    print(f"model: {report.model}")
    print(f'use it: op = "pixel_classifier", model = "{report.model}"')
    return 0
