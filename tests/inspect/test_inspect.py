"""``cvplgraph plan --explain`` and ``plan --dag`` from the command line, after real runs and spec edits."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cvplgraph.cli import main
from cvplgraph.engine.plan import NodePlan, Status, make_plan
from cvplgraph.inspect.dag import dag_from_record
from cvplgraph.inspect.runlog import load_record
from cvplgraph.spec.parse import load_spec

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

SVG = "{http://www.w3.org/2000/svg}"


def explain(spec: Path, node: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["plan", str(spec), "--explain", node]) == 0
    return capsys.readouterr().out


def test_explain_names_the_changed_parameter_with_both_values(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(spec_file), "--scheduler", "threads", "--quiet"]) == 0
    assert "will not run: this key is in the cache" in explain(spec_file, "mask", capsys)
    spec_file.write_text(spec_file.read_text().replace("level = 0.3", "level = 0.35"))

    text = explain(spec_file, "mask", capsys)
    assert "will run: parameter `level` changed 0.3 → 0.35" in text
    assert any(line.split() == ["parameter", "level", "0.3", "→", "0.35"] for line in text.splitlines()), text

    downstream = explain(spec_file, "centroids", capsys)  # two inputs away: the cause is followed upstream
    assert "input `labels` ← cells changed because:" in downstream
    assert "mask will run: parameter `level` changed 0.3 → 0.35" in downstream
    assert "input `image` changed" not in downstream  # the image did not change


def test_explain_storage_options_op_version_and_unknown_nodes(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(spec_file), "--scheduler", "threads", "--quiet"]) == 0
    text = spec_file.read_text().replace('image = "input"\nlevel = 0.3\n', 'image = "input"\nlevel = 0.3\n'
                                         "store = { chunks = [12, 96, 96] }\n")  # fmt: skip
    spec_file.write_text(text)
    out = explain(spec_file, "mask", capsys)
    assert "storage option chunks" in out and "→ [12, 96, 96]" in out, out

    assert main(["plan", str(spec_file), "--explain", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such node" in err and "mask" in err and "Traceback" not in err
    assert "an input, not computed" in explain(spec_file, "input", capsys)


def test_explain_a_node_never_computed(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = explain(spec_file, "cells", capsys)
    assert "will run: new" in out and "no earlier entry for node `cells`" in out


def test_plan_draws_the_dag_with_one_box_per_node(spec_file: Path, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:  # fmt: skip
    assert main(["run", str(spec_file), "--scheduler", "threads", "--quiet"]) == 0
    spec_file.write_text(spec_file.read_text().replace("block = [32, 128, 128]", "block = [16, 64, 64]"))
    picture = tmp_path / "pictures" / "dag.svg"
    assert main(["plan", str(spec_file), "--dag", str(picture)]) == 0
    assert f"DAG → {picture}" in capsys.readouterr().out
    root = ET.parse(picture).getroot()
    boxes = {g.findtext(f"{SVG}title"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    assert set(boxes) == {"input", "mask", "cells", "centroids", "counts"}
    edges = [g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]
    assert len(edges) == 5  # image→mask, mask→cells, cells→centroids, image→centroids, centroids→counts
    words = " ".join("".join(g.itertext()) for g in edges)
    assert all(port in words for port in ("image", "mask", "labels", "objects"))

    def fill(name: str) -> set[str]:
        return {e.get("fill") for e in boxes[name].iter() if e.get("fill") not in (None, "none", "black")}

    assert fill("counts") != fill("mask")  # to compute versus cached
    assert "to compute" in "".join(boxes["counts"].itertext())
    assert "cached" in "".join(boxes["mask"].itertext())

    assert main(["plan", str(spec_file), "--dag", "-"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart TD") and '|"objects"|' in mermaid
    assert main(["plan", str(spec_file), "--dag", "-", "--dag-format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph")


def test_statuses_are_an_enum_that_keeps_its_strings_in_plans_and_run_records(spec_file: Path) -> None:
    plan = make_plan(load_spec(spec_file))
    assert {n: p.status for n, p in plan.nodes.items()} == {
        "input": Status.INPUT, "mask": Status.COMPUTE, "cells": Status.COMPUTE, "centroids": Status.COMPUTE,
        "counts": Status.COMPUTE,
    }  # fmt: skip
    assert [n["status"] for n in json.loads(plan.to_json())["nodes"]] == ["input"] + ["compute"] * 4
    assert dict(plan.node("mask").input_keys) == {"image": plan.node("input").key}
    with pytest.raises(TypeError):  # built by keyword only
        NodePlan("mask", "threshold", "Mask", "k", Status.COMPUTE)  # type: ignore[misc]
    assert NodePlan(name="mask", op="threshold", type="Mask", key="k", status="cached").status is Status.CACHED

    assert main(["run", str(spec_file), "--scheduler", "threads", "--quiet"]) == 0
    record = load_record(str(spec_file))  # as read back from JSON: plain strings, as old records hold
    assert {n["name"]: n["status"] for n in record["nodes"]}["mask"] == "compute"
    assert all(type(n["status"]) is str for n in record["nodes"])
    assert {n.name: n.status for n in dag_from_record(record).nodes}["mask"] == "computed"
    again = make_plan(load_spec(spec_file))
    assert again.cached() == ["mask", "cells", "centroids", "counts"] and not again.to_compute()
