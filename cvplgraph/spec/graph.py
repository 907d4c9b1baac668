"""Problems of a spec's graph as a whole, found while it loads: unknown references, edge
types that do not fit, cycles, outputs. The nodes' ops must be registered (see
:mod:`cvplgraph.spec.parse`)."""

from __future__ import annotations

import networkx as nx

from cvplgraph.errors import Problem
from cvplgraph.registry import get_op
from cvplgraph.spec.model import Spec, suffix_problem
from cvplgraph.types import PortType, format_types


def graph_problems(spec: Spec, declared: set[str]) -> list[Problem]:
    """Problems of the graph as a whole: unknown references, wrong edge types, cycles, outputs."""
    problems: list[Problem] = []
    nodes = {n.name: n for n in spec.nodes}
    sources = spec.sources
    names = sorted({*sources, *declared})
    for node in spec.nodes:
        opdef = get_op(node.op)
        for port, source in node.inputs:
            path = f"nodes.{node.name}.{port}"
            if source == node.name:
                problems.append(spec.problem(path, f"node `{node.name}` cannot take its own output as input"))
                continue
            if source not in sources and source not in declared:
                problems.append(spec.problem(path, f"unknown node {source!r}; known: {', '.join(names)}"))
                continue
            if source not in nodes and source not in sources:
                continue  # the source itself is invalid and reported on its own
            produced = PortType(sources[source]) if source in sources else get_op(nodes[source].op).output
            accepted = opdef.port(port).types  # type: ignore[union-attr]
            if produced not in accepted:
                problems.append(
                    spec.problem(
                        path,
                        f"type mismatch: `{source}` produces {produced} but `{node.name}.{port}` "
                        f"({node.op}) expects {format_types(accepted)}",
                    )
                )
    graph = nx.DiGraph([(s, n.name) for n in spec.nodes for _, s in n.inputs if s in nodes and s != n.name])
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = []
    if cycle:
        path = " → ".join([cycle[0][0], *(v for _, v in cycle)])
        problems.append(spec.problem(f"nodes.{cycle[0][0]}", f"cycle in the graph: {path}"))
    for name, target in spec.outputs:
        if name not in declared:
            problems.append(
                spec.problem(f"outputs.{name}", f"unknown node {name!r}; known: {', '.join(sorted(declared))}")
            )
        elif name in nodes and (msg := suffix_problem(get_op(nodes[name].op).output, target, spec.format_of(target))):
            problems.append(spec.problem(f"outputs.{name}", msg))
        elif name in nodes and spec.format_of(target) == "all_points" and nodes[name].op != "cell_regions":
            why = f"format all_points needs a cell_regions node (cells with their region), got op {nodes[name].op!r}"
            problems.append(spec.problem(f"outputs.{name}", why))
    return problems
