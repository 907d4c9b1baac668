"""The one exception hierarchy of cvplgraph.

Every error the library raises on purpose derives from :class:`CvplError`; the
command line prints such errors as one line and exits 1 (``--debug`` shows the
traceback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class CvplError(Exception):
    """Root of every error cvplgraph raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a spec: where it is, what it is, what was expected."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class SpecError(CvplError):
    """A spec is invalid; carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} problems in the spec:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class InputError(CvplError):
    """An input store cannot be read or has unexpected metadata."""


class CacheError(CvplError):
    """The cache cannot be read or written."""


class DamagedStore(CacheError):
    """A committed cache store is damaged: a chunk the cache recorded as written is absent (deleted
    under a reader), or its checksums are unreadable.

    ``store`` is the store's URL: the run invalidates the entry whose store it is and computes the
    node again."""

    def __init__(self, message: str, store: str) -> None:
        super().__init__(message, store)  # both in args: the error crosses processes by pickle
        self.store = store

    def __str__(self) -> str:
        return str(self.args[0])


class OpError(CvplError):
    """An op was called with arguments it cannot use."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (a multi-line message is joined)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class OpFailed(CvplError):
    """A node's op raised an exception that is no CvplError, while its graph was built or in one of its
    tasks: a bug in the op, or an input it cannot handle. Names the node, the op and the exception."""

    def __init__(self, node: str, op: str, exc: BaseException) -> None:
        self.node, self.op = node, op
        super().__init__(f"node {node!r} (op {op!r}) failed: {one_line(exc)}")

    def __reduce__(self) -> tuple[Any, ...]:  # raised in a worker's task, it travels pickled
        return _op_failed, (self.node, self.op, str(self))


def _op_failed(node: str, op: str, message: str) -> OpFailed:
    out = OpFailed.__new__(OpFailed)
    CvplError.__init__(out, message)
    out.node, out.op = node, op
    return out


class HaloTooLarge(OpError):
    """A parameter's value needs a halo wider than the volume; ``largest`` is the largest that fits
    (None if none does)."""

    def __init__(self, param: str, value: float, largest: float | None, axis: int, depth: int, size: int) -> None:
        self.param, self.value, self.largest = param, value, largest
        fits = f"expected at most {largest:g} for this volume" if largest else "no value fits a volume this small"
        super().__init__(
            f"{value:g} needs a halo of {depth} voxels along {'zyx'[axis]}, more than the volume's {size}; {fits}"
        )
