"""The picture of a compiled DAG (cvplgraph.inspect.dag): DOT, Mermaid, SVG and PNG from both engines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from cvplgraph.api import run
from cvplgraph.engine.plan import Plan, make_plan
from cvplgraph.errors import CvplError
from cvplgraph.inspect.dag import (
    PALETTE,
    Dag,
    DagEdge,
    DagNode,
    dag_from_plan,
    dag_from_record,
    to_dot,
    to_mermaid,
    to_png,
    to_svg,
    write_dag,
)
from cvplgraph.spec.parse import load_spec

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

NS = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the standard spec of conftest.py: input → mask → cells → centroids (← input) → counts
EDGES = {
    ("input", "mask", "image"),
    ("mask", "cells", "mask"),
    ("cells", "centroids", "labels"),
    ("input", "centroids", "image"),
    ("centroids", "counts", "objects"),
}
NAMES = ["input", "mask", "cells", "centroids", "counts"]


@pytest.fixture
def plan(spec_file: Path) -> Plan:
    """The plan of the fresh standard spec: everything but the input to compute."""
    return make_plan(load_spec(spec_file))


@pytest.fixture
def ran_plan(spec_file: Path) -> Plan:
    """The plan after a run and a change of `counts.block`: counts to compute, the rest cached."""
    run(load_spec(spec_file), scheduler="threads")
    text = spec_file.read_text()
    assert "block = [32, 128, 128]" in text
    spec_file.write_text(text.replace("block = [32, 128, 128]", "block = [16, 128, 128]"))
    return make_plan(load_spec(spec_file))


@pytest.fixture(params=["python", "graphviz"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "graphviz" and shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not on the PATH, so the graphviz engine is not tested")
    return str(request.param)


def groups(svg: str, kind: str) -> dict[str, ET.Element]:
    """The ``<g class=kind>`` groups of an SVG by their ``<title>`` (each title exactly once)."""
    root = ET.fromstring(svg)
    found = [g for g in root.iter(f"{NS}g") if g.get("class") == kind]
    titles = [g.findtext(f"{NS}title") or "" for g in found]
    assert len(titles) == len(set(titles)), titles
    return dict(zip(titles, found))


def texts(group: ET.Element) -> list[str]:
    return [t.text or "" for t in group.iter(f"{NS}text")]


def box_fill(group: ET.Element) -> str:
    """The fill of a node's box: its first filled shape (a rect here, a path from Graphviz)."""
    shapes = (el for el in group.iter() if el.tag in (f"{NS}rect", f"{NS}path", f"{NS}polygon"))
    return next(el.get("fill", "").lower() for el in shapes if el.get("fill") not in (None, "none"))


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255


