"""The spec's ``[cluster]`` table: where a run computes (see :mod:`cvplgraph.engine.cluster`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cvplgraph.spec.fields import Collector

#: Seconds a scheduler address (``--scheduler`` or ``[cluster] address``) has to answer as a dask scheduler.
CONNECT_TIMEOUT = 20.0


@dataclass(frozen=True)
class ClusterSpec:
    """Where the graph runs: a scheduler address, a factory, else a LocalCluster sized to the machine."""

    address: str = ""
    n_workers: int = 0  # 0 → one per core
    threads_per_worker: int = 0  # 0 → 1
    memory_limit: str = "auto"
    factory: str = ""  # "module:function" returning a distributed Client or Cluster
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments of the factory
    connect_timeout: float = CONNECT_TIMEOUT  # seconds for a scheduler address to answer as a dask scheduler


def parse_cluster(raw: Any, c: Collector) -> ClusterSpec:
    if not isinstance(raw, dict):
        c.add("cluster", f"expected a table, got {raw!r}")
        return ClusterSpec()
    c.unknown_keys(
        raw,
        ["address", "n_workers", "threads_per_worker", "memory_limit", "factory", "options", "connect_timeout"],
        "cluster",
    )
    address = c.typed(
        raw, "address", "cluster", str, '"" or a scheduler address such as "tcp://127.0.0.1:8786"', default=""
    )
    if address and not re.match(r"^(tcp|tls|inproc|ws|wss|ucx)://", address):
        c.add("cluster.address", f'expected "" or a scheduler address such as "tcp://127.0.0.1:8786", got {address!r}')
    workers = c.typed(raw, "n_workers", "cluster", int, "an integer ≥ 0 (0 = one per core)", default=0)
    threads = c.typed(raw, "threads_per_worker", "cluster", int, "an integer ≥ 0 (0 = 1)", default=0)
    memory = c.typed(raw, "memory_limit", "cluster", str, 'a size such as "4GiB" or "auto"', default="auto")
    for key, value in (("n_workers", workers), ("threads_per_worker", threads)):
        if value < 0:
            c.add(f"cluster.{key}", f"expected an integer ≥ 0, got {value!r}")
    factory = c.typed(raw, "factory", "cluster", str, 'a "module:function" reference', default="")
    if factory and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", factory):
        c.add("cluster.factory", f'expected a "module:function" reference such as "lab_cluster:slurm", got {factory!r}')
    if factory and address:
        c.add("cluster.factory", f"expected either address or factory, got both (address {address!r})")
    options = raw.get("options", {})
    if not isinstance(options, dict):
        c.add("cluster.options", f"expected a table of keyword arguments for the factory, got {options!r}")
        options = {}
    elif options and not factory:
        c.add("cluster.options", "expected a factory to pass these options to; set cluster.factory")
    timeout = c.typed(raw, "connect_timeout", "cluster", (int, float), "a number of seconds > 0", CONNECT_TIMEOUT)
    if not 0 < timeout < float("inf"):
        c.add("cluster.connect_timeout", f"expected a number of seconds > 0, got {timeout!r}")
        timeout = CONNECT_TIMEOUT
    return ClusterSpec(
        address, max(workers, 0), max(threads, 0), memory, factory, tuple(options.items()), float(timeout)
    )
