"""The spec as data: frozen dataclasses for every table of a spec file, built by
:mod:`cvplgraph.spec.parse` (or by hand in Python) and read by every layer above."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvplgraph.errors import Problem
from cvplgraph.spec.cluster import ClusterSpec
from cvplgraph.spec.fields import line_of
from cvplgraph.types import PortType
from cvplgraph.values import LEFT, RIGHT

INPUT = "input"  # the name nodes use to refer to the raw image
AXES = ("z", "y", "x")
COMPRESSORS = ("blosc", "zstd", "gzip", "none")
#: What ``[input] nonfinite`` may be: stop the run at the first block holding NaN or ±Inf, or read them as 0.
NONFINITE = ("error", "zero")


@dataclass(frozen=True)
class InputSpec:
    """The raw image: an OME-Zarr store and what to take from it."""

    url: str
    channel: int = 0
    timepoint: int = 0
    level: int = 0
    crop: tuple[tuple[int, int], ...] | None = None  # (start, stop) per z, y, x
    intensity_range: tuple[float, float] | None = None
    chunks: tuple[int, int, int] | None = None  # working chunks; default: the store's
    fingerprint: str = "listing"  # "listing": metadata + chunk names, sizes, mtimes/ETags; "content": + bytes
    missing_chunks: str = "fill"  # chunks absent from the store: "fill" (read as fill value, said) or "error"
    nonfinite: str = "error"  # NaN/±Inf voxels of a float image: "error" stops the run, "zero" reads them as 0


#: The compressor of masks and labels when a node names none: blosc lz4 writes a 16 MiB block of labels
#: in 17 ms against 25 ms for zstd level 3 and still compresses them about 100× (docs/benchmarks.md).
SPARSE_COMPRESSOR: tuple[tuple[str, Any], ...] = (("clevel", 5), ("cname", "lz4"), ("id", "blosc"))


@dataclass(frozen=True)
class StoreSpec:
    """How a cached node is stored. None of these change values, so none enter keys."""

    chunks: tuple[int, int, int] | None = None
    multiscale: int = 1
    compressor: tuple[tuple[str, Any], ...] = (("id", "blosc"), ("cname", "zstd"), ("clevel", 3))

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunks": list(self.chunks) if self.chunks else None,
            "multiscale": self.multiscale,
            "compressor": dict(self.compressor),
        }


class Params(Mapping[str, Any]):
    """A node's parameters: a read-only, hashable mapping of parameter name → value, in name order.

    Built once by :mod:`cvplgraph.spec.parse` (the given parameters) and by
    :func:`cvplgraph.engine.compile.compile_spec` (defaults filled in), and passed as it is to the
    op (``op(*inputs, **params)``). Values are what :func:`cvplgraph.spec.params.check_param`
    makes of them (lists become tuples), so a :class:`NodeSpec` holding one stays hashable.
    Where a real ``dict`` is needed (a key, a manifest entry, JSON), ``dict(params)`` gives one
    in name order.

    Parameters
    ----------
    items : Mapping or iterable of (name, value) pairs, optional
        The parameters; their order does not matter.

    Examples
    --------
    >>> Params({"level": 0.3, "block": (64, 64, 64)})
    Params({'block': (64, 64, 64), 'level': 0.3})
    >>> Params(level=0.3) == {"level": 0.3}
    True
    """

    __slots__ = ("_items", "_map")

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **given: Any) -> None:
        pairs = dict(items.items() if isinstance(items, Mapping) else items, **given)
        self._items: tuple[tuple[str, Any], ...] = tuple(sorted(pairs.items()))
        self._map: dict[str, Any] = dict(self._items)

    def __getitem__(self, name: str) -> Any:
        return self._map[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Params({self._map!r})"

    def __reduce__(self) -> tuple[type[Params], tuple[tuple[tuple[str, Any], ...]]]:
        return (Params, (self._items,))


@dataclass(frozen=True)
class NodeSpec:
    """One step: an op, where its inputs come from, its parameters and storage.

    ``params`` holds the given parameters only (defaults are filled in when the spec compiles);
    a mapping or (name, value) pairs given by hand become :class:`Params`.
    """

    name: str
    op: str
    inputs: tuple[tuple[str, str], ...]  # (port, source node or "input")
    params: Params  # given parameters
    cache: bool = True
    store: StoreSpec = StoreSpec()
    view: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.params, Params):
            object.__setattr__(self, "params", Params(self.params))

    @property
    def input_map(self) -> dict[str, str]:
        return dict(self.inputs)


@dataclass(frozen=True)
class Spec:
    path: str
    input: InputSpec
    nodes: tuple[NodeSpec, ...]
    cache_url: str
    cluster: ClusterSpec = ClusterSpec()
    outputs: tuple[tuple[str, str], ...] = ()  # (node, path)
    locations: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    plugins: tuple[str, ...] = ()  # modules imported for their ops
    atlases: tuple[tuple[str, AtlasSpec], ...] = ()  # [inputs.NAME] tables (kind = "atlas")
    formats: tuple[tuple[str, str], ...] = ()  # (output path, format) where the spec names a format

    @property
    def sources(self) -> dict[str, str]:
        """Names nodes take input from without a node, and their types: the image and each named input."""
        return {INPUT: "Image", **{name: "Atlas" for name, _ in self.atlases}}

    def format_of(self, target: str) -> str:
        """The declared format of an output file, or "" (chosen by its suffix)."""
        return dict(self.formats).get(target, "")

    @property
    def source(self) -> str:
        """The spec file's absolute path (what cache entries record)."""
        return str(Path(self.path).resolve()) if self.path != "<spec>" else self.path

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    def problem(self, path: str, message: str) -> Problem:
        return Problem(self.path, line_of(self.locations, path), path, message)


