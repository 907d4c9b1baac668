"""What a benchmark ran on: CPU, memory, package versions and the cvplgraph checkout (shared by the scripts)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cvplgraph


def cvplgraph_commit() -> str | None:
    """``git describe`` of the checkout cvplgraph is imported from (``-dirty`` if modified), if it is one."""
    package = Path(cvplgraph.__file__).parent
    try:
        done = subprocess.run(
            ["git", "-C", str(package), "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def machine(packages: Sequence[str]) -> dict[str, Any]:
    """CPU, memory, the versions of ``packages`` and where cvplgraph was imported from."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "versions": versions,
        "cvplgraph_path": str(Path(cvplgraph.__file__).parent),
        "cvplgraph_commit": cvplgraph_commit(),
    }
