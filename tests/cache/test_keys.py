"""Property tests of content keys: ``compile_spec(parse_spec(text, path), fingerprint)``.

A node's key must change exactly when something that determines its value
changes (its op, op version, parameters, or an upstream key) and never
because of layout, storage, caching or display options.

The spec is built from :data:`TABLES` so that hypothesis can reorder tables
and keys and substitute values. Which node depends on which is worked out
from the TOML itself (:func:`descendants`), not from the compiled graph.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvplgraph.cache.keys import canonical, digest, node_key
from cvplgraph.engine.compile import compile_spec
from cvplgraph.registry import REGISTRY, op
from cvplgraph.spec.model import COMPRESSORS, INPUT, InputSpec, NodeSpec, Params, Spec
from cvplgraph.spec.parse import parse_spec
from cvplgraph.types import PortType

SETTINGS = settings(max_examples=50, deadline=None)
FILE = "spec.toml"
FP = "fp"
QUOTE = '"'

Table = tuple[str, tuple[tuple[str, str], ...]]  # (table name, ((key, TOML literal), ...))

#: Two branches that share the raw input, so a change in one must leave the other alone.
TABLES: tuple[Table, ...] = (
    ("input", (("url", '"data/volume.ome.zarr"'), ("channel", "0"), ("level", "0"))),
    ("cache", (("url", '"cache"'),)),
    ("cluster", (("address", '""'), ("n_workers", "2"))),
    ("nodes.mask", (("op", '"threshold"'), ("image", '"input"'), ("level", "0.3"))),
    ("nodes.mask_hi", (("op", '"threshold"'), ("image", '"input"'), ("level", "0.6"))),
    ("nodes.cells", (("op", '"connected_components"'), ("mask", '"mask"'), ("connectivity", "6"))),
    ("nodes.cells_hi", (("op", '"connected_components"'), ("mask", '"mask_hi"'), ("connectivity", "26"))),
    ("nodes.centroids", (("op", '"centroids"'), ("labels", '"cells"'), ("image", '"input"'))),
    ("nodes.counts", (("op", '"count"'), ("objects", '"centroids"'), ("block", "[64, 256, 256]"))),
    ("nodes.counts_hi", (("op", '"count"'), ("objects", '"cells_hi"'), ("block", "[32, 32, 32]"))),
    ("outputs", (("centroids", '"results/centroids.csv"'), ("counts", '"results/counts.csv"'))),
)
NODES = tuple(name.removeprefix("nodes.") for name, _ in TABLES if name.startswith("nodes."))


def render(tables: tuple[Table, ...] | list[Table]) -> str:
    return "\n".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in items) for name, items in tables)


def with_value(tables: tuple[Table, ...], table: str, key: str, literal: str) -> tuple[Table, ...]:
    """``tables`` with ``key`` of ``table`` set to ``literal`` (added if absent)."""
    out = []
    for name, items in tables:
        if name == table:
            kept = tuple((k, v) for k, v in items if k != key)
            items = (*kept, (key, literal))
        out.append((name, items))
    assert any(name == table for name, _ in tables)
    return tuple(out)


def keys(text: str, fingerprint: str = FP) -> dict[str, str]:
    graph = compile_spec(parse_spec(text, FILE), fingerprint)
    return {name: graph.nodes[name]["node"].key for name in graph.nodes}


def descendants(text: str, roots: set[str]) -> set[str]:
    """``roots`` and every node downstream of them, from the TOML references alone."""
    nodes: dict[str, dict[str, Any]] = tomllib.loads(text)["nodes"]
    parents = {
        name: {v for k, v in body.items() if k != "op" and isinstance(v, str) and (v in nodes or v == INPUT)}
        for name, body in nodes.items()
    }
    out = set(roots)
    while True:
        more = {n for n, ps in parents.items() if ps & out} - out
        if not more:
            return out
        out |= more


def toml_literal(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # finite floats: repr is valid TOML
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return str(value)


BASE_TEXT = render(TABLES)
BASE_KEYS = keys(BASE_TEXT)


def test_base_spec_keys_are_distinct_and_deterministic() -> None:
    assert set(BASE_KEYS) == {INPUT, *NODES}
    assert BASE_KEYS[INPUT] == FP
    assert len(set(BASE_KEYS.values())) == len(BASE_KEYS)
    assert keys(BASE_TEXT) == BASE_KEYS
    assert descendants(BASE_TEXT, {"mask"}) == {"mask", "cells", "centroids", "counts"}


# Changing any of these keys invalidates every user's cache: each entry is stored under its key, and a
# run looks its nodes up by key. They may change only with a deliberate, announced change of what a
# key hashes (an op's version, canonical JSON, the key length), never as a side effect of a refactoring.
FROZEN_KEYS = {
    "input": "fp",
    "mask": "a13a454dd3f3bc194972c604",
    "mask_hi": "5795d58bbe621d3a78d05e74",
    "cells": "ced2209857aadcb03ffef9e6",
    "cells_hi": "46edc9ac22b5598c3e1a3ea8",
    "centroids": "5f814d3bfe4b71bb20fa2ee9",  # centroids version 3 (intensity sums with math.fsum)
    "counts": "ca42a790cf31e2ae2db2bbfd",
    "counts_hi": "63f2e4ad31f140a3a70492dc",
}


def test_keys_of_a_fixed_spec_file_never_change() -> None:
    assert BASE_KEYS == FROZEN_KEYS


def test_keys_of_a_fixed_spec_built_in_python_never_change() -> None:
    """A spec built from the dataclasses, not parsed: defaults filled in by compiling (``min_voxels``,
    ``typical_voxels``, ``connectivity``) and given parameters key alike. Changing these keys
    invalidates every user's cache."""
    spec = Spec(
        "<spec>",
        InputSpec("volume.ome.zarr"),
        (
            NodeSpec("smooth", "gaussian", (("image", INPUT),), Params({"sigma": 1.5})),
            NodeSpec("mask", "threshold", (("image", "smooth"),), Params({"level": 0.3})),
            NodeSpec("cells", "connected_components", (("mask", "mask"),), Params()),
            NodeSpec("centroids", "centroids", (("labels", "cells"), ("image", INPUT)), Params()),
            NodeSpec("counts", "count", (("objects", "centroids"),), Params({"block": (64, 256, 256)})),
        ),
        "cache",
    )
    graph = compile_spec(spec, "0123456789abcdef01234567")
    assert {name: graph.nodes[name]["node"].key for name in graph.nodes} == {
        INPUT: "0123456789abcdef01234567",
        "smooth": "34cdabc4741fbcf415302e63",
        "mask": "7a346ab15461d530e8bee753",
        "cells": "c407d30a028bed0158ec2e47",
        "centroids": "ee509fddc8eb4974ad3eca42",  # centroids version 3
        "counts": "61786bfd11e1795b6c7944ed",
    }
    counts = graph.nodes["counts"]["node"]
    assert dict(counts.params) == {"block": (64, 256, 256), "min_voxels": 0, "typical_voxels": 0.0}


