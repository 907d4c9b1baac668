"""Pictures of a compiled pipeline: the DAG of a plan or of a run record as DOT, Mermaid, SVG or PNG.

A :class:`Dag` is plain data (nodes with their op, key, type, shape and status; edges with the
target's input port), made by :func:`dag_from_plan` or :func:`dag_from_record`. Every backend
draws a node as a box of four lines (name, ``op · key``, ``Type shape``, status) coloured by
status with the same :data:`PALETTE`, and labels every edge with its port. SVG and PNG come from
Graphviz ``dot`` when it is on the PATH, otherwise from a small layered layout drawn in pure
Python (SVG) or with matplotlib (PNG); both SVGs hold one ``<g class="node">`` per node and one
``<g class="edge">`` per edge, each with a ``<title>``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from cvplgraph.engine.status import Status
from cvplgraph.errors import CvplError

if TYPE_CHECKING:
    from cvplgraph.engine.plan import Plan


@dataclass(frozen=True)
class DagNode:
    """One box: a node of the compiled graph and what a run does with it."""

    name: str
    op: str  # "input" for input/atlas nodes
    key: str  # content key (hex)
    type: str  # output type, e.g. "Image", "Labels", "Points"
    status: str  # a Status, or COMPUTED in a finished run's record
    shape: tuple[int, ...] | None = None
    done: float | None = None  # status "compute": share of chunks an interrupted run already wrote


@dataclass(frozen=True)
class DagEdge:
    """A value flowing from ``source`` into input ``port`` of ``target``."""

    source: str
    target: str
    port: str


@dataclass(frozen=True)
class Dag:
    nodes: tuple[DagNode, ...]
    edges: tuple[DagEdge, ...]


#: The status a finished run's record is drawn with for the nodes it computed.
COMPUTED = "computed"
#: The style of a node to compute that an interrupted run began.
PARTIAL = "partial"
#: style (a :class:`Status`, COMPUTED or PARTIAL) → (fill, stroke, legend label).
PALETTE: dict[str, tuple[str, str, str]] = {
    Status.INPUT: ("#d6e0ee", "#5b7594", "input"),
    Status.CACHED: ("#c3e6c5", "#3d8b45", "cached"),
    Status.COMPUTE: ("#ffd29e", "#d9640f", "to compute"),
    COMPUTED: ("#ffd29e", "#d9640f", "computed"),  # a finished run's record: computed by that run
    PARTIAL: ("#fff09a", "#b89600", "partial"),
    Status.SKIP: ("#eeeeee", "#a0a0a0", "skipped"),
}
#: format or file extension → format
FORMATS = {"svg": "svg", "png": "png", "dot": "dot", "gv": "dot", "mmd": "mermaid", "mermaid": "mermaid"}
EXTENSIONS = ".svg, .png, .dot, .gv, .mmd, .mermaid"
INK, EDGE_INK, FONTS = "#222222", "#555555", "DejaVu Sans Mono, Menlo, Consolas, monospace"
FONT, CHAR, LINE, PAD, MARGIN, GAP, ROW_GAP, DUMMY, ARROW = 12, 7.3, 16, 9, 16, 28, 58, 10, 8
Point = tuple[float, float]
Item = tuple[str, int, int]  # (node name, -1, layer), or ("", edge index, layer) where a long edge passes


def dag_from_plan(plan: Plan) -> Dag:
    """The DAG of a :class:`cvplgraph.engine.plan.Plan`, in plan order, with the ports from the compiled graph."""
    nodes = tuple(DagNode(p.name, p.op, p.key, p.type, p.status, p.shape, p.done) for p in plan.nodes.values())
    edges = tuple(
        DagEdge(source, name, port) for name in plan.nodes for port, source in plan.node(name).inputs
    )
    return Dag(nodes, edges)


def dag_from_record(record: dict[str, Any]) -> Dag:
    """The DAG of a run record: ``record["nodes"]`` and ``record["edges"]`` as written by a run.

    In the record of a finished run, the nodes it was to compute are drawn as computed."""
    finished = record.get("status") == "done"

    def status(n: dict[str, Any]) -> str:
        return COMPUTED if finished and n["status"] == Status.COMPUTE else n["status"]

    nodes = tuple(
        DagNode(
            n["name"],
            n["op"],
            n.get("key") or "",
            n["type"],
            status(n),
            _shape(n.get("shape")),
            None if status(n) == COMPUTED else n.get("done"),
        )  # fmt: skip
        for n in record["nodes"]
    )
    edges = tuple(DagEdge(e["source"], e["target"], e["port"]) for e in record.get("edges", ()))
    return Dag(nodes, edges)


def _shape(shape: list[int] | None) -> tuple[int, ...] | None:
    return tuple(int(n) for n in shape) if shape is not None else None


def style(node: DagNode) -> str:
    """The :data:`PALETTE` entry of a node (an unknown status is drawn as skipped)."""
    if node.status == Status.COMPUTE and node.done is not None:
        return PARTIAL
    return node.status if node.status in PALETTE else Status.SKIP


def lines(node: DagNode) -> list[str]:
    """The four lines in a node's box: name, ``op · key``, ``Type shape``, status."""
    shape = " " + "×".join(str(n) for n in node.shape) if node.shape else ""
    if node.status == Status.COMPUTE:
        status = "to compute" if node.done is None else f"partial {node.done:.0%}"
    else:
        status = PALETTE[node.status][2] if node.status in PALETTE else node.status
    return [node.name, f"{node.op} · {node.key[:8]}", f"{node.type}{shape}", status]


