"""The package's floor plan: layers that import only downward, no import cycles, a registry that
is never empty, and public names resolved on first use (docs/design.md, "The package"); that
`--help`, `--version` and `import cvplgraph` load no array library is checked in tests/cli/test_cli.py."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import networkx as nx
import pytest

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

ROOT = Path(__file__).resolve().parents[1]


def contract_layers() -> list[str]:
    """The layers declared once, in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return list(contract["layers"])


def import_graph() -> nx.DiGraph:
    """Every import between cvplgraph modules, those inside functions included (grimp reads them all)."""
    graph = grimp.build_graph("cvplgraph", exclude_type_checking_imports=True)
    out = nx.DiGraph()
    for module in graph.modules:
        out.add_node(module)
        out.add_edges_from((module, imported) for imported in graph.find_modules_directly_imported_by(module))
    return out


def test_the_layer_contract_is_kept() -> None:
    """import-linter's own check of the contract in pyproject.toml (what `lint-imports` prints)."""
    code = (
        "import sys\nfrom importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_every_package_folder_is_a_declared_layer() -> None:
    """A new folder (or top-level module) must be placed in the layer order, not float outside it."""
    declared = {name.strip() for layer in contract_layers() for name in layer.split("|")}
    package = ROOT / "cvplgraph"
    present = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    assert present == declared


def test_no_upward_import_anywhere() -> None:
    """The same rule computed here from grimp's graph, independently of import-linter: a module's
    layer is never below a layer it imports from (same layer is fine, siblings on one line never)."""
    rank: dict[str, int] = {}
    sibling: dict[str, set[str]] = {}
    layers = contract_layers()
    for depth, layer in enumerate(layers):
        names = [n.strip() for n in layer.split("|")]
        for name in names:
            rank[name] = len(layers) - depth
            sibling[name] = set(names) - {name}
    graph = import_graph()

    def layer_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else None  # the root package itself is the container

    upward = []
    for importer, imported in graph.edges:
        a, b = layer_of(importer), layer_of(imported)
        if a is None or b is None or a == b:
            continue
        if rank[b] > rank[a] or b in sibling[a]:
            upward.append(f"{importer} → {imported}")
    assert upward == []


def test_no_import_cycles() -> None:
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], [" → ".join([*c, c[0]]) for c in cycles[:5]]


def test_ops_never_import_the_cache_or_the_engine() -> None:
    graph = import_graph()
    reached = nx.descendants(graph, "cvplgraph.ops") | set().union(
        *(nx.descendants(graph, m) for m in graph if m.startswith("cvplgraph.ops."))
    )
    assert not {m for m in reached if m.startswith(("cvplgraph.cache", "cvplgraph.engine"))}


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_registry_is_never_empty_for_a_spec_built_in_python() -> None:
    """In a fresh process, a Spec built by hand compiles with no earlier call: the compiler imports
    the built-in ops, which register themselves; the registry module imports none of them."""
    code = """
import json
from cvplgraph.engine.compile import compile_spec, nodes_in_order
from cvplgraph.spec.model import InputSpec, NodeSpec, Spec
spec = Spec("<spec>", InputSpec("scan.ome.zarr"), (
    NodeSpec("mask", "threshold", (("image", "input"),), (("level", 0.4),)),
    NodeSpec("cells", "connected_components", (("mask", "mask"),), ()),
), "cache")
graph = compile_spec(spec, "f" * 24)
print(json.dumps([[n.name, n.opdef.name if not n.is_input else None, len(n.key)] for n in nodes_in_order(graph)]))
"""
    expected = [["input", None, 24], ["mask", "threshold", 24], ["cells", "connected_components", 24]]
    assert json.loads(run_python(code)) == expected


def test_the_registry_module_alone_registers_nothing() -> None:
    code = "import cvplgraph.registry as r, sys; print(len(r.REGISTRY), 'cvplgraph.ops' in sys.modules)"
    assert run_python(code).split() == ["0", "False"]


def test_public_names_resolve_lazily() -> None:
    code = (
        "import cvplgraph, sys\n"
        "before = 'dask' in sys.modules\n"
        "names = [cvplgraph.load_spec, cvplgraph.plan, cvplgraph.run, cvplgraph.Plan, cvplgraph.Spec]\n"
        "print(before, cvplgraph.ops.__name__, cvplgraph.view.__name__, callable(cvplgraph.run))"
    )
    assert run_python(code).split() == ["False", "cvplgraph.ops", "cvplgraph.inspect.view", "True"]
