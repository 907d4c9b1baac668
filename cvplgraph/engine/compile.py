"""Spec → typed, keyed DAG. Pure: no IO, no compute.

Every node of the graph carries its op definition, its full parameters
(defaults filled in), its output type and its key: a hash of op name, op
version, canonical parameters and the keys of its inputs. The raw input's key
is given (see :mod:`cvplgraph.cache.fingerprint`), so compiling is instant and
testable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import networkx as nx

import cvplgraph.ops  # noqa: F401  (the built-in ops register themselves on import)
from cvplgraph.cache.keys import node_key
from cvplgraph.errors import SpecError
from cvplgraph.registry import OpDef, get_op
from cvplgraph.spec.graph import graph_problems
from cvplgraph.spec.model import INPUT, NodeSpec, Params, Spec
from cvplgraph.spec.params import check_param
from cvplgraph.types import PortType


@dataclass(frozen=True)
class Node:
    """A compiled node: what it runs, on what, and its cache key.

    Attributes
    ----------
    name : str
        The node's name (``"input"`` or an atlas name for a source).
    op : OpDef or None
        Its op; None for a source (the raw image, an atlas).
    spec : NodeSpec or None
        Its table in the spec; None for a source.
    params : Params
        Every parameter of the op, defaults filled in: what enters the key and what the op is called with.
    inputs : tuple of (str, str)
        (input port, source node) pairs.
    output : PortType
        The type of its value.
    key : str
        Its content key (a source's is its fingerprint).
    input_keys : Mapping of str to str
        Input port → key of the node feeding it: what the key hashes besides op and parameters,
        and what a cache entry records. Read-only; not compared (``key`` already hashes it).
    """

    name: str
    op: OpDef | None  # None for the raw input
    spec: NodeSpec | None
    params: Params
    inputs: tuple[tuple[str, str], ...]  # (port, source node)
    output: PortType
    key: str
    input_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    @property
    def is_input(self) -> bool:
        return self.op is None

    @property
    def opdef(self) -> OpDef:
        """The op of a non-input node."""
        if self.op is None:
            raise TypeError("the input node has no op")
        return self.op

    @property
    def nodespec(self) -> NodeSpec:
        """The spec of a non-input node."""
        if self.spec is None:
            raise TypeError("the input node has no node spec")
        return self.spec


def compile_spec(spec: Spec, input_fingerprint: str, source_keys: dict[str, str] | None = None) -> nx.DiGraph:
    """The typed DAG of ``spec``; node attribute ``node`` holds a :class:`Node`.

    ``input_fingerprint`` is the image's key; ``source_keys`` those of the
    named inputs (atlases).

    Edges run source → consumer with attribute ``port``. Raises SpecError on
    graph problems (already checked by :func:`cvplgraph.spec.parse.parse_spec`).
    """
    problems = graph_problems(spec, {n.name for n in spec.nodes})
    if problems:
        raise SpecError(problems)
    graph = nx.DiGraph()
    graph.add_node(INPUT, node=Node(INPUT, None, None, Params(), (), PortType.Image, input_fingerprint))
    for name, _ in spec.atlases:
        key = (source_keys or {}).get(name, "")
        graph.add_node(name, node=Node(name, None, None, Params(), (), PortType.Atlas, key))
    for n in spec.nodes:
        graph.add_node(n.name)
        for port, source in n.inputs:
            graph.add_edge(source, n.name, port=port)
    for name in nx.topological_sort(graph):
        if name in spec.sources:
            continue
        ns = spec.node(name)
        opdef = get_op(ns.op)
        params = Params(
            {p.name: ns.params[p.name] if p.name in ns.params else check_param(p, p.default)[1] for p in opdef.params}
        )
        input_keys = {port: graph.nodes[src]["node"].key for port, src in ns.inputs}
        key = node_key(opdef.name, opdef.version, dict(params), input_keys)
        node = Node(name, opdef, ns, params, ns.inputs, opdef.output, key, MappingProxyType(input_keys))
        graph.nodes[name]["node"] = node
    return graph


def nodes_in_order(graph: nx.DiGraph) -> list[Node]:
    """Compiled nodes, sources first (ties broken by name for stable output)."""
    return [graph.nodes[n]["node"] for n in nx.lexicographical_topological_sort(graph)]