def _present(dag: Dag) -> list[str]:
    used = {style(n) for n in dag.nodes}
    return [s for s in PALETTE if s in used]


def _q(text: str) -> str:
    """A DOT quoted escString (label, tooltip): backslashes and quotes escaped, newlines as ``\\n``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _id(name: str) -> str:
    """A DOT node id for ``name``: quoted, or an HTML string when it holds a backslash (kept literally in ids)."""
    return f"<{_html(name)}>" if "\\" in name else '"' + name.replace('"', '\\"') + '"'


def _html(text: str) -> str:
    return escape(text, {'"': "&quot;"})


def to_dot(dag: Dag) -> str:
    """Graphviz DOT text: top to bottom, one box per node, edges labelled with ports, a legend below."""
    out = [
        "digraph cvplgraph {",
        '  graph [rankdir=TB, bgcolor="white", fontname="Helvetica", fontsize=10, labelloc=b, nodesep=0.3];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, penwidth=1.2];',
        f'  edge [fontname="Helvetica", fontsize=9, color="{EDGE_INK}", fontcolor="{EDGE_INK}"];',
    ]
    cells = "".join(
        f'<td bgcolor="{PALETTE[s][0]}" color="{PALETTE[s][1]}" border="1"> {PALETTE[s][2]} </td>'
        for s in _present(dag)
    )
    if cells:
        out.append(f'  label=<<table border="0" cellspacing="6"><tr>{cells}</tr></table>>;')
    for node in dag.nodes:
        first, *rest = [_html(line) for line in lines(node)]
        label = "<<b>" + first + "</b><br/>" + "<br/>".join(rest) + ">"
        fill, stroke, _ = PALETTE[style(node)]
        tip = f"{node.name}\n{node.op} · {node.key}\n{lines(node)[2]}\n{lines(node)[3]}"
        out.append(f'  {_id(node.name)} [label={label}, fillcolor="{fill}", color="{stroke}", tooltip={_q(tip)}];')
    out += [f"  {_id(e.source)} -> {_id(e.target)} [label={_q(e.port)}];" for e in dag.edges]
    return "\n".join([*out, "}"]) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def to_mermaid(dag: Dag) -> str:
    """Mermaid flowchart text (renders on GitHub): nodes ``n0, n1, …`` labelled with their lines."""
    ids = {node.name: f"n{i}" for i, node in enumerate(dag.nodes)}
    out = ["flowchart TD"]
    for node in dag.nodes:
        first, *rest = [_mermaid_text(line) for line in lines(node)]
        out.append(f'  {ids[node.name]}["<b>{first}</b><br/>' + "<br/>".join(rest) + '"]')
    for e in dag.edges:
        if e.source in ids and e.target in ids:
            out.append(f'  {ids[e.source]} -->|"{_mermaid_text(e.port)}"| {ids[e.target]}')
    for s in _present(dag):
        out.append(f"  classDef st_{s} fill:{PALETTE[s][0]},stroke:{PALETTE[s][1]},color:{INK}")
        out.append(f"  class {','.join(ids[n.name] for n in dag.nodes if style(n) == s)} st_{s}")
    return "\n".join(out) + "\n"


def _dot_run(dag: Dag, fmt: str) -> bytes:
    if shutil.which("dot") is None:
        raise CvplError("graphviz engine: `dot` is not on the PATH; install graphviz or use engine 'python'")
    try:
        args = ["dot", f"-T{fmt}", *(["-Gdpi=144"] if fmt == "png" else [])]
        done = subprocess.run(args, input=to_dot(dag).encode(), capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise CvplError(f"graphviz `dot -T{fmt}` took more than 120 s") from None
    if done.returncode != 0:
        first = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[0]
        raise CvplError(f"graphviz `dot -T{fmt}` failed (exit {done.returncode}): {first}")
    return done.stdout


def _graphviz(engine: str) -> bool:
    if engine not in ("auto", "graphviz", "python"):
        raise CvplError(f"unknown DAG engine {engine!r}; expected 'auto', 'graphviz' or 'python'")
    return engine == "graphviz" or (engine == "auto" and shutil.which("dot") is not None)


def to_svg(dag: Dag, engine: str = "auto") -> str:
    """SVG text; ``engine`` is ``"graphviz"``, ``"python"`` or ``"auto"`` (graphviz when ``dot`` is found)."""
    return _dot_run(dag, "svg").decode() if _graphviz(engine) else _svg(_layout(dag), dag)


def to_png(dag: Dag, engine: str = "auto") -> bytes:
    """PNG bytes; ``engine`` as in :func:`to_svg` (the python engine draws with matplotlib)."""
    return _dot_run(dag, "png") if _graphviz(engine) else _png(_layout(dag), dag)


def write_dag(dag: Dag, target: str, fmt: str | None = None, engine: str = "auto") -> str | None:
    """Write the picture of ``dag`` to file ``target`` (folders made), or return its text when ``target`` is "-".

    ``fmt`` is svg, png, dot/gv or mermaid/mmd; by default it comes from the extension of ``target``
    (Mermaid for "-"). ``engine`` is as in :func:`to_svg`.
    """
    name = fmt if fmt is not None else "mermaid" if target == "-" else Path(target).suffix.lstrip(".")
    kind = FORMATS.get(name.lower())
    if kind is None:
        what = f"format {fmt!r}" if fmt is not None else f"file extension {Path(target).suffix or '(none)'!r}"
        raise CvplError(f"{target}: unknown DAG {what}; expected one of {EXTENSIONS}")
    if target == "-":
        if kind == "png":
            raise CvplError("a PNG cannot be printed; give a file name ending in .png")
        return _text(dag, kind, engine)
    data = to_png(dag, engine) if kind == "png" else _text(dag, kind, engine).encode()
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_bytes(data)
    return None


def _text(dag: Dag, kind: str, engine: str) -> str:
    return to_svg(dag, engine) if kind == "svg" else to_dot(dag) if kind == "dot" else to_mermaid(dag)


@dataclass
class _Layout:
    width: float
    height: float
    boxes: dict[str, tuple[float, float, float, float]]  # node → x, y, width, height
    wires: list[tuple[DagEdge, list[Point]]]  # points: curve, line, curve, …; ends ARROW above the target
    legend: list[tuple[str, float, float]]  # style, x, y of its swatch


def _levels(names: list[str], edges: list[DagEdge]) -> dict[str, int]:
    """Every node's layer: the longest path to it from a node without inputs."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    graph.add_edges_from((e.source, e.target) for e in edges)
    level: dict[str, int] = {}
    for name in nx.topological_sort(graph):
        level[name] = max((level[p] + 1 for p in graph.predecessors(name)), default=0)
    return level


