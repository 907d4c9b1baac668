"""The ``cvplgraph`` command: wiring only — parse arguments, call the library, print.

Every cvplgraph error prints as ``cvplgraph: error: …`` on stderr and exits 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import CvplError

DESCRIPTION = """\
Count cells in lightsheet volumes with a declarative, cached pipeline.

A spec (TOML) names the input OME-Zarr image, the steps and their parameters.
cvplgraph compiles it into a typed graph, gives every step a content key,
and computes what is not cached yet as one dask graph.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvplgraph", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_common(parser)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="compute what is not cached and write the spec's outputs",
        description="Compute every node that is not cached yet (one dask graph), store "
        "cached nodes, write [outputs]. A second run recomputes nothing.",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask scheduler address (overrides [cluster] address), or 'threads' / 'sync'",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)

    p = sub.add_parser(
        "plan",
        help="dry run: what is cached, what will compute, and why",
        description="Compile the spec and compare every node's key with the cache. "
        "Reads metadata only; computes nothing.",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(p)

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
    _add_common(p)

    p = sub.add_parser(
        "ops",
        help="list the available ops, their inputs and parameters",
        description="List every registered op with its input ports, output type and parameters.",
    )
    p.add_argument("--markdown", action="store_true", help="the reference as Markdown (docs/ops.md)")
    _add_common(p)

    p = sub.add_parser(
        "synth",
        help="write a synthetic OME-Zarr volume with known cells",
        description="Write a float32 (z, y, x) OME-Zarr volume of blob-like cells on a "
        "smooth background with noise, and the true centres as CSV. "
        "Streams block by block; deterministic by seed.",
    )
    p.add_argument("out", help="output store, e.g. synthetic.ome.zarr")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--chunks", type=int, nargs=3, default=(32, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument(
        "--voxel-size",
        type=float,
        nargs=3,
        default=(4.0, 1.5, 1.5),
        metavar=("Z", "Y", "X"),
        help="µm per voxel (default: 4 1.5 1.5)",
    )
    p.add_argument("--spacing", type=float, default=30.0, help="mean distance between cells, µm (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", help="CSV of true centres (default: OUT with .csv)")
    _add_common(p)

    p = sub.add_parser(
        "demo",
        help="synthetic volume + specs/demo.toml, end to end",
        description="Write a synthetic volume with known cells, run the demo spec "
        "(threshold → connected components → centroids → counts) and "
        "compare the count with the truth.",
    )
    p.add_argument("--dir", default="cvplgraph-demo", help="working folder (default: ./cvplgraph-demo)")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address, or 'threads' / 'sync'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)
    return parser


def _version() -> str:
    from . import __version__

    return f"cvplgraph {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from . import commands

    try:
        return int(getattr(commands, f"cmd_{args.command}")(args) or 0)
    except CvplError as exc:
        if args.debug:
            raise
        print(f"cvplgraph: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "cvplgraph: interrupted; nothing partial was committed — run the same command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
