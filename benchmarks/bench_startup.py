"""How long the command line takes to start: ``cvplgraph --version`` against ``python -c pass``.

``cvplgraph --version`` and ``--help`` build the whole parser (every command's options) but
import none of dask, distributed, xarray, pandas, zarr or napari; each command imports those in
its handler. This measures what that buys: the wall time of

- ``python -c pass`` (the interpreter's own start, the reference measured in the same run),
- ``cvplgraph --version`` (the console script beside this interpreter; ``python -m cvplgraph``
  when there is none),
- ``cvplgraph --help``,

each a fresh process, alternated run by run, the median of ``--runs`` each. The target is
``cvplgraph --version`` ≤ 2 × ``python -c pass`` + 0.2 s. The figures inform; no test depends on
them.

    python benchmarks/bench_startup.py --runs 15 --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine_info import machine

PACKAGES = ("cvplgraph", "dask", "distributed", "xarray", "pandas", "zarr")


def cvplgraph_command() -> list[str]:
    """The ``cvplgraph`` console script installed beside this interpreter, else ``python -m cvplgraph``."""
    script = Path(sys.executable).parent / "cvplgraph"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "cvplgraph"]


def wall(command: list[str]) -> float:
    """Seconds from starting ``command`` to its exit (output discarded); it must exit 0."""
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(commands: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """``runs`` wall times of every command, alternated (one of each per round), after one warm-up round."""
    for command in commands.values():  # warm the file cache and the bytecode cache
        wall(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            times[name].append(wall(command))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs of each command, at least 7 (default 15)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.runs < 7:
        parser.error("--runs: at least 7")
    cli = cvplgraph_command()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "cvplgraph --version": [*cli, "--version"],
        "cvplgraph --help": [*cli, "--help"],
    }
    times = measure(commands, args.runs)
    median = {name: statistics.median(t) for name, t in times.items()}
    python, version = median["python -c pass"], median["cvplgraph --version"]
    target = 2 * python + 0.2
    met = version <= target
    print(f"{' '.join(cli)}; {args.runs} runs each, alternated; medians:")
    for name, seconds in median.items():
        spread = f"{min(times[name]):.3f}–{max(times[name]):.3f}"
        print(f"  {name:<22} {seconds:.3f} s  (range {spread} s, {seconds / python:.2f}× python -c pass)")
    print(
        f"target: cvplgraph --version ≤ 2 × python -c pass + 0.2 s = {target:.3f} s: "
        f"{version:.3f} s, ratio {version / python:.2f}× {'✔' if met else '✘'}"
    )
    out: dict[str, Any] = {
        "command": cli,
        "runs": args.runs,
        "seconds": times,
        "median": median,
        "ratio": version / python,
        "target_seconds": target,
        "met": met,
        "machine": machine(PACKAGES),
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