@dataclass(frozen=True)
class AtlasSpec:
    """Where an atlas is and how it sits in sample space (see docs/spec.md, ``[inputs.NAME]``)."""

    url: str  # a file or folder; empty when the atlas is named
    structures: str = ""  # CSV or BrainGlobe JSON; default: the BrainGlobe folder's
    hemispheres: str = ""  # label volume of the annotation's shape; default: the folder's, if any
    hemisphere_values: tuple[int, int] = (LEFT, RIGHT)  # the stored values of (left, right)
    scale: tuple[float, float, float] | None = None  # µm per voxel along sample (z, y, x)
    translation: tuple[float, float, float] | None = None  # µm of the first voxel's centre
    transpose: tuple[int, int, int] = (0, 1, 2)  # file axes that become sample (z, y, x)
    chunks: tuple[int, int, int] = (64, 64, 64)  # working chunks in sample orientation
    name: str = ""  # a BrainGlobe atlas name (e.g. allen_mouse_25um), found in the local BrainGlobe folder
    version: str = ""  # of the named atlas; default: the newest installed
    orientation: str = ""  # the image's axes (z, y, x) as a BrainGlobe code such as "asr"; default: the atlas's


#: File suffixes an output of each type may have.
SUFFIXES: dict[PortType, tuple[str, ...]] = {
    PortType.Points: (".csv", ".parquet"),
    PortType.BlockCounts: (".csv", ".json"),
    PortType.Image: (".ome.zarr", ".zarr"),
    PortType.Mask: (".ome.zarr", ".zarr"),
    PortType.Labels: (".ome.zarr", ".zarr"),
    PortType.Density: (".ome.zarr", ".zarr"),
    PortType.RegionTable: (".csv", ".zarr", ".png"),
}


#: The pairs of a BrainGlobe orientation code: one letter of each names where an axis points.
ORIENTATION_PAIRS = ("ap", "si", "lr")
#: Output formats: the node type each takes and the suffix its file needs.
FORMATS: dict[str, tuple[PortType, str]] = {
    "brainglobe": (PortType.RegionTable, ".csv"),
    "all_points": (PortType.Points, ".csv"),
    "cellfinder_xml": (PortType.Points, ".xml"),
}


def suffix_problem(kind: PortType, path: str, fmt: str = "") -> str | None:
    """Why ``path`` cannot hold a value of ``kind`` (in format ``fmt``), or None."""
    if fmt in FORMATS:
        wanted, suffix = FORMATS[fmt]
        if kind is not wanted:
            return f"format {fmt} is for a {wanted} node, got a {kind} node"
        return None if path.endswith(suffix) else f"format {fmt} needs a file ending in {suffix}, got {path!r}"
    allowed = SUFFIXES.get(kind, ())
    if any(path.endswith(s) for s in allowed):
        return None
    return f"a {kind} output needs a file ending in {' or '.join(allowed) or '(no output format yet)'}, got {path!r}"


