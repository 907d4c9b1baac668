"""Where a run computes: the caller's client, an existing scheduler, a factory, or a LocalCluster.

Order of precedence: a ``client`` passed in; ``scheduler="threads"``/``"sync"``
(dask's local schedulers, no cluster); a scheduler address (``--scheduler`` or
``[cluster] address``); ``[cluster] factory = "module:function"``, called with
``[cluster] options`` as keyword arguments and returning a Client or a Cluster;
otherwise a LocalCluster of one single-threaded worker process per core, each
with its share of the machine's memory as its limit.

Workers need only cvplgraph installed. Plugin ops from the user's own files
(modules of no installed distribution, e.g. beside the spec) are uploaded to the
scheduler and every worker, and to workers that join later, as plugins; ops
from installed packages must be importable on the workers, which is checked
before anything runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import importlib.metadata
import logging
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import dask

from cvplgraph.errors import CvplError
from cvplgraph.plugins import import_plugin
from cvplgraph.spec.model import Spec

LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "processes")


@contextlib.contextmanager
def connect(spec: Spec, client: Any = None, scheduler: str | None = None) -> Iterator[Any]:
    """Yield a distributed Client (or None for a local dask scheduler); a client or cluster made here
    is closed afterwards."""
    if client is not None:
        yield client
        return
    if scheduler in LOCAL_SCHEDULERS:
        # the scheduler function itself, not its name: for a name, dask imports distributed (≈ 0.1 s) to
        # look for a client first, which a small run on threads pays on every start
        with dask.config.set(scheduler=_local_scheduler(scheduler)):
            yield None
        return
    from distributed import Client

    address = scheduler or spec.cluster.address
    if address:
        timeout = spec.cluster.connect_timeout
        check_scheduler(address, timeout)
        try:
            c = Client(address, timeout=f"{timeout}s")
        except Exception as exc:  # anything the address answers must end in one line, not a traceback
            raise CvplError(f"cannot connect to the dask scheduler at {address}: {_reason(exc)}") from None
        with c:
            yield c
        return
    if spec.cluster.factory:
        c, cluster = _from_factory(spec)
        try:
            yield c
        finally:
            c.close()
            if cluster is not None:
                cluster.close()
        return
    with local_cluster(spec) as c:
        yield c


def _local_scheduler(name: str) -> Callable[..., Any]:
    """dask's local scheduler ``name`` as its ``get`` function."""
    if name == "threads":
        import dask.threaded

        return dask.threaded.get
    if name == "processes":
        import dask.multiprocessing

        return dask.multiprocessing.get
    import dask.local

    return dask.local.get_sync


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _identity(address: str, timeout: float) -> Any:
    """What the server at ``address`` says it is, asked the way a client asks a scheduler."""
    from distributed.comm import connect as open_comm
    from distributed.core import send_recv
    from distributed.security import Security

    comm = await open_comm(address, timeout=timeout, **Security().get_connection_args("client"))
    try:
        return await send_recv(comm, op="identity", reply=True)
    finally:
        comm.abort()


def check_scheduler(address: str, timeout: float) -> None:
    """Stop with one line unless a dask scheduler answers at ``address`` within ``timeout`` seconds.

    distributed's own connection waits for the other side's handshake without a time limit, so an
    address that accepts connections but speaks another protocol (an HTTP server, the dashboard's
    port) would hang the run; one that closes the connection or answers garbage would raise whatever
    decoding the garbage raised. The probe runs in a thread of its own, with its own event loop, so
    it works from inside a running loop (a notebook) as well.
    """
    if address.startswith("inproc://"):  # an in-process scheduler: nothing on the network to check
        return

    def probe() -> Any:  # one second more than the connection's own limit, so "nothing listens" is told apart
        return asyncio.run(asyncio.wait_for(_identity(address, timeout), timeout + 1))

    from distributed.comm.core import CommClosedError

    expected = f"expected a dask scheduler at {address}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            identity = pool.submit(probe).result()
        except TimeoutError:
            raise CvplError(
                f"{expected}, but nothing answered as one within {timeout:g} s ([cluster] connect_timeout); "
                "is it the dashboard's or another service's port?"
            ) from None
        except CommClosedError:
            raise CvplError(f"{expected}, but the server there closed the connection without answering") from None
        except OSError as exc:  # nothing listens there (distributed retries until the timeout), no route, …
            raise CvplError(f"cannot reach the dask scheduler at {address}: {exc}") from None
        except Exception as exc:
            raise CvplError(f"{expected}, but the server there answered something else ({_reason(exc)})") from None
    kind = identity.get("type") if isinstance(identity, dict) else None
    if not (isinstance(kind, str) and kind.endswith("Scheduler")):
        found = f"a dask {kind}" if isinstance(kind, str) else f"the answer {str(identity)[:80]!r}"
        raise CvplError(f"{expected}, found {found}")


