"""``cvplgraph train``: fit a pixel classifier from painted voxels, or an object classifier from
annotated points (``--objects NODE``)."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_local_run

SIGMAS = [1.0, 2.0, 4.0]  # the pixel classifier's default feature scales, µm


def _positive(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``train`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "train",
        help="fit a pixel classifier from painted voxels, or a candidate classifier from annotated points",
        description="Pixels: fit a random-forest pixel classifier on the spec's input, or on the output of "
        "the Image node --image NODE (run through the spec's cache), from an annotation volume (0 = unlabelled, "
        "1 = background, 2 = cell, as a Napari labels layer paints) and write a pickle-free model file for the "
        "pixel_classifier op. Objects: with --objects NODE, take the candidates of the Points node NODE (run "
        "through the spec's cache, on --crop if given), pair them one to one with annotated points (CellCounter "
        "XML: Type 2 cells, Type 1 non-cells; or a CSV of cells) within --tolerance µm, fit a random forest on "
        "the table's numeric columns and write a model file for the classify_objects op. Example: "
        "cvplgraph train spec.toml --objects candidates --annotations cell_classification.xml --voxel-size 5 2 2",
    )
    p.add_argument("spec", help="the spec whose input (or node) the annotations were made on")
    p.add_argument("--annotations", required=True, help="pixels: OME-Zarr, zarr, TIFF or .npy label volume; "
                   "objects: CellCounter XML or CSV points")  # fmt: skip
    p.add_argument("--out", default="models", help="folder for the model file (default: ./models)")
    p.add_argument("--trees", type=_positive, help="trees in the forest (default: 32 pixels, 200 objects)")
    p.add_argument("--depth", type=_positive, help="maximum tree depth (default: 10 pixels, unlimited objects)")
    pixels = p.add_argument_group("pixel classifier")
    pixels.add_argument("--image", metavar="NODE", default="input",
                        help="the Image node whose output was painted (default: the input)")  # fmt: skip
    pixels.add_argument("--sigmas", type=float, nargs="+", default=SIGMAS, help="feature scales in µm")
    objects = p.add_argument_group("object classifier")
    objects.add_argument("--objects", metavar="NODE", help="the Points node whose candidates are classified")
    objects.add_argument("--crop", type=int, nargs=6, metavar=("Z0", "Z1", "Y0", "Y1", "X0", "X1"),
                         help="run on this box of the input (voxels, stop exclusive)")  # fmt: skip
    objects.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                         help="µm per voxel of annotations given in voxels (CellCounter XML, voxel CSV)")  # fmt: skip
    objects.add_argument("--tolerance", type=float, metavar="UM",
                         help="pairing distance of a candidate and an annotation (default 5 µm)")  # fmt: skip
    objects.add_argument("--unmatched", choices=("negative", "ignore"),
                         help="candidates paired with no annotation: non-cells, or left out (default: negative "
                         "when the file marks cells only, ignore when it marks non-cells too)")  # fmt: skip
    objects.add_argument("--features", metavar="A,B,C",
                         help="columns to learn from (default: all numeric but label and coordinates)")  # fmt: skip
    objects.add_argument("--balanced", action="store_true",
                         help="weigh cells and non-cells equally (default: as often as annotated)")  # fmt: skip
    add_local_run(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Train, then print the scores and how to use the model."""
    from cvplgraph.bench import train
    from cvplgraph.errors import CvplError
    from cvplgraph.spec.parse import load_spec

    spec = load_spec(args.spec)
    if args.objects is None:
        given = [f"--{n.replace('_', '-')}" for n in ("crop", "voxel_size", "tolerance", "unmatched", "features")
                 if getattr(args, n) is not None]  # fmt: skip
        given += ["--balanced"] if args.balanced else []
        if given:
            raise CvplError(f"{' '.join(given)}: options of the object classifier; add --objects NODE")
        report = train.train(spec, args.annotations, args.out, sigmas_um=tuple(args.sigmas),
                             trees=args.trees or 32, depth=args.depth or 10, image=args.image,
                             scheduler=args.scheduler, progress=not args.quiet)  # fmt: skip
        print(
            f"trained on {report.voxels['cell']} cell and {report.voxels['background']} background voxels; "
            f"cell F1 on held-out annotations: {report.held_out_f1:.3f}"
        )
        print(f"model: {report.model.resolve()}")
        print(f'use it: op = "pixel_classifier", image = "{report.image}", model = "{report.model.resolve()}"')
        return 0
    given = [o for o, used in (("--image", args.image != "input"), ("--sigmas", args.sigmas != SIGMAS)) if used]
    if given:
        raise CvplError(f"{' '.join(given)}: options of the pixel classifier; drop them with --objects NODE")
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    found = train.train_objects(spec, args.objects, args.annotations, args.out, crop=args.crop,
                                voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
                                tolerance_um=args.tolerance, unmatched=args.unmatched, features=features,
                                trees=args.trees or 200, depth=args.depth, balanced=args.balanced,
                                scheduler=args.scheduler, progress=not args.quiet)  # fmt: skip
    for line in train.describe(found):
        print(line)
    print(f"model: {found.model.resolve()}")
    print(f'use it: op = "classify_objects", points = "{found.node}", model = "{found.model.resolve()}"')
    return 0