# --------------------------------------------------------------------------- parameter changes

finite_floats = st.floats(allow_nan=False, allow_infinity=False).map(lambda x: x + 0.0)  # -0.0 → 0.0
PARAM_VALUES: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("mask", "level"): finite_floats,
    ("mask_hi", "level"): finite_floats,
    ("cells", "connectivity"): st.sampled_from([6, 26]),
    ("cells_hi", "connectivity"): st.sampled_from([6, 26]),
    ("counts", "block"): st.lists(st.integers(1, 4096), min_size=3, max_size=3),
    ("counts_hi", "block"): st.lists(st.integers(1, 4096), min_size=3, max_size=3),
}


@SETTINGS
@given(data=st.data())
def test_param_change_rekeys_exactly_the_node_and_its_descendants(data: st.DataObject) -> None:
    node, param = data.draw(st.sampled_from(sorted(PARAM_VALUES)), label="param")
    old = data.draw(PARAM_VALUES[node, param], label="old")
    new = data.draw(PARAM_VALUES[node, param], label="new")
    texts = [render(with_value(TABLES, f"nodes.{node}", param, toml_literal(v))) for v in (old, new)]
    for text, value in zip(texts, (old, new)):
        given_value = parse_spec(text, FILE).node(node).params[param]
        assert given_value == (tuple(value) if isinstance(value, list) else value)
    before, after = keys(texts[0]), keys(texts[1])
    changed = {n for n in before if before[n] != after[n]}
    if old == new:
        assert changed == set()
    else:
        assert changed == descendants(texts[0], {node})


# --------------------------------------------------------------------------- layout


@SETTINGS
@given(order=st.permutations(range(len(TABLES))), data=st.data())
def test_order_of_tables_and_keys_does_not_change_keys(order: list[int], data: st.DataObject) -> None:
    tables = [TABLES[i] for i in order]
    shuffled = [(name, tuple(data.draw(st.permutations(items), label=name))) for name, items in tables]
    text = render(shuffled)
    spec = parse_spec(text, FILE)
    assert [n.name for n in spec.nodes] == [
        name.removeprefix("nodes.") for name, _ in shuffled if name.startswith("nodes.")
    ]
    assert keys(text) == BASE_KEYS


node_names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(lambda n: n != INPUT)