@contextlib.contextmanager
def local_cluster(spec: Spec) -> Iterator[Any]:
    """A LocalCluster sized to the machine (or to ``[cluster]``) and a client on it."""
    from distributed import Client, LocalCluster

    cfg = spec.cluster
    with (
        LocalCluster(
            n_workers=cfg.n_workers or max(1, os.cpu_count() or 1),
            threads_per_worker=cfg.threads_per_worker or 1,
            memory_limit=cfg.memory_limit,  # "auto": the machine's memory shared between the workers
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
            config=worker_config(),
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def worker_config() -> dict[str, Any]:
    """The dask settings the workers of a LocalCluster started here run with, over the caller's: distributed's
    statistical profiler off. It samples every worker thread's stack 100 times a second and keeps a second-by-
    second history of what it saw; over a whole brain's run that history grew by ~30 MB per worker (a 28 GB
    volume: workers' peak 314/307 MiB with it, 285/277 without; docs/scale.md), for the dashboard's profile
    page, which a run from the command line does not need. ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED`` set
    in the environment decides instead. (Whole settings: the nanny lays them over the caller's top-level key by key.)"""
    import dask.config

    if PROFILER_ENV in os.environ:
        return {}
    return dask.config.merge(dask.config.config, {"distributed": {"worker": {"profile": {"enabled": False}}}})


#: The environment variable that, when set, decides whether a LocalCluster's workers run distributed's profiler.
PROFILER_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def load_factory(reference: str, folder: Path) -> Callable[..., Any]:
    """The function a ``"module:function"`` reference names (the spec's folder is searched first)."""
    module_name, _, function = reference.partition(":")
    if problem := import_plugin(module_name, folder):
        raise CvplError(f"cluster.factory {reference!r}: {problem}")
    factory = getattr(sys.modules[module_name], function, None)
    if not callable(factory):
        raise CvplError(f"cluster.factory {reference!r}: module {module_name!r} has no function {function!r}")
    return factory


def _from_factory(spec: Spec) -> tuple[Any, Any]:
    """(client, cluster to close afterwards or None) from the spec's factory."""
    from distributed import Client

    cfg = spec.cluster
    factory = load_factory(cfg.factory, Path(spec.path).parent)
    try:
        made = factory(**dict(cfg.options))
    except Exception as exc:  # the factory is user code talking to an outside system
        raise CvplError(f"cluster.factory {cfg.factory!r} failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(made, Client):
        return made, getattr(made, "cluster", None)  # Client(cluster) does not close that cluster itself
    if hasattr(made, "scheduler_address"):  # a Cluster object (LocalCluster, SLURMCluster, KubeCluster, …)
        return Client(made), made
    raise CvplError(
        f"cluster.factory {cfg.factory!r} returned {type(made).__name__}; expected a distributed.Client or a Cluster"
    )


def _installed_packages() -> set[str]:
    """Top-level module names that belong to an installed distribution (pip, conda, editable)."""
    return set(importlib.metadata.packages_distributions())


def _upload(client: Any, module: ModuleType) -> None:
    """Send a user's plugin module (a file or a package folder) to the scheduler, which unpickles the
    task graph, and to every worker, present and future (see :mod:`cvplgraph.engine.upload`). The names make
    a later run replace, not add to, the upload."""
    from distributed.diagnostics.plugin import UploadFile

    from cvplgraph.engine.upload import SchedulerModule

    path = Path(module.__file__ or "")
    with tempfile.TemporaryDirectory() as tmp:
        if path.name == "__init__.py":  # a package folder: send it zipped
            package, path = path.parent, Path(tmp) / f"{path.parent.name}.zip"
            with zipfile.ZipFile(path, "w") as z:
                for file in sorted(package.rglob("*.py")):
                    z.write(file, Path(package.name) / file.relative_to(package))
        name = f"cvplgraph-plugin-{module.__name__}"
        client.register_plugin(SchedulerModule(path.name, path.read_bytes()), name=name)
        client.register_plugin(UploadFile(str(path)), name=name)


def _missing_modules(names: list[str]) -> list[str]:
    """On a worker: which of ``names`` cannot be imported."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            missing.append(name)
    return missing


def ship_plugins(client: Any, modules: Iterable[str]) -> None:
    """Make the op modules a run uses importable on every worker, or say which workers lack which.

    ``modules`` are the Python modules the run's ops come from; cvplgraph's own are skipped.
    """
    user = sorted({m for m in modules if m.split(".")[0] != "cvplgraph" and m in sys.modules})
    if not user:
        return
    installed = _installed_packages()
    for top in sorted({m.split(".")[0] for m in user} - installed):
        if getattr(sys.modules.get(top), "__file__", None):
            try:
                _upload(client, sys.modules[top])
            except Exception as exc:
                raise CvplError(
                    f"cannot send plugin module {top!r} to the workers: {type(exc).__name__}: {exc}"
                ) from exc
    missing = {w: m for w, m in client.run(_missing_modules, user).items() if m}
    if missing:
        worker, names = sorted(missing.items())[0]
        raise CvplError(
            f"plugin module(s) {', '.join(names)} cannot be imported on {len(missing)} worker(s) (e.g. {worker}): "
            "install them on every worker, or keep the plugin as a file beside the spec so that it is uploaded"
        )


__all__ = ["check_scheduler", "connect", "load_factory", "local_cluster", "ship_plugins"]
