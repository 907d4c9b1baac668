"""A real `dask scheduler` and `dask worker` processes on 127.0.0.1, started and stopped by tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dask_processes(
    logs: Path,
    *,
    workers: int = 1,
    threads: int = 2,
    memory_limit: str = "2GiB",
    env: dict[str, str] | None = None,
    worker_dir: Path | None = None,
) -> Iterator[str]:
    """Start a scheduler and ``workers`` worker processes (each under a nanny); yield the address.

    The workers run in ``worker_dir`` (default: ``logs``) with ``env`` added to this
    process's environment, and must all have joined before the address is handed out.
    """
    dask_cli = shutil.which("dask", path=str(BIN)) or shutil.which("dask")
    assert dask_cli, "the `dask` command (from distributed) must be installed"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    environ = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    scheduler = [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--dashboard-address", "127.0.0.1:0"]  # fmt: skip
    worker = [dask_cli, "worker", address, "--host", "127.0.0.1", "--nworkers", str(workers), "--nthreads",
              str(threads), "--memory-limit", memory_limit, "--no-dashboard"]  # fmt: skip
    procs = []
    try:
        for name, command in (("scheduler", scheduler), ("worker", worker)):
            with open(logs / f"{name}.log", "w") as out:
                procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ,
                                              cwd=worker_dir or logs, start_new_session=True))  # fmt: skip
        wait_for_workers(address, workers, logs)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()


def wait_for_workers(address: str, n: int, logs: Path, seconds: float = 90) -> None:
    """Block until ``n`` workers are connected to the scheduler at ``address``."""
    from distributed import Client

    deadline = time.monotonic() + seconds
    while True:
        try:
            with Client(address, timeout="2s") as client:
                if len(client.scheduler_info(n_workers=-1)["workers"]) >= n:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test cluster did not start; logs in {logs}")
        time.sleep(0.5)
