"""Progress of one compute: tasks done of all, ETA, and bytes read and written.

Bytes come from :mod:`cvplgraph.io.meter` (in this process for dask's local
schedulers, from every worker's metrics on a cluster). Tasks are counted by a
dask callback (local schedulers) or by a scheduler plugin watching this
client's tasks (a cluster). A :class:`Display` draws the figures as a bar on stderr, as
JSON lines on stdout, or not at all.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from dask.utils import format_bytes

from cvplgraph.io.meter import READ, WRITTEN, local_totals


@dataclass(frozen=True)
class Snapshot:
    """Figures of a compute at one moment."""

    done: int
    total: int
    read_bytes: int
    written_bytes: int
    elapsed: float

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before the first task finished)."""
        if self.done <= 0 or self.total <= 0:
            return None
        return max(0.0, self.elapsed * (self.total - self.done) / self.done)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:d}:{rest % 60:02d}"


def bar_line(s: Snapshot, width: int = 24) -> str:
    """``[#####-----]  52%  1204/2310 tasks  0:13 elapsed  ETA 0:12  read 1.20 GiB  written 380.00 MiB``"""
    share = s.done / s.total if s.total else 0.0
    filled = int(round(width * min(share, 1.0)))
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] {share:4.0%}  {s.done}/{s.total} tasks  "
        f"{_clock(s.elapsed)} elapsed  ETA {_clock(s.eta)}  "
        f"read {format_bytes(s.read_bytes)}  written {format_bytes(s.written_bytes)}"
    )


