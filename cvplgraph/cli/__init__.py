"""The ``cvplgraph`` command: wiring only — parse arguments, call the library, print.

Every cvplgraph error prints as ``cvplgraph: error: …`` on stderr and exits 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from cvplgraph._version import __version__
from cvplgraph.cli import bench, cache, demo, ops, plan, report, run, synth, train, tune, view
from cvplgraph.cli._common import add_common
from cvplgraph.errors import CvplError

DESCRIPTION = """\
Count cells in lightsheet volumes with a declarative, cached pipeline.

A spec (TOML) names the input OME-Zarr image, the steps and their parameters.
cvplgraph compiles it into a typed graph, gives every step a content key,
and computes what is not cached yet as one dask graph.
"""


#: The commands in the order ``cvplgraph --help`` lists them. Each module has ``add_parser(sub)``
#: (the sub-command with its options and help) and ``handle(args)``, which imports what it needs,
#: so building the parser imports none of dask, xarray, pandas, zarr or napari.
COMMANDS = {
    module.__name__.rsplit(".", 1)[1]: module
    for module in (run, plan, report, train, ops, view, bench, tune, cache, synth, demo)
}


def build_parser() -> argparse.ArgumentParser:
    """The ``cvplgraph`` parser: the global options and one sub-parser per command of :data:`COMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="cvplgraph", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common(parser)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def _version() -> str:
    return f"cvplgraph {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cvplgraph`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name.

    Returns
    -------
    int
        0 on success, 1 after a cvplgraph error (printed as one line), 130 after Ctrl-C, 143 after SIGTERM
        (which stops a command the way Ctrl-C does: tasks cancelled, the cluster closed, nothing partial
        committed, the run record saved).
    """
    terminated: list[int] = []

    def _terminate(signum: int, frame: object) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _main(argv, terminated)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None, terminated: list[int]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "args", None), list) and not any(a.startswith("-") for a in extra):
        args.args += extra  # `cache verify --deep SPEC`: argparse stops a '*' positional at the first option
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    try:
        return int(COMMANDS[args.command].handle(args) or 0)
    except CvplError as exc:
        if args.debug:
            raise
        print(f"cvplgraph: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        message = str(exc) or "interrupted; nothing partial was committed — run the same command again to resume"
        print(f"cvplgraph: {'terminated (SIGTERM), ' if terminated else ''}{message}", file=sys.stderr)
        return 143 if terminated else 130


if __name__ == "__main__":
    sys.exit(main())