@SETTINGS
@given(names=st.lists(node_names, min_size=len(NODES), max_size=len(NODES), unique=True))
def test_node_names_do_not_enter_keys(names: list[str]) -> None:
    rename = dict(zip(NODES, names))

    def literal(key: str, value: str) -> str:
        """References to nodes are renamed; the op (``op = "centroids"``) is not a reference."""
        return f'"{rename[value.strip(QUOTE)]}"' if key != "op" and value.strip(QUOTE) in rename else value

    tables = tuple(
        (
            f"nodes.{rename[name.removeprefix('nodes.')]}" if name.startswith("nodes.") else name,
            tuple((rename.get(k, k) if name == "outputs" else k, literal(k, v)) for k, v in items),
        )
        for name, items in TABLES
    )
    renamed = keys(render(tables))
    assert {n: renamed[rename.get(n, n)] for n in BASE_KEYS} == BASE_KEYS


@pytest.mark.parametrize(
    ("table", "key", "literal"),
    [
        ("nodes.counts", "objects", '"cells"'),  # Points → Labels from another node
        ("nodes.counts_hi", "objects", '"centroids"'),
        ("nodes.cells", "mask", '"mask_hi"'),
        ("nodes.mask", "image", '"input"'),  # unchanged: a control
    ],
)
def test_rewiring_an_input_rekeys_the_node_and_its_descendants(table: str, key: str, literal: str) -> None:
    text = render(with_value(TABLES, table, key, literal))
    after = keys(text)
    changed = {n for n in BASE_KEYS if BASE_KEYS[n] != after[n]}
    unchanged = dict(dict(TABLES)[table])[key] == literal
    assert changed == (set() if unchanged else descendants(text, {table.removeprefix("nodes.")}))


def test_optional_input_enters_the_key() -> None:
    tables = tuple(
        (name, tuple((k, v) for k, v in items if (name, k) != ("nodes.centroids", "image"))) for name, items in TABLES
    )
    without_image = keys(render(tables))
    changed = {n for n in BASE_KEYS if BASE_KEYS[n] != without_image[n]}
    assert changed == descendants(BASE_TEXT, {"centroids"})


# --------------------------------------------------------------------------- input fingerprint


@SETTINGS
@given(a=st.text(min_size=1, max_size=40), b=st.text(min_size=1, max_size=40))
def test_input_fingerprint_changes_every_key(a: str, b: str) -> None:
    ka, kb = keys(BASE_TEXT, a), keys(BASE_TEXT, b)
    assert (ka[INPUT], kb[INPUT]) == (a, b)
    if a == b:
        assert ka == kb
    else:
        assert all(ka[n] != kb[n] for n in NODES)


# --------------------------------------------------------------------------- storage, cache and view

stores = st.fixed_dictionaries(
    {},
    optional={
        "chunks": st.lists(st.integers(1, 512), min_size=3, max_size=3),
        "multiscale": st.integers(1, 8),
        "compressor": st.sampled_from(COMPRESSORS).flatmap(
            lambda cid: st.fixed_dictionaries({"id": st.just(cid)}, optional={"clevel": st.integers(0, 9)})
        ),
    },
)
views = st.dictionaries(
    st.sampled_from(["colormap", "opacity", "visible"]),
    st.one_of(st.sampled_from(["red", "gray"]), st.booleans(), st.integers(0, 100)),
)


