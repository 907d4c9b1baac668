"""The docs that are generated from code are up to date."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvplgraph.ops.doc import ops_markdown

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

ROOT = Path(__file__).resolve().parents[1]


def test_ops_reference_matches_the_registry() -> None:
    committed = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    assert committed.strip() == ops_markdown().strip(), "regenerate with: cvplgraph ops --markdown > docs/ops.md"


def test_readme_commands_are_the_ci_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(line for line in ci.splitlines() if "pytest" in line).strip()
    assert test_command in readme


def test_cluster_recipes_are_valid_python_and_spec_tables() -> None:
    """Every recipe in docs/cluster.md compiles, and every [cluster] table passes the spec check."""
    import re

    from cvplgraph.spec.parse import parse_spec

    text = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
    python = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    tables = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert len(python) >= 4 and len(tables) >= 5
    for code in python:
        compile(code, "docs/cluster.md", "exec")
    for table in tables:
        head = '[input]\nurl = "volume.ome.zarr"\n\n[nodes.mask]\nop = "threshold"\nimage = "input"\n\n'
        spec = parse_spec(head + table, "docs/cluster.md")
        assert spec.cluster.address or spec.cluster.factory


def test_the_brainglobe_example_is_a_valid_spec() -> None:
    """docs/brainglobe.md's spec, after the nodes that find the centroids, passes the spec check."""
    import re

    from cvplgraph.spec.parse import parse_spec

    text = (ROOT / "docs" / "brainglobe.md").read_text(encoding="utf-8")
    (table,) = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    head = (
        '[input]\nurl = "volume.ome.zarr"\n\n[nodes.mask]\nop = "threshold"\nimage = "input"\n\n'
        '[nodes.cells]\nop = "connected_components"\nmask = "mask"\n\n'
        '[nodes.centroids]\nop = "centroids"\nlabels = "cells"\n\n'
    )
    spec = parse_spec(head + table, "docs/brainglobe.md")
    atlas = dict(spec.atlases)["atlas"]
    assert (atlas.name, atlas.orientation) == ("allen_mouse_25um", "psl")
    assert {fmt for _, fmt in spec.formats} == {"brainglobe", "all_points", "cellfinder_xml"}