def decode_png(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    assert data.startswith(PNG_SIGNATURE)
    image = imread(BytesIO(data), format="png")
    return image[..., :3].reshape(-1, 3)


def has_colour(pixels: np.ndarray, colour: str) -> bool:
    return bool((np.abs(pixels - rgb(colour)).max(axis=1) < 2.5 / 255).any())


def test_dag_from_plan_has_every_node_edge_and_port(plan: Plan) -> None:
    dag = dag_from_plan(plan)
    assert [n.name for n in dag.nodes] == NAMES == list(plan.nodes)
    assert {(e.source, e.target, e.port) for e in dag.edges} == EDGES
    assert {(e.source, e.target) for e in dag.edges} == set(plan.graph.edges)
    assert [n.status for n in dag.nodes] == ["input", "compute", "compute", "compute", "compute"]
    assert all(n.key == plan.nodes[n.name].key and len(n.key) > 8 for n in dag.nodes)


def test_svg_has_one_group_per_node_and_edge(plan: Plan, engine: str) -> None:
    svg = to_svg(dag_from_plan(plan), engine=engine)
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg" and root.get("width") and root.get("height") and root.get("viewBox")
    nodes, edges = groups(svg, "node"), groups(svg, "edge")
    assert set(nodes) == set(plan.nodes) and len(nodes) == len(plan.nodes)
    assert set(edges) == {f"{s}->{t}" for s, t, _ in EDGES} and len(edges) == plan.graph.number_of_edges()
    for source, target, port in EDGES:
        assert port in texts(edges[f"{source}->{target}"])
    mask = plan.nodes["mask"]
    assert texts(nodes["mask"]) == ["mask", f"threshold · {mask.key[:8]}", "Mask", "to compute"]
    assert box_fill(nodes["mask"]) == PALETTE["compute"][0] and box_fill(nodes["input"]) == PALETTE["input"][0]
    for element in root.iter():  # nothing fetched from elsewhere
        assert not any(k.endswith("href") and "://" in v for k, v in element.attrib.items())
    assert "@import" not in svg and "url(http" not in svg


def test_python_svg_is_deterministic(spec_file: Path, plan: Plan) -> None:
    """The same plan draws to the same bytes in separate processes (each with its own string-hash
    seed, so set or dict order that leaked into the layout would show)."""
    script = (
        "import sys\n"
        "from cvplgraph.engine.plan import make_plan\n"
        "from cvplgraph.inspect.dag import dag_from_plan, to_svg\n"
        "from cvplgraph.spec.parse import load_spec\n"
        "sys.stdout.write(to_svg(dag_from_plan(make_plan(load_spec(sys.argv[1]))), engine='python'))\n"
    )
    drawn = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script, str(spec_file)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        drawn.append(done.stdout)
    assert drawn[0] == drawn[1] == to_svg(dag_from_plan(plan), engine="python")


def test_cached_and_computed_nodes_differ_in_colour(ran_plan: Plan, engine: str) -> None:
    dag = dag_from_plan(ran_plan)
    assert {n.name: n.status for n in dag.nodes} == dict(zip(NAMES, ["input", "cached", "cached", "cached", "compute"]))
    nodes = groups(to_svg(dag, engine=engine), "node")
    assert box_fill(nodes["mask"]) == box_fill(nodes["cells"]) == PALETTE["cached"][0]
    assert box_fill(nodes["counts"]) == PALETTE["compute"][0] != PALETTE["cached"][0]
    assert "Mask 48×192×192" in texts(nodes["mask"]) and "cached" in texts(nodes["mask"])
    pixels = decode_png(to_png(dag, engine=engine))
    assert has_colour(pixels, PALETTE["cached"][0]) and has_colour(pixels, PALETTE["compute"][0])


def test_png_decodes_to_a_picture(plan: Plan, engine: str) -> None:
    data = to_png(dag_from_plan(plan), engine=engine)
    pixels = decode_png(data)
    assert len(np.unique(pixels, axis=0)) > 1
    assert has_colour(pixels, PALETTE["compute"][0]) and has_colour(pixels, PALETTE["input"][0])


def test_write_dag_to_stdout_is_mermaid(plan: Plan) -> None:
    text = write_dag(dag_from_plan(plan), "-")
    assert text is not None and text.startswith("flowchart TD\n")
    for name in NAMES:
        assert f"<b>{name}</b>" in text
    for _, _, port in EDGES:
        assert f'-->|"{port}"|' in text
    assert text.count("-->") == len(EDGES)
    assert "class n1,n2,n3,n4 st_compute" in text and "class n0 st_input" in text


@pytest.mark.parametrize(
    ("name", "start"),
    [("dag.svg", b"<"), ("dag.png", PNG_SIGNATURE), ("dag.dot", b"digraph"), ("dag.gv", b"digraph"),
     ("dag.mmd", b"flowchart TD"), ("dag.mermaid", b"flowchart TD"), ("DAG.SVG", b"<")],
)  # fmt: skip
def test_write_dag_format_from_extension(plan: Plan, tmp_path: Path, name: str, start: bytes) -> None:
    target = tmp_path / "new" / "folder" / name
    assert write_dag(dag_from_plan(plan), str(target), engine="python") is None
    assert target.read_bytes().startswith(start)


def test_write_dag_explicit_format_overrides_extension(plan: Plan, tmp_path: Path) -> None:
    target = tmp_path / "dag.txt"
    assert write_dag(dag_from_plan(plan), str(target), fmt="dot") is None
    assert target.read_text().startswith("digraph")
    assert write_dag(dag_from_plan(plan), "-", fmt="dot") == to_dot(dag_from_plan(plan))


def test_dot_file_is_valid_graphviz(plan: Plan, tmp_path: Path) -> None:
    target = tmp_path / "dag.dot"
    write_dag(dag_from_plan(plan), str(target))
    try:
        from networkx.drawing.nx_pydot import read_dot
    except ImportError:
        read_dot = None
    if read_dot is not None:
        try:
            graph = read_dot(str(target))
        except ImportError:
            graph = None
        if graph is not None:
            assert set(graph.nodes) >= set(NAMES)
    if shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not on the PATH, so the DOT file is not checked with it")
    out = subprocess.run(["dot", "-Tsvg", str(target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert set(groups(out.stdout, "node")) == set(NAMES)
    edges = groups(out.stdout, "edge")
    assert {port for g in edges.values() for port in texts(g)} == {port for _, _, port in EDGES}


@pytest.mark.parametrize(
    ("target", "fmt", "shown"),
    [("dag.jpg", None, "'.jpg'"), ("dag", None, "(none)"), ("dag.svg", "pdf", "'pdf'"), ("-", "png", "PNG")],
)
def test_write_dag_refuses_unknown_formats(
    plan: Plan, tmp_path: Path, target: str, fmt: str | None, shown: str
) -> None:
    folder = tmp_path / "pictures"
    path = target if target == "-" else str(folder / target)
    with pytest.raises(CvplError, match=r"\.(svg|png)") as info:
        write_dag(dag_from_plan(plan), path, fmt=fmt)
    assert shown in str(info.value) and "\n" not in str(info.value)
    assert not folder.exists()


def test_unknown_engine_is_an_error(plan: Plan) -> None:
    with pytest.raises(CvplError, match="'cairo'"):
        to_svg(dag_from_plan(plan), engine="cairo")


def test_partial_node(engine: str) -> None:
    dag = Dag(
        (
            DagNode("input", "input", "0123456789abcdef", "Image", "input", (48, 192, 192)),
            DagNode("mask", "threshold", "fedcba9876543210", "Mask", "compute", None, done=0.4),
        ),
        (DagEdge("input", "mask", "image"),),
    )
    assert "partial 40%" in to_dot(dag) and "partial 40%" in to_mermaid(dag)
    nodes = groups(to_svg(dag, engine=engine), "node")
    assert texts(nodes["mask"]) == ["mask", "threshold · fedcba98", "Mask", "partial 40%"]
    assert texts(nodes["input"])[2] == "Image 48×192×192"
    assert box_fill(nodes["mask"]) == PALETTE["partial"][0]
    assert PALETTE["partial"][0] != PALETTE["compute"][0]


def test_awkward_names_are_escaped(engine: str) -> None:
    name = 'a "b" <c> & d\\e'
    dag = Dag(
        (DagNode("input", "input", "k" * 16, "Image", "input"), DagNode(name, "op", "f" * 16, "Mask", "skip")),
        (DagEdge("input", name, 'p"<&>'),),
    )
    svg = to_svg(dag, engine=engine)
    assert set(groups(svg, "node")) == {"input", name}
    assert 'p"<&>' in texts(groups(svg, "edge")[f"input->{name}"])
    mermaid = to_mermaid(dag)
    label = mermaid.splitlines()[2]
    assert label.startswith('  n1["') and label.endswith('"]') and label.count('"') == 2


def test_dag_from_record_reads_a_run_record(ran_plan: Plan) -> None:
    record = {
        "nodes": [
            {**asdict(p), "shape": list(p.shape) if p.shape else None, "seconds": 1.5} for p in ran_plan.nodes.values()
        ],
        "edges": [{"source": s, "target": t, "port": p} for s, t, p in sorted(EDGES)],
    }
    dag = dag_from_record(record)
    expected = dag_from_plan(ran_plan)
    assert dag.nodes == expected.nodes
    assert set(dag.edges) == set(expected.edges)
    assert dag.nodes[1].shape == (48, 192, 192)


def test_graphviz_failure_is_reported(plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error: <stdin>: syntax error in line 1' >&2\necho 'second line' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(CvplError, match="syntax error in line 1$"):
        to_svg(dag_from_plan(plan), engine="graphviz")


def test_without_graphviz_auto_draws_in_python(plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    dag = dag_from_plan(plan)
    assert to_svg(dag) == to_svg(dag, engine="python")
    assert to_png(dag).startswith(PNG_SIGNATURE)
    with pytest.raises(CvplError, match="`dot` is not on the PATH"):
        to_png(dag, engine="graphviz")