def _sort_row(row: list[Item], fixed: list[Item], links: dict[Item, list[Item]]) -> None:
    """Order ``row`` by the mean position of each item's neighbours in the ``fixed`` row (barycentre)."""
    pos = {item: i for i, item in enumerate(fixed)}

    def centre(j: int, item: Item) -> float:
        near = [pos[o] for o in links[item] if o in pos]
        return sum(near) / len(near) if near else float(j)

    row[:] = [item for _, item in sorted(enumerate(row), key=lambda t: (centre(*t), t[0]))]


def _order(dag: Dag) -> tuple[list[list[Item]], list[list[Item]], list[DagEdge]]:
    """Rows of items (nodes, and points where an edge crosses a row), ordered to cross few edges; every edge's
    chain of items from its source to its target; the edges between known nodes."""
    names = [n.name for n in dag.nodes]
    edges = [e for e in dag.edges if e.source in set(names) and e.target in set(names)]
    level = _levels(names, edges)
    rows: list[list[Item]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in names:
        rows[level[name]].append((name, -1, level[name]))
    chains: list[list[Item]] = []
    for i, e in enumerate(edges):
        between = [("", i, k) for k in range(level[e.source] + 1, level[e.target])]
        for item in between:
            rows[item[2]].append(item)
        chains.append([(e.source, -1, level[e.source]), *between, (e.target, -1, level[e.target])])
    up: dict[Item, list[Item]] = defaultdict(list)
    down: dict[Item, list[Item]] = defaultdict(list)
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            down[a].append(b)
            up[b].append(a)
    for _ in range(2):
        for k in range(1, len(rows)):
            _sort_row(rows[k], rows[k - 1], up)
        for k in range(len(rows) - 2, -1, -1):
            _sort_row(rows[k], rows[k + 1], down)
    return rows, chains, edges


def _layout(dag: Dag) -> _Layout:
    """Boxes, wires and legend of the pure-Python drawing, in pixels from the top left."""
    rows, chains, edges = _order(dag)
    text = {n.name: max(len(line) for line in lines(n)) for n in dag.nodes}
    height = 2.0 * PAD + 4 * LINE
    width = {it: (text[it[0]] * CHAR + 2.0 * PAD if it[1] < 0 else DUMMY) for row in rows for it in row}
    spans = [sum(width[it] for it in row) + GAP * (len(row) - 1) for row in rows]
    present = _present(dag)
    legend_w = sum(14 + 6 + len(PALETTE[s][2]) * CHAR + 18 for s in present)
    inner = max([*spans, legend_w, 0.0])
    place: dict[Item, tuple[float, float]] = {}
    for k, row in enumerate(rows):
        x = MARGIN + (inner - spans[k]) / 2
        for it in row:
            place[it] = (x, MARGIN + k * (height + ROW_GAP))
            x += width[it] + GAP
    mid = {it: place[it][0] + width[it] / 2 for it in place}
    ends: dict[tuple[int, int], float] = {}  # (edge, 0 at its source | 1 at its target) → x
    for it in (it for row in rows for it in row if it[1] < 0):
        for side, (at, near) in enumerate(((0, 1), (-1, -2))):
            mine = sorted((i for i, c in enumerate(chains) if c[at] == it), key=lambda i: (mid[chains[i][near]], i))
            for j, i in enumerate(mine):
                ends[i, side] = place[it][0] + width[it] * (j + 1) / (len(mine) + 1)
    wires = []
    for i, chain in enumerate(chains):
        points: list[Point] = [(ends[i, 0], place[chain[0]][1] + height)]
        for it in chain[1:-1]:
            points += [(mid[it], place[it][1]), (mid[it], place[it][1] + height)]
        wires.append((edges[i], [*points, (ends[i, 1], place[chain[-1]][1] - ARROW)]))
    y, x = MARGIN + len(rows) * (height + ROW_GAP) - ROW_GAP / 2, MARGIN + (inner - legend_w) / 2
    legend = []
    for s in present:
        legend.append((s, x, y))
        x += 14 + 6 + len(PALETTE[s][2]) * CHAR + 18
    boxes = {it[0]: (*place[it], width[it], height) for it in place if it[1] < 0}
    return _Layout(inner + 2 * MARGIN, y + 14 + MARGIN, boxes, wires, legend)


def _segments(points: list[Point]) -> list[tuple[str, list[Point]]]:
    """Path pieces through ``points``: a vertical-tangent cubic into each layer gap, a line across a layer."""
    out: list[tuple[str, list[Point]]] = []
    for j in range(1, len(points)):
        (xa, ya), (xb, yb) = points[j - 1], points[j]
        out.append(("C", [(xa, (ya + yb) / 2), (xb, (ya + yb) / 2), (xb, yb)]) if j % 2 else ("L", [(xb, yb)]))
    return out


def _arrow(end: Point) -> list[Point]:
    return [(end[0] - 4, end[1]), (end[0] + 4, end[1]), (end[0], end[1] + ARROW)]


def _label_at(points: list[Point]) -> Point:
    return (points[-2][0] + points[-1][0]) / 2 + 3, (points[-2][1] + points[-1][1]) / 2 + 4


def _svg(lay: _Layout, dag: Dag) -> str:
    """The pure-Python SVG, grouped like Graphviz's: ``<g class="node|edge"><title>…</title>…</g>``."""
    a = _html
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width:.0f}" height="{lay.height:.0f}" '
        f'viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" font-family="{FONTS}" font-size="{FONT}">',
        '<g id="graph0" class="graph">',
        f'<rect x="0" y="0" width="{lay.width:.0f}" height="{lay.height:.0f}" fill="white"/>',
    ]
    for i, (edge, points) in enumerate(lay.wires, 1):
        d = f"M{points[0][0]:.1f},{points[0][1]:.1f}" + "".join(
            code + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) for code, pts in _segments(points)
        )
        tip = " ".join(f"{x:.1f},{y:.1f}" for x, y in _arrow(points[-1]))
        lx, ly = _label_at(points)
        out += [
            f'<g id="edge{i}" class="edge"><title>{a(edge.source)}-&gt;{a(edge.target)}</title>',
            f'<path fill="none" stroke="{EDGE_INK}" stroke-width="1.2" d="{d}"/>',
            f'<polygon fill="{EDGE_INK}" stroke="none" points="{tip}"/>',
            f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" fill="{EDGE_INK}" stroke="white" stroke-width="3" '
            f'paint-order="stroke">{a(edge.port)}</text></g>',
        ]
    for i, node in enumerate(dag.nodes, 1):
        x, y, w, h = lay.boxes[node.name]
        fill, stroke, _ = PALETTE[style(node)]
        out += [
            f'<g id="node{i}" class="node"><title>{a(node.name)}</title>',
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" fill="{fill}" stroke="{stroke}"/>',
        ]
        for j, line in enumerate(lines(node)):
            bold = ' font-weight="bold"' if j == 0 else ""
            out.append(f'<text x="{x + w / 2:.1f}" y="{y + PAD + LINE * (j + 1) - 4:.1f}" text-anchor="middle" '
                       f'fill="{INK}"{bold}>{a(line)}</text>')  # fmt: skip
        out.append("</g>")
    out.append('<g class="legend">')
    for s, x, y in lay.legend:
        fill, stroke, label = PALETTE[s]
        out += [
            f'<rect x="{x:.1f}" y="{y:.1f}" width="14" height="14" rx="3" fill="{fill}" stroke="{stroke}"/>',
            f'<text x="{x + 20:.1f}" y="{y + 11:.1f}" fill="{INK}">{a(label)}</text>',
        ]
    return "\n".join([*out, "</g>", "</g>", "</svg>"]) + "\n"