def inline(table: dict[str, Any]) -> str:
    def lit(v: Any) -> str:
        if isinstance(v, dict):
            return inline(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        return toml_literal(v)

    return "{ " + ", ".join(f"{k} = {lit(v)}" for k, v in table.items()) + " }"


@SETTINGS
@given(
    options=st.dictionaries(
        st.sampled_from(NODES),
        st.tuples(st.one_of(st.none(), stores), st.one_of(st.none(), st.booleans()), st.one_of(st.none(), views)),
        min_size=1,
    ),
    cache_url=st.sampled_from(["cache", "elsewhere/cache", "s3://bucket/cache"]),
    address=st.sampled_from(["", "tcp://10.0.0.1:8786"]),
)
def test_store_cache_and_view_options_change_no_key(
    options: dict[str, tuple[dict[str, Any] | None, bool | None, dict[str, Any] | None]], cache_url: str, address: str
) -> None:
    tables = with_value(with_value(TABLES, "cache", "url", f'"{cache_url}"'), "cluster", "address", f'"{address}"')
    for node, (store, cache, view) in options.items():
        if store is not None:
            tables = with_value(tables, f"nodes.{node}", "store", inline(store))
        if cache is not None:
            tables = with_value(tables, f"nodes.{node}", "cache", "true" if cache else "false")
        if view is not None:
            tables = with_value(tables, f"nodes.{node}", "view", inline(view))
    text = render(tables)
    spec = parse_spec(text, FILE)
    for node, (store, cache, view) in options.items():  # the options did reach the spec
        ns = spec.node(node)
        if store is not None:
            assert ns.store.multiscale == store.get("multiscale", 1)
            assert ns.store.chunks == (tuple(store["chunks"]) if "chunks" in store else None)
            if "compressor" in store:
                assert dict(ns.store.compressor) == store["compressor"]
        assert ns.cache == (True if cache is None else cache)
        assert dict(ns.view) == (view or {})
    assert keys(text) == BASE_KEYS


# --------------------------------------------------------------------------- number types


@SETTINGS
@given(level=st.integers(-(2**40), 2**40))  # x.5 stays exact below 2**52
def test_int_and_float_spelling_of_a_float_param_give_the_same_key(level: int) -> None:
    as_int = render(with_value(TABLES, "nodes.mask", "level", str(level)))
    as_float = render(with_value(TABLES, "nodes.mask", "level", f"{level}.0"))
    assert keys(as_int) == keys(as_float)
    other = render(with_value(TABLES, "nodes.mask", "level", f"{level}.5"))
    assert keys(as_int)["mask"] != keys(other)["mask"]


@SETTINGS
@given(i=st.integers(-(2**53), 2**53))
def test_canonical_distinguishes_int_from_float_for_untyped_values(i: int) -> None:
    assert canonical(i) != canonical(float(i))
    assert digest(i) != digest(float(i))
    assert digest([i]) != digest((float(i),))
    assert node_key("op", 1, {"x": i}, {}) != node_key("op", 1, {"x": float(i)}, {})
    assert node_key("op", 1, {"x": i}, {}) == node_key("op", 1, {"x": i}, {})


def test_canonical_is_order_independent_and_type_aware() -> None:
    assert digest({"b": 1, "a": [2.5, "x"]}) == digest({"a": (2.5, "x"), "b": 1})
    assert digest(True) != digest(1)
    assert digest("1") != digest(1)
    assert node_key("op", 1, {}, {"a": "k1", "b": "k2"}) != node_key("op", 1, {}, {"a": "k2", "b": "k1"})


# --------------------------------------------------------------------------- op versions


@contextmanager
def op_version(name: str, version: int) -> Iterator[None]:
    """Temporarily replace the registered op ``name`` by a copy with another version."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], version=version))
        yield


@SETTINGS
@given(
    opname=st.sampled_from(
        sorted({dict(items)["op"].strip('"') for name, items in TABLES if name.startswith("nodes.")})
    ),
    version=st.integers(0, 1000),
)
def test_op_version_rekeys_its_nodes_and_their_descendants(opname: str, version: int) -> None:
    original = REGISTRY[opname]
    with op_version(opname, version):
        bumped = keys(BASE_TEXT)
    assert REGISTRY[opname] is original
    users = {name.removeprefix("nodes.") for name, items in TABLES if dict(items).get("op") == f'"{opname}"'}
    changed = {n for n in BASE_KEYS if BASE_KEYS[n] != bumped[n]}
    assert changed == (descendants(BASE_TEXT, users) if version != original.version else set())


# --------------------------------------------------------------------------- temporary ops


@contextmanager
def temporary_op(func: Any, name: str, inputs: dict[str, Any], output: PortType) -> Iterator[str]:
    """Register ``func`` as op ``name`` for the duration of the block."""
    assert name not in REGISTRY
    op(name, version=1, inputs=inputs, output=output)(func)
    try:
        yield name
    finally:
        REGISTRY.pop(name, None)
    assert name not in REGISTRY


def test_port_names_enter_the_key() -> None:
    """Swapping the sources of two ports of one op gives a different value, so a different key."""

    def blend(a: Any, b: Any, *, weight: float = 0.5) -> Any:
        return a

    either = (PortType.Image, PortType.Mask)
    with temporary_op(blend, "test_keys_blend_probe", {"a": either, "b": either}, PortType.Image) as name:

        def text(a: str, b: str) -> str:
            return render((*TABLES, (f"nodes.{name}", (("op", f'"{name}"'), ("a", a), ("b", b)))))

        forward, swapped = keys(text('"input"', '"mask"')), keys(text('"mask"', '"input"'))
    assert forward[name] != swapped[name]
    assert {n: forward[n] for n in BASE_KEYS} == {n: swapped[n] for n in BASE_KEYS} == BASE_KEYS


def test_int_default_of_float_param_keys_like_the_explicit_value() -> None:
    def scale(image: Any, *, factor: float = 1) -> Any:
        return image

    with temporary_op(scale, "test_keys_scale_probe", {"image": PortType.Image}, PortType.Image) as name:
        base = (*TABLES, (f"nodes.{name}", (("op", f'"{name}"'), ("image", '"input"'))))
        implicit = keys(render(base))[name]
        explicit = keys(render(with_value(base, f"nodes.{name}", "factor", "1")))[name]
    assert implicit == explicit
