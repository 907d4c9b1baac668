"""The ``cvplgraph`` command: wiring only — parse arguments, call the library, print.

Every cvplgraph error prints as ``cvplgraph: error: …`` on stderr and exits 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cvplgraph.errors import CvplError

DESCRIPTION = """\
Count cells in lightsheet volumes with a declarative, cached pipeline.

A spec (TOML) names the input OME-Zarr image, the steps and their parameters.
cvplgraph compiles it into a typed graph, gives every step a content key,
and computes what is not cached yet as one dask graph.
"""


def _size(text: str) -> tuple[int, int]:
    """``WxH`` → (width, height) for argparse."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1024x768, got {text!r}") from None
    if width < 64 or height < 64:
        raise argparse.ArgumentTypeError(f"expected at least 64x64 pixels, got {text!r}")
    return width, height


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")


def _add_local_run(p: argparse.ArgumentParser) -> None:
    """Options of commands that run many small graphs here (bench, tune): threads by default."""
    p.add_argument("--scheduler", metavar="ADDRESS", default="threads",
                   help="dask scheduler address, or 'threads' (default) / 'sync'")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)


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
        help="dask scheduler address (overrides [cluster] address and factory), or 'threads' / 'sync' "
        "for dask's local schedulers; default: the spec's [cluster], else a LocalCluster on this machine",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    shown.add_argument("--json", action="store_true",
                       help="JSON lines on stdout: start, progress (tasks, ETA, bytes) every second, done")  # fmt: skip
    p.add_argument("--report", metavar="HTML", help="also write the run's report page (see `cvplgraph report`)")
    _add_common(p)

    p = sub.add_parser(
        "plan",
        help="dry run: what is cached, what will compute, and why",
        description="Compile the spec and compare every node's key with the cache. "
        "Reads metadata only; computes nothing.",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--dag",
        metavar="FILE",
        help="also draw the DAG, coloured by status, edges labelled with ports: .svg or .png (Graphviz when "
        "installed, else drawn in Python), .dot or .mmd text; '-' prints Mermaid (or --dag-format dot) "
        "instead of the table",
    )
    p.add_argument(
        "--dag-format", choices=["svg", "png", "dot", "mermaid"], help="override the format --dag's suffix implies"
    )
    p.add_argument(
        "--explain",
        metavar="NODE",
        help="why NODE will (or will not) run: what changed since its cached entry, old → new",
    )
    _add_common(p)

    p = sub.add_parser(
        "report",
        help="write a run's report: one self-contained HTML page",
        description="Write one HTML page about a recorded run (every `cvplgraph run` records itself in "
        "<cache>/runs/): the spec, the DAG coloured by status, per-node time / bytes / cache hit, counts, "
        "the per-region table with a bar chart of densities, a maximum-intensity projection of the input "
        "with the detected centroids, and the environment. Plots are embedded; the page loads nothing.",
    )
    p.add_argument("run", help="a spec (its newest run), a run record (.json), or a run id with --cache")
    p.add_argument("--out", metavar="HTML", help="the page to write (default: report-<run id>.html here)")
    p.add_argument("--cache", metavar="URL", help="the cache holding the run id")
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
    _add_common(p)

    p = sub.add_parser(
        "bench",
        help="compare methods against ground truth (precision, recall, F1, count error)",
        description="Run every variant of a suite on every dataset — each dataset's variants as one "
        "graph, shared steps computed once and cached — and score each variant's points against the "
        "truth by one-to-one matching within a tolerance. Prints a table; writes results.csv, "
        "results.md, regions.csv (with region truth) and PNG plots to the suite's output folder. "
        "Suite format: docs/bench.md.",
    )
    p.add_argument("suite", help="the suite TOML file ([bench], [datasets.NAME], [variants.NAME])")
    p.add_argument("--output", metavar="FOLDER", help="where to write the tables and plots (default: the suite's)")
    _add_local_run(p)

    p = sub.add_parser(
        "tune",
        help="search a spec's free parameters against annotated cells; write the best spec",
        description="Try every combination of the free parameters (--param, or the spec's [tune] table) "
        "on the spec's input, cropped with --crop, all trials as one graph through the spec's cache; "
        "score each against the truth (F1 of one-to-one matching) and write the best spec beside this "
        "one as NAME.tuned.toml with its score. Example: cvplgraph tune spec.toml --truth cells.xml "
        "--voxel-size 5 2 2 --crop 0 20 0 256 0 256 --param mask.level=0.1:0.5:9",
    )
    p.add_argument("spec", help="the spec TOML file")
    p.add_argument("--truth", required=True, help="true cell centres: CSV (µm or voxels), napari points CSV, "
                   "or CellCounter XML")  # fmt: skip
    p.add_argument("--param", action="append", default=[], metavar="NODE.PARAM=VALUES",
                   help="values to try: v1,v2,… or start:stop:count (repeat for more parameters)")  # fmt: skip
    p.add_argument("--crop", type=int, nargs=6, metavar=("Z0", "Z1", "Y0", "Y1", "X0", "X1"),
                   help="tune on this box of the input (voxels, stop exclusive)")  # fmt: skip
    p.add_argument("--points", metavar="NODE", help="the node whose points are scored (default: the only one)")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="µm per voxel of a truth file in voxels")  # fmt: skip
    p.add_argument("--tolerance", type=float, metavar="UM", help="matching distance (default 5 µm)")
    _add_local_run(p)

    p = sub.add_parser(
        "cache",
        help="list, show, verify or garbage-collect the cache of a spec",
        description="Inspect and maintain a cache: `ls` lists entries (node, type, size, age, spec); "
        "`show KEY` prints an entry with its provenance; `verify` re-checks every entry's store "
        "(metadata and chunk presence, with --deep every chunk's values) and moves damaged entries "
        "out of the manifest so the next run recomputes them (exit 1 when any); `gc` removes entries "
        "not needed by the given specs or beyond an age/size budget, and leftovers no entry describes "
        "(stores and chunk records of killed runs) once idle for --grace hours (--dry-run lists them).",
    )
    p.add_argument("action", choices=["ls", "show", "verify", "gc"])
    p.add_argument(
        "args", nargs="*", metavar="ARG", help="show: a key (or its start); gc: spec files whose nodes to keep"
    )
    p.add_argument("--cache", metavar="URL", help="the cache (default: the cache of the first spec given, or ./cache)")
    p.add_argument("--spec", metavar="TOML", help="take the cache URL from this spec")
    p.add_argument("--deep", action="store_true", help="verify: also re-read every chunk and compare checksums")
    p.add_argument("--dry-run", action="store_true", help="gc: list what would be removed, remove nothing")
    p.add_argument("--max-age", type=float, metavar="DAYS", help="gc: also remove entries older than this")
    p.add_argument("--max-size", type=float, metavar="GB", help="gc: then remove the oldest until the cache fits")
    p.add_argument("--grace", type=float, default=24.0, metavar="HOURS",
                   help="gc: leave leftovers written to in the last HOURS alone, a run may still be writing "
                   "them (default 24)")  # fmt: skip
    _add_common(p)

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
    _add_common(p)

    p = sub.add_parser(
        "demo",
        help="synthetic brain + specs/demo.toml, end to end",
        description="Write a synthetic brain (an image of an atlas crop with known cells per region), "
        "run the demo spec (threshold → connected components → centroids → cells per region) "
        "and compare the counts, in all and per region, with the truth.",
    )
    p.add_argument("--dir", default="cvplgraph-demo", help="working folder (default: ./cvplgraph-demo)")
    p.add_argument(
        "--atlas",
        default=None,
        metavar="FOLDER",
        help="the Allen CCFv3 atlas of ../shared/data when found (default), 'procedural', or an atlas folder",
    )
    p.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address, or 'threads' / 'sync'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)
    return parser


def _version() -> str:
    from cvplgraph import __version__

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
    if not args.debug:
        # an op that fails on a worker is reported once, as one line; the cluster's own logs
        # (worker processes read this from the environment) would repeat it with a traceback
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: not record.name.startswith("distributed"))
    from cvplgraph.cli import commands

    try:
        return int(getattr(commands, f"cmd_{args.command}")(args) or 0)
    except CvplError as exc:
        if args.debug:
            raise
        print(f"cvplgraph: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        message = str(exc) or "interrupted; nothing partial was committed — run the same command again to resume"
        print(f"cvplgraph: {message}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
