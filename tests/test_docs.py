"""The docs that are generated from code are up to date."""

from __future__ import annotations

from pathlib import Path

from cvplgraph.opsdoc import ops_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_ops_reference_matches_the_registry() -> None:
    committed = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    assert committed.strip() == ops_markdown().strip(), "regenerate with: cvplgraph ops --markdown > docs/ops.md"


def test_readme_commands_are_the_ci_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(line for line in ci.splitlines() if "pytest" in line).strip()
    assert test_command in readme
