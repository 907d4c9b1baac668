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
        "smooth background with noise, and the true centres as CSV. Touching pairs, dim cells, "
        "photon noise, gain, offset and uint16 make it look more like a real scan. "
        "With --atlas, OUT is a folder and the volume images a crop of an atlas: cells are "
        "placed with a density per region, tissue is brighter than the outside, and the atlas "
        "(BrainGlobe folder), the true cells with their region and the true count per region "
        "are written beside it. Streams block by block; deterministic by seed. "
        "With --virtual, only the store's metadata is written (a few KB): cvplgraph renders each chunk when it "
        "reads it, so a whole-brain-sized volume (e.g. --shape 2000 8000 11000, 350 GB as uint16) can be "
        "rehearsed without its disk.",
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
    stress = p.add_argument_group(
        "what real scans add (plain volumes only, not with --atlas; defaults leave the volume unchanged)"
    )
    stress.add_argument("--pairs", type=float, default=None, metavar="FRACTION",
                        help="fraction of cells given a touching partner (default 0)")  # fmt: skip
    stress.add_argument("--pair-distance", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="partner centre distance, in units of the sum of the radii (default 0.8 1.0)")  # fmt: skip
    stress.add_argument("--dim-fraction", type=float, default=None, metavar="FRACTION",
                        help="fraction of cells drawn from --dim-brightness (default 0)")  # fmt: skip
    stress.add_argument("--dim-brightness", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="peak range of the dim cells above the background (default 0.1 0.2)")  # fmt: skip
    stress.add_argument("--photons", type=float, default=None,
                        help="photons per unit of signal: Poisson noise (default 0: off); the gaussian noise "
                        "(sd 0.02) is then added as read noise")  # fmt: skip
    stress.add_argument("--gain", type=float, default=None,
                        help="stored: GAIN × image + OFFSET, after the clip to [0, 1] (default 1)")  # fmt: skip
    stress.add_argument("--offset", type=float, default=None, help="see --gain (default 0)")
    stress.add_argument("--dtype", choices=("float32", "uint16"), default=None,
                        help="stored type (default float32); uint16 stores round(clip(value, 0, 65535)): "
                        "use --gain to put cells in counts, e.g. --gain 1000 --offset 100")  # fmt: skip
    p.add_argument("--truth", help="CSV of true centres (default: OUT with .csv)")
    p.add_argument("--virtual", action="store_true",
                   help="write only the metadata of a uint16 volume whose chunks cvplgraph renders on read "
                   "(cvplgraph.io.virtual: true cells per block from the seed, no voxel stored); default "
                   "chunks 64 256 256")  # fmt: skip
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


#: Options of plain volumes only, each named as its SynthParams field.
_STRESS = ("pairs", "pair_distance", "dim_fraction", "dim_brightness", "photons", "gain", "offset", "dtype")


def handle(args: argparse.Namespace) -> int:
    """Write the volume and its true centres (or, with ``--atlas``, a synthetic brain)."""
    stress: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value
        for name in _STRESS
        if (value := getattr(args, name)) is not None
    }
    if args.virtual:
        if stress or args.atlas or args.truth:
            given = ", ".join(["--" + name.replace("_", "-") for name in stress] + ["--atlas"] * bool(args.atlas)
                              + ["--truth"] * bool(args.truth))  # fmt: skip
            raise CvplError(f"synth: {given}: not with --virtual (its cells come from the seed, see --help)")
        return _virtual(args)
    if args.atlas:
        if stress:
            given = ", ".join("--" + name.replace("_", "-") for name in stress)
            raise CvplError(f"synth: {given}: only for plain volumes, not with --atlas")
        return _brain(args)
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    try:
        params = SynthParams(
            shape=tuple(args.shape),
            chunks=tuple(args.chunks or (32, 128, 128)),
            voxel_size=tuple(args.voxel_size or (4.0, 1.5, 1.5)),
            spacing_um=args.spacing or 30.0,
            seed=args.seed,
            **stress,
        )
    except ValueError as exc:
        raise CvplError(f"synth: {exc}") from None
    out = args.out.rstrip("/")
    truth = args.truth or (out.removesuffix(".zarr").removesuffix(".ome") + "_cells.csv")
    cells = write_synthetic(out, params, truth)
    paired = int((cells["partner"] >= 0).sum())
    print(
        f"wrote {out} {tuple(args.shape)} {params.dtype} voxels of {params.voxel_size} µm with {len(cells)} cells"
        f"{f' ({paired} in touching pairs)' if paired else ''}; true centres: {truth}"
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


def _virtual(args: argparse.Namespace) -> int:
    """``synth --virtual``: the metadata of a virtual volume; its chunks are rendered when read."""
    from cvplgraph.io.virtual import VirtualVolume, write_virtual

    try:
        volume = VirtualVolume(
            shape=tuple(args.shape),
            chunks=tuple(args.chunks or (64, 256, 256)),
            voxel_size=tuple(args.voxel_size or (4.0, 1.5, 1.5)),
            spacing_um=args.spacing or 30.0,
            seed=args.seed,
        )  # type: ignore[arg-type]
    except ValueError as exc:
        raise CvplError(f"synth: {exc}") from None
    write_virtual(args.out, volume)
    voxels = volume.shape[0] * volume.shape[1] * volume.shape[2]
    um3 = voxels * volume.voxel_size[0] * volume.voxel_size[1] * volume.voxel_size[2]
    expected = um3 / volume.spacing_um**3 * volume.occupancy
    print(f"wrote {args.out}: a virtual {volume.shape} uint16 volume ({voxels * 2 / 1e9:,.1f} GB when read, "
          f"nothing stored) in {volume.grid[0] * volume.grid[1] * volume.grid[2]:,} chunks of {volume.chunks}; "
          f"about {expected:,.0f} cells (exact per block: cvplgraph.io.virtual.block_truth)")  # fmt: skip
    return 0
