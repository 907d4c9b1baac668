"""The op registry: plain functions become typed, versioned graph nodes.

An op is a function whose positional parameters are its input ports and whose
keyword-only parameters are its typed parameters::

    @op("threshold", version=1, inputs={"image": PortType.Image}, output=PortType.Mask)
    def threshold(image, *, level: float = 0.5):
        ...

The decorator records the op in :data:`REGISTRY` and returns a wrapper that
also accepts numpy and dask arrays, so ``cvplgraph.ops.threshold(arr,
level=0.4)`` works in a notebook. Caching, storage and display are never an
op's business: ops see only values.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cvplgraph.errors import CvplError
from cvplgraph.kernels import Kernel
from cvplgraph.plugins import load_entry_points
from cvplgraph.types import PortType
from cvplgraph.values import adapt_call

#: Parameter types an op may declare; spec values are checked against them.
PARAM_TYPES = (int, float, bool, str)


@dataclass(frozen=True)
class Param:
    """One keyword-only parameter of an op."""

    name: str
    annotation: Any  # int, float, bool, str, tuple[int, ...], tuple[float, ...] or Literal[...]
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        """Human description of the expected type, for error messages and docs."""
        ann = self.annotation
        origin = typing.get_origin(ann)
        if origin is typing.Literal:
            return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
        if origin is tuple:
            inner = typing.get_args(ann)[0]
            return "a list of finite numbers" if inner is float else f"a list of {inner.__name__}"
        return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}[ann]


@dataclass(frozen=True)
class Port:
    """One input port: its name, the types it accepts, and whether it may be left out."""

    name: str
    types: frozenset[PortType]
    optional: bool = False


@dataclass(frozen=True)
class OpDef:
    """A registered op."""

    name: str
    version: int
    inputs: tuple[Port, ...]
    output: PortType
    params: tuple[Param, ...]
    func: Callable[..., Any] = field(repr=False)
    summary: str = ""
    checks: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict, repr=False)
    halo: str = "none"  # how far a block reads into its neighbours, for the docs
    cost: str = ""  # what dominates its run time, for the docs
    paths: tuple[str, ...] = ()  # string parameters that name files, resolved against the spec's folder
    kernel: Kernel | None = field(default=None, repr=False)  # its per-block form, for fused lowering

    def port(self, name: str) -> Port | None:
        return next((p for p in self.inputs if p.name == name), None)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


REGISTRY: dict[str, OpDef] = {}


class UnknownOpError(CvplError):
    """No op of that name is registered."""


def _normalise_ports(
    inputs: Mapping[str, PortType | tuple[PortType, ...]], optional: tuple[str, ...]
) -> tuple[Port, ...]:
    ports = []
    for name, types in inputs.items():
        accepted = frozenset(types) if isinstance(types, tuple) else frozenset({types})
        ports.append(Port(name, accepted, name in optional))
    return tuple(ports)


def _params_from_signature(func: Callable[..., Any], port_names: set[str]) -> tuple[Param, ...]:
    sig = inspect.signature(func)
    hints = typing.get_type_hints(func)
    params = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD or p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"op {func.__name__}: **kwargs / *args are not allowed; declare every parameter")
        if p.name in port_names:
            continue
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"op {func.__name__}: parameter {p.name!r} must be keyword-only (after *)")
        ann = hints.get(p.name)
        origin = typing.get_origin(ann)
        ok = (
            ann in PARAM_TYPES
            or origin is typing.Literal
            or (origin is tuple and typing.get_args(ann)[1:] == (Ellipsis,) and typing.get_args(ann)[0] in (int, float))
        )
        if not ok:
            raise TypeError(
                f"op {func.__name__}: parameter {p.name!r} needs a type from int, float, bool, str, "
                f"tuple[int, ...], tuple[float, ...] or Literal[...]; got {ann!r}"
            )
        params.append(Param(p.name, ann, p.default))
    return tuple(params)


def op(
    name: str,
    *,
    version: int,
    inputs: Mapping[str, PortType | tuple[PortType, ...]],
    output: PortType,
    optional: tuple[str, ...] = (),
    checks: Mapping[str, Callable[[Any], str | None]] | None = None,
    halo: str = "none",
    cost: str = "",
    paths: tuple[str, ...] = (),
    kernel: Kernel | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``func`` as the op ``name``.

    Parameters
    ----------
    name : str
        The name a spec uses in ``op = "..."``.
    version : int
        Bump it whenever the op's results change for the same inputs and
        parameters; it is part of every cache key downstream.
    inputs : mapping of str to PortType or tuple of PortType
        The input ports, in the order of the function's positional parameters.
    output : PortType
        The type of the value the op returns.
    optional : tuple of str
        Input ports that may be left unconnected (the function gets ``None``).
    checks : mapping of str to callable, optional
        Per-parameter value checks beyond the type, run when a spec loads: each
        returns None when the (type-checked) value is fine, else what was expected
        ("three positive integers (z, y, x)").
    halo, cost : str
        How far each block reads into its neighbours, and what dominates the
        run time; both appear in the generated op reference.
    paths : tuple of str
        String parameters that name files; a spec's relative paths are
        resolved against the spec's folder.
    kernel : Pointwise, LocalPass or Reduce, optional
        The op's computation for one block (:mod:`cvplgraph.kernels`), so that the lowering can run a
        chain of ops in one task per block. Without one the op is never fused.
    """
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        ports = _normalise_ports(inputs, optional)
        params = _params_from_signature(func, {p.name for p in ports})
        doc = inspect.getdoc(func) or ""
        unknown = set(checks or {}) - {p.name for p in params}
        if unknown:
            raise TypeError(f"op {name}: checks name unknown parameters {sorted(unknown)}")
        summary = doc.split("\n\n")[0].replace("\n", " ")
        opdef = OpDef(
            name, version, ports, output, params, func, summary, dict(checks or {}), halo, cost, paths, kernel
        )
        previous = REGISTRY.get(name)
        where = (func.__module__, func.__qualname__)
        # the same function registering again is its module imported again (importlib.reload, as a
        # worker does with an uploaded plugin); another function under the name is a clash
        if previous is not None and (previous.func.__module__, previous.func.__qualname__) != where:
            raise CvplError(f"op {name!r} is registered twice")
        REGISTRY[name] = opdef
        wrapper = adapt_call(opdef)
        wrapper.opdef = opdef  # type: ignore[attr-defined]
        return wrapper

    return register


def get_op(name: str) -> OpDef:
    """The registered op ``name``; the error lists the known ones."""
    load_entry_points()
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownOpError(f"unknown op {name!r}; known ops: {known}") from None


def known_ops() -> list[str]:
    """Names of every registered op (the built-in ones once :mod:`cvplgraph.ops` is imported,
    and those of installed plugin packages)."""
    load_entry_points()
    return sorted(REGISTRY)