class Display:
    """Where progress goes: ``"bar"`` (stderr), ``"json"`` (JSON lines on stdout) or ``"quiet"``.

    A bar on a terminal redraws in place twice a second; elsewhere (a log
    file, CI) it prints a line at most every ``log_every`` seconds, and the last.
    """

    def __init__(self, mode: str = "bar", stream: TextIO | None = None, log_every: float = 10.0) -> None:
        if mode not in ("bar", "json", "quiet"):
            raise ValueError(f"progress mode {mode!r}: expected bar, json or quiet")
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.tty = mode == "bar" and self.stream.isatty()
        self.interval = 0.5 if self.tty else log_every if mode == "bar" else 1.0
        self._last = -1e9
        self._width = 0
        self.last: Snapshot | None = None  # the final figures of the last compute

    def event(self, name: str, **fields: Any) -> None:
        """One JSON line (json mode only): run started, dashboard, finished, interrupted."""
        if self.mode == "json":
            print(json.dumps({"event": name, **fields}, default=str), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line of text for people (bar mode only)."""
        if self.mode == "bar":
            self.close()
            print(text, file=self.stream, flush=True)

    def update(self, s: Snapshot, final: bool = False) -> None:
        if final:
            self.last = s
        now = time.monotonic()
        if self.mode == "quiet" or (not final and now - self._last < self.interval):
            return
        self._last = now
        if self.mode == "json":
            self.event("progress", **asdict(s), eta=None if s.eta is None else round(s.eta, 1))
            return
        line = bar_line(s)
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            if final:
                self.close()
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a bar left mid-line (a run stopped by Ctrl-C), so what follows starts on a line of its own."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def as_display(progress: bool | str | Display) -> Display:
    """``True`` → a bar, ``False`` → quiet, a mode name or a Display as given."""
    if isinstance(progress, Display):
        return progress
    if isinstance(progress, str):
        return Display(progress)
    return Display("bar" if progress else "quiet")


# --- dask's local schedulers ---------------------------------------------------------------------


@contextlib.contextmanager
def local_progress(display: Display) -> Iterator[Any]:
    """Count tasks of computes inside the block with a dask callback; draw from a timer thread.

    Yields the callback, for ``dask.compute(..., callbacks=[callback._callback])``: given explicitly, it is
    not registered in dask's global ``Callback.active``, which a local compute empties and restores around
    itself. Computes in two threads (a run from napari's dock widget while napari slices a dask-backed
    layer under its own cache callback) would otherwise each run the other's callbacks, or none: counts
    go wrong and callbacks fail on tasks they never saw start."""
    from dask.callbacks import Callback

    state = {"done": 0, "total": 0}
    start = time.perf_counter()
    base = local_totals()

    def start_state(dsk: Any, st: dict[str, Any]) -> None:
        state["total"] += sum(len(st[k]) for k in ("ready", "waiting", "running", "finished"))

    def posttask(*_: Any) -> None:
        state["done"] += 1

    def snapshot() -> Snapshot:
        now = local_totals()
        return Snapshot(
            state["done"], state["total"], now[READ] - base[READ], now[WRITTEN] - base[WRITTEN],
            time.perf_counter() - start,
        )  # fmt: skip

    stop = threading.Event()

    def draw() -> None:
        while not stop.wait(min(display.interval, 0.5)):
            display.update(snapshot())

    thread = threading.Thread(target=draw, name="cvplgraph-progress", daemon=True)
    if display.mode != "quiet":
        thread.start()
    try:
        yield Callback(start_state=start_state, posttask=posttask)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
    display.update(snapshot(), final=True)


# --- a distributed cluster ------------------------------------------------------------------------


def _worker_bytes(dask_worker: Any) -> tuple[float, float]:
    digests = dask_worker.digests_total
    return tuple(sum(v for k, v in list(digests.items()) if isinstance(k, tuple) and k[-2:] == (label, "bytes"))
                 for label in (READ, WRITTEN))  # type: ignore[return-value]  # fmt: skip


class _ClusterFigures:
    """Tasks from the scheduler's :class:`TaskCounter`, bytes from every worker's metrics since the start."""

    def __init__(self, client: Any, name: str | None) -> None:
        self.client, self.name = client, name
        self.base: dict[str, tuple[float, float]] = client.run(_worker_bytes)
        self.start = time.perf_counter()
        self.tasks = (0, 0)

    def snapshot(self) -> Snapshot:
        if self.name:
            from cvplgraph.engine.counter import tasks_of

            self.tasks = self.client.run_on_scheduler(tasks_of, name=self.name) or self.tasks
        read = written = 0.0
        for worker, (r, w) in self.client.run(_worker_bytes).items():
            r0, w0 = self.base.get(worker, (0.0, 0.0))
            if r < r0 or w < w0:  # a restarted worker counts from zero again
                r0 = w0 = 0.0
            read, written = read + r - r0, written + w - w0
        return Snapshot(*self.tasks, int(read), int(written), time.perf_counter() - self.start)


def cluster_progress(futures: list[Any], display: Display, figures: _ClusterFigures) -> None:
    """Wait for ``futures`` (done, failed or cancelled), drawing progress as they compute.

    Each future tells when it is done (a callback, added once): the wait ends at once, not at the next poll. Not
    ``distributed.wait`` with a timeout again and again: every such call leaves waiters on every future, so the
    client's memory grew with the number of calls times the number of futures (2.4 GB for a 20 GB run of 2,400
    blocks, killed by the kernel at 100 GB)."""
    finished = threading.Event()
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Any) -> None:
        with lock:
            left[0] -= 1
            if left[0] <= 0:
                finished.set()

    if not futures:
        finished.set()
    for future in futures:
        future.add_done_callback(one_done)
    while not finished.wait(min(display.interval, 0.5)):
        if display.mode != "quiet":
            display.update(figures.snapshot())
    last = figures.snapshot()
    display.update(Snapshot(last.total, last.total, last.read_bytes, last.written_bytes, last.elapsed), final=True)


@contextlib.contextmanager
def counting(client: Any, display: Display) -> Iterator[_ClusterFigures]:
    """Count ``client``'s tasks with a :class:`TaskCounter` on the scheduler for the block's duration.

    Register it before the graph is sent; a scheduler that cannot load it
    (cvplgraph missing there) leaves the task figures at zero.
    """
    from cvplgraph.engine.counter import TaskCounter

    name: str | None = f"cvplgraph-progress-{client.id}"
    try:
        client.register_plugin(TaskCounter(client.id), name=name)
    except Exception as exc:  # noqa: BLE001 - progress must never stop a run
        display.message(f"progress: the scheduler could not load the task counter ({type(exc).__name__}: {exc})")
        name = None
    try:
        yield _ClusterFigures(client, name)
    finally:
        if name:
            with contextlib.suppress(Exception):
                client.unregister_scheduler_plugin(name)