def _png(lay: _Layout, dag: Dag, dpi: int = 96) -> bytes:
    """The python layout drawn with matplotlib (Agg, no pyplot state), 2 × resolution."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
    from matplotlib.path import Path as MplPath

    pt = 72 / dpi  # points per layout pixel
    fig = Figure(figsize=(lay.width / dpi, lay.height / dpi), dpi=dpi, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, lay.width)
    ax.set_ylim(lay.height, 0)
    ax.axis("off")
    text: dict[str, Any] = {"family": "monospace", "color": INK, "ha": "center", "va": "baseline"}
    for edge, points in lay.wires:
        verts, codes = [points[0]], [MplPath.MOVETO]
        for code, pts in _segments(points):
            verts += pts
            codes += [MplPath.CURVE4] * 3 if code == "C" else [MplPath.LINETO]
        ax.add_patch(PathPatch(MplPath(verts, codes), fill=False, ec=EDGE_INK, lw=1.2 * pt))
        ax.add_patch(Polygon(_arrow(points[-1]), closed=True, fc=EDGE_INK, ec="none"))
        ax.text(*_label_at(points), edge.port, fontsize=10 * pt, **{**text, "ha": "left", "color": EDGE_INK})
    for node in dag.nodes:
        x, y, w, h = lay.boxes[node.name]
        fill, stroke, _ = PALETTE[style(node)]
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=6", fc=fill, ec=stroke))
        for j, line in enumerate(lines(node)):
            weight = "bold" if j == 0 else "normal"
            ax.text(x + w / 2, y + PAD + LINE * (j + 1) - 4, line, fontsize=FONT * pt, weight=weight, **text)
    for s, x, y in lay.legend:
        fill, stroke, label = PALETTE[s]
        ax.add_patch(FancyBboxPatch((x, y), 14, 14, boxstyle="round,pad=0,rounding_size=3", fc=fill, ec=stroke))
        ax.text(x + 20, y + 11, label, fontsize=FONT * pt, **{**text, "ha": "left"})
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=2 * dpi, facecolor="white")
    return buffer.getvalue()
