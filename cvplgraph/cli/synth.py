"""``cvplgraph synth``: a synthetic OME-Zarr volume (or brain, with ``--atlas``) with known cells."""

from __future__ import annotations

import argparse
from typing import Any

from cvplgraph.cli._common import add_common
from cvplgraph.errors import CvplError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``synth`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "synth",
        help="write a synthetic OME-Zarr volume (or brain, with --atlas) with known cells",
        description="Write a float32 (z, y, x) OME-Zarr volume of blob-like cells on a "
        "smooth background with noise, and the true centres as CSV. "
        "With --atlas, OUT is a folder and the volume images a crop of an atlas: cells are "
        "placed with a density per region, tissue is brighter than the outside, and the atlas "
        "(BrainGlobe folder), the true cells with their region and the true count per region "
        "are written beside it. Streams block by block; deterministic by seed.",
    )
    p.add_argument("out", help="output store, e.g. synthetic.ome.zarr (a folder with --atlas)")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--chunks", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="block size (default: 32 128 128; 32 256 256 with --atlas)")  # fmt: skip
    p.add_argument(
        "--voxel-size",
        type=float,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="µm per voxel (default: 4 1.5 1.5; 8 6 6 with --atlas)",
    )
    p.add_argument("--spacing", type=float, default=None,
                   help="mean distance between cells, µm (default 30; 60 with --atlas)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", help="CSV of true centres (default: OUT with .csv)")
    p.add_argument(
        "--atlas",
        metavar="FOLDER",
        help="image a synthetic brain: 'auto' (the Allen CCFv3 atlas of ../shared/data if found, "
        "else a procedural one), 'procedural', or an Allen-style atlas folder",
    )
    p.add_argument("--crop", type=float, nargs=6, metavar=("Z0", "Z1", "Y0", "Y1", "X0", "X1"),
                   help="with --atlas: the imaged box in atlas µm (default: a dorsal slab of 20 M voxels)")  # fmt: skip
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """Write the volume and its true centres (or, with ``--atlas``, a synthetic brain)."""
    if args.atlas:
        return _brain(args)
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    try:
        params = SynthParams(
            shape=tuple(args.shape),
            chunks=tuple(args.chunks or (32, 128, 128)),
            voxel_size=tuple(args.voxel_size or (4.0, 1.5, 1.5)),
            spacing_um=args.spacing or 30.0,
            seed=args.seed,
        )
    except ValueError as exc:
        raise CvplError(f"synth: {exc}") from None
    out = args.out.rstrip("/")
    truth = args.truth or (out.removesuffix(".zarr").removesuffix(".ome") + "_cells.csv")
    cells = write_synthetic(out, params, truth)
    print(
        f"wrote {out} {tuple(args.shape)} voxels of {params.voxel_size} µm with {len(cells)} cells; "
        f"true centres: {truth}"
    )
    return 0


def _brain(args: argparse.Namespace) -> int:
    """``synth --atlas``: a synthetic brain, its atlas and the truth per cell and per region."""
    from cvplgraph.synth.brain import write_synthetic_brain

    options: dict[str, Any] = {"seed": args.seed}
    if args.voxel_size:
        options["voxel_size"] = tuple(args.voxel_size)
    if args.chunks:
        options["chunks"] = tuple(args.chunks)
    if args.spacing:
        options["spacing_um"] = args.spacing
    if args.crop:
        c = args.crop
        options["crop_um"] = ((c[0], c[1]), (c[2], c[3]), (c[4], c[5]))
    try:
        truth = write_synthetic_brain(args.out, atlas=None if args.atlas == "auto" else args.atlas, **options)
    except (ValueError, FileNotFoundError) as exc:
        raise CvplError(f"synth: {exc}") from None
    print(f"wrote {truth.image} with {len(truth.cells)} cells; atlas {truth.atlas}; truth {truth.cells_csv}, "
          f"{truth.regions_csv}")  # fmt: skip
    return 0
