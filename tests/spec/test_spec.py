"""Tests of spec parsing and validation (:mod:`cvplgraph.spec.parse`, graph checks of :mod:`cvplgraph.engine.compile`).

Negative cases form a table in the style of napari npe2's mutator tests: start
from :data:`VALID_SPEC`, apply ONE mutation, parse, and compare the
:class:`~cvplgraph.errors.SpecError` with the expected problems (field path,
line number computed from the mutated text, message substrings that show the
bad value and the expectation).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import pytest

from cvplgraph.errors import Problem, SpecError
from cvplgraph.spec.fields import line_of
from cvplgraph.spec.model import NodeSpec, Params, Spec, StoreSpec
from cvplgraph.spec.parse import load_spec, parse_spec

FILE = "spec.toml"

#: A valid spec exercising every table; the input path need not exist (parse_spec does no IO).
VALID_SPEC = """\
# a test pipeline
[input]
url = "data/volume.ome.zarr"
channel = 0
timepoint = 0
level = 0
crop = { z = [0, 64], y = [0, 512], x = [0, 512] }
intensity_range = [0.0, 1.0]

[cache]
url = "cache"

[cluster]
address = ""
n_workers = 2

[nodes.mask]
op = "threshold"
image = "input"
level = 0.3
view = { colormap = "magenta" }

[nodes.cells]
op = "connected_components"
mask = "mask"
connectivity = 6

[nodes.cells.store]
chunks = [32, 128, 128]
multiscale = 2
compressor = { id = "zstd", level = 5 }

[nodes.centroids]
op = "centroids"
labels = "cells"
image = "input"

[nodes.counts]
op = "count"
objects = "centroids"
block = [64, 256, 256]

[outputs]
centroids = "results/centroids.csv"
counts = "results/counts.csv"
"""

NODE_NAMES = ("mask", "cells", "centroids", "counts")
BUILTIN_OPS = ("centroids", "connected_components", "count", "threshold")

# --------------------------------------------------------------------------- text helpers

Mutation = Callable[[str], str]


def _section(lines: Sequence[str], table: str) -> tuple[int, int]:
    """0-based (header index, end index) of ``[table]`` in ``lines``; end is exclusive."""
    headers = [i for i, line in enumerate(lines) if line.strip() == f"[{table}]"]
    assert len(headers) == 1, f"table [{table}] must occur once"
    start = headers[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    return start, end


def _key_index(lines: Sequence[str], table: str, key: str) -> int:
    start, end = _section(lines, table)
    hits = [i for i in range(start + 1, end) if re.match(rf"^\s*{re.escape(key)}\s*=", lines[i])]
    assert len(hits) == 1, f"key {key!r} must occur once in [{table}]"
    return hits[0]


def header_line(text: str, table: str) -> int:
    """1-based line of the ``[table]`` header."""
    return _section(text.splitlines(), table)[0] + 1


def key_line(text: str, table: str, key: str) -> int:
    """1-based line of ``key = ...`` inside ``[table]``."""
    return _key_index(text.splitlines(), table, key) + 1


def set_key(table: str, key: str, literal: str) -> Mutation:
    """Replace the value of an existing key."""

    def mutate(text: str) -> str:
        lines = text.splitlines()
        lines[_key_index(lines, table, key)] = f"{key} = {literal}"
        return "\n".join(lines) + "\n"

    return mutate


def add_key(table: str, key: str, literal: str) -> Mutation:
    """Add a key at the end of ``[table]`` (after its last non-blank line)."""

    def mutate(text: str) -> str:
        lines = text.splitlines()
        start, end = _section(lines, table)
        while end - 1 > start and not lines[end - 1].strip():
            end -= 1
        lines.insert(end, f"{key} = {literal}")
        return "\n".join(lines) + "\n"

    return mutate


def del_key(table: str, key: str) -> Mutation:
    def mutate(text: str) -> str:
        lines = text.splitlines()
        del lines[_key_index(lines, table, key)]
        return "\n".join(lines) + "\n"

    return mutate


def replace_line(table: str, key: str, raw: str) -> Mutation:
    """Replace the whole ``key = ...`` line by ``raw`` (used for broken TOML)."""

    def mutate(text: str) -> str:
        lines = text.splitlines()
        lines[_key_index(lines, table, key)] = raw
        return "\n".join(lines) + "\n"

    return mutate


def append(block: str) -> Mutation:
    return lambda text: text + "\n" + block


def compose(*mutations: Mutation) -> Mutation:
    return lambda text: reduce(lambda acc, m: m(acc), mutations, text)


# --------------------------------------------------------------------------- expectations

LineOf = Callable[[str, str], int | None]  # (mutated text, problem field) → expected line


def at_key(table: str, key: str) -> LineOf:
    return lambda text, _field: key_line(text, table, key)


def at_header(table: str) -> LineOf:
    return lambda text, _field: header_line(text, table)


def at_field_header() -> LineOf:
    """The header of the table named by the problem's own field (e.g. ``nodes.cells``)."""
    return lambda text, field: header_line(text, field)


@dataclass(frozen=True)
class Expect:
    """One expected problem. ``field`` may list alternatives when any of them is correct."""

    field: str | tuple[str, ...]
    line: LineOf
    contains: tuple[str, ...]
    check: Callable[[Problem], bool] | None = None

    def fields(self) -> tuple[str, ...]:
        return (self.field,) if isinstance(self.field, str) else self.field


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    expect: tuple[Expect, ...]


def _is_mask_cells_cycle(problem: Problem) -> bool:
    """The message shows the closed path mask ⇄ cells, starting at the node named by the field."""
    m = re.fullmatch(r"cycle in the graph: (.+)", problem.message)
    if not m:
        return False
    path = m.group(1).split(" → ")
    return (
        len(path) == 3
        and path[0] == path[-1]
        and set(path) == {"mask", "cells"}
        and problem.field == f"nodes.{path[0]}"
    )


KNOWN_NODES = "known: cells, centroids, counts, input, mask"

CASES: list[Case] = [
    # ---- top level
    Case(
        "unknown-top-level-table",
        append("[extras]\nfoo = 1\n"),
        (
            Expect(
                "extras",
                at_header("extras"),
                ("unknown field `extras`", "expected one of: plugins, input, inputs, nodes, cache, cluster, outputs"),
            ),
        ),
    ),
    Case(
        "top-level-table-typo",
        append('[output]\nmask = "m.ome.zarr"\n'),
        (Expect("output", at_header("output"), ("unknown field `output`", "did you mean `outputs`?")),),
    ),
    Case(
        "invalid-toml",
        replace_line("nodes.mask", "level", "level = 0.3 0.4"),
        (Expect("toml", at_key("nodes.mask", "level"), ("not valid TOML",)),),
    ),
    # ---- [inputs.NAME] (atlases) and output formats
    Case(
        "atlas-kind-unknown",
        append('[inputs.atlas]\nkind = "image"\nurl = "atlas"\n'),
        (Expect("inputs.atlas.kind", at_key("inputs.atlas", "kind"), ('expected "atlas"', "got 'image'")),),
    ),
    Case(
        "atlas-url-missing",
        append('[inputs.atlas]\nstructures = "s.csv"\n'),
        (Expect("inputs.atlas", at_header("inputs.atlas"), ("url =", "name =", "neither")),),
    ),
    Case(
        "atlas-url-and-name",
        append('[inputs.atlas]\nurl = "atlas"\nname = "allen_mouse_25um"\n'),
        (Expect("inputs.atlas", at_header("inputs.atlas"), ("url =", "name =", "got both")),),
    ),
    Case(
        "atlas-version-without-name",
        append('[inputs.atlas]\nurl = "atlas"\nversion = "1.2"\n'),
        (Expect("inputs.atlas.version", at_key("inputs.atlas", "version"), ("goes with name", "got '1.2'")),),
    ),
    Case(
        "atlas-orientation-not-a-code",
        append('[inputs.atlas]\nname = "allen_mouse_25um"\norientation = "aas"\n'),
        (Expect("inputs.atlas.orientation", at_key("inputs.atlas", "orientation"), ("a/p, s/i, l/r", "got 'aas'")),),
    ),
    Case(
        "atlas-orientation-and-transpose",
        append('[inputs.atlas]\nname = "allen_mouse_25um"\norientation = "psl"\ntranspose = [2, 1, 0]\n'),
        (Expect("inputs.atlas.transpose", at_key("inputs.atlas", "transpose"), ("not both",)),),
    ),
    Case(
        "atlas-transpose-not-a-permutation",
        append('[inputs.atlas]\nurl = "a.tif"\ntranspose = [2, 2, 0]\n'),
        (Expect("inputs.atlas.transpose", at_key("inputs.atlas", "transpose"), ("e.g. [2, 1, 0]", "got [2, 2, 0]")),),
    ),
    Case(
        "atlas-scale-negative",
        append('[inputs.atlas]\nurl = "a.tif"\nscale = [25, -25, 25]\n'),
        (Expect("inputs.atlas.scale", at_key("inputs.atlas", "scale"), ("3 numbers > 0", "got [25, -25, 25]")),),
    ),
    Case(
        "atlas-hemisphere-values-equal",
        append('[inputs.atlas]\nurl = "a.tif"\nhemisphere_values = { left = 255, right = 255 }\n'),
        (
            Expect(
                "inputs.atlas.hemisphere_values",
                at_key("inputs.atlas", "hemisphere_values"),
                ("two different integers", "255"),
            ),
        ),
    ),
    Case(
        "atlas-named-input",
        append('[inputs.input]\nurl = "a.tif"\n'),
        (Expect("inputs.input", at_header("inputs.input"), ("raw image's name",)),),
    ),
    Case(
        "output-format-unknown",
        set_key("outputs", "counts", '{ path = "results/summary.csv", format = "clearmap" }'),
        (Expect("outputs.counts.format", at_key("outputs", "counts"), ("expected one of brainglobe", "'clearmap'")),),
    ),
    # ---- [input]
    Case(
        "input-url-missing",
        del_key("input", "url"),
        (Expect("input.url", at_header("input"), ("missing", "OME-Zarr path or fsspec URL")),),
    ),
    Case(
        "input-url-not-a-string",
        set_key("input", "url", "5"),
        (Expect("input.url", at_key("input", "url"), ("expected an OME-Zarr path or fsspec URL (a string)", "got 5")),),
    ),
    Case(
        "input-url-empty",
        set_key("input", "url", '"  "'),
        (Expect("input.url", at_key("input", "url"), ("OME-Zarr path", "empty string")),),
    ),
    Case(
        "input-level-negative",
        set_key("input", "level", "-1"),
        (Expect("input.level", at_key("input", "level"), ("expected an integer ≥ 0", "got -1")),),
    ),
    Case(
        "input-channel-float",
        set_key("input", "channel", "1.5"),
        (Expect("input.channel", at_key("input", "channel"), ("an integer ≥ 0", "got 1.5")),),
    ),
    Case(
        "input-int-field-given-bool",
        set_key("input", "timepoint", "true"),
        (Expect("input.timepoint", at_key("input", "timepoint"), ("an integer ≥ 0", "got True")),),
    ),
    Case(
        "input-unknown-key",
        add_key("input", "chanel", "1"),
        (Expect("input.chanel", at_key("input", "chanel"), ("unknown field `chanel`", "did you mean `channel`?")),),
    ),
    Case(
        "crop-start-not-below-stop",
        set_key("input", "crop", "{ z = [0, 64], y = [300, 300], x = [0, 512] }"),
        (Expect("input.crop.y", at_key("input", "crop"), ("0 ≤ start < stop", "got [300, 300]")),),
    ),
    Case(
        "crop-unknown-axis",
        set_key("input", "crop", "{ z = [0, 64], w = [0, 8] }"),
        (Expect("input.crop.w", at_key("input", "crop"), ("unknown field `w`", "expected one of: z, y, x")),),
    ),
    Case(
        "intensity-range-reversed",
        set_key("input", "intensity_range", "[1.0, 0.25]"),
        (Expect("input.intensity_range", at_key("input", "intensity_range"), ("low < high", "got [1.0, 0.25]")),),
    ),
    Case(
        "fingerprint-unknown",
        add_key("input", "fingerprint", '"mtime"'),
        (Expect("input.fingerprint", at_key("input", "fingerprint"), ('"listing" or "content"', "got 'mtime'")),),
    ),
    Case(
        "nonfinite-unknown",
        add_key("input", "nonfinite", '"nan"'),
        (Expect("input.nonfinite", at_key("input", "nonfinite"), ('"error" or "zero"', "got 'nan'")),),
    ),
    # ---- nodes: ops and parameters
    Case(
        "unknown-op",
        set_key("nodes.mask", "op", '"treshold"'),
        (
            Expect(
                "nodes.mask.op",
                at_key("nodes.mask", "op"),
                ("unknown op 'treshold'", "did you mean `threshold`?", "known ops:", *BUILTIN_OPS),
            ),
        ),
    ),
    Case(
        "op-missing",
        del_key("nodes.counts", "op"),
        (Expect("nodes.counts.op", at_header("nodes.counts"), ("missing", "an op name", *BUILTIN_OPS)),),
    ),
    Case(
        "param-wrong-type",
        set_key("nodes.mask", "level", '"high"'),
        (Expect("nodes.mask.level", at_key("nodes.mask", "level"), ("expected a finite number", "got 'high'")),),
    ),
    Case(
        "float-param-given-bool",
        set_key("nodes.mask", "level", "true"),
        (Expect("nodes.mask.level", at_key("nodes.mask", "level"), ("expected a finite number", "got True")),),
    ),
    Case(
        "float-param-nan",
        set_key("nodes.mask", "level", "nan"),
        (Expect("nodes.mask.level", at_key("nodes.mask", "level"), ("expected a finite number", "got nan")),),
    ),
    Case(
        "float-param-inf",
        set_key("nodes.mask", "level", "inf"),
        (Expect("nodes.mask.level", at_key("nodes.mask", "level"), ("expected a finite number", "got inf")),),
    ),
    Case(
        "float-param-minus-inf",
        set_key("nodes.mask", "level", "-inf"),
        (Expect("nodes.mask.level", at_key("nodes.mask", "level"), ("expected a finite number", "got -inf")),),
    ),
    Case(
        "unknown-param-did-you-mean",
        compose(del_key("nodes.mask", "level"), add_key("nodes.mask", "levle", "0.3")),
        (
            Expect(
                "nodes.mask.levle",
                at_key("nodes.mask", "levle"),
                ("unknown field `levle`", "did you mean `level`?", "image", "level"),
            ),
        ),
    ),
    Case(
        "literal-param-out-of-choices",
        set_key("nodes.cells", "connectivity", "8"),
        (Expect("nodes.cells.connectivity", at_key("nodes.cells", "connectivity"), ("one of 6, 26", "got 8")),),
    ),
    Case(
        "literal-param-wrong-type",
        set_key("nodes.cells", "connectivity", '"6"'),
        (Expect("nodes.cells.connectivity", at_key("nodes.cells", "connectivity"), ("one of 6, 26", "got '6'")),),
    ),
    Case(
        "int-list-param-given-bool",
        set_key("nodes.counts", "block", "[64, true, 256]"),
        (Expect("nodes.counts.block", at_key("nodes.counts", "block"), ("a list of int", "got [64, True, 256]")),),
    ),
    Case(
        "cache-flag-not-bool",
        add_key("nodes.centroids", "cache", '"yes"'),
        (Expect("nodes.centroids.cache", at_key("nodes.centroids", "cache"), ("true or false", "got 'yes'")),),
    ),
    Case(
        "view-not-a-table",
        set_key("nodes.mask", "view", "3"),
        (Expect("nodes.mask.view", at_key("nodes.mask", "view"), ("table of display options", "got 3")),),
    ),
    # ---- nodes: graph
    Case(
        "missing-required-input-port",
        del_key("nodes.cells", "mask"),
        (Expect("nodes.cells.mask", at_header("nodes.cells"), ("missing input `mask`", '"input"')),),
    ),
    Case(
        "input-references-unknown-node",
        set_key("nodes.centroids", "labels", '"cels"'),
        (Expect("nodes.centroids.labels", at_key("nodes.centroids", "labels"), ("unknown node 'cels'", KNOWN_NODES)),),
    ),
    Case(
        "type-mismatch-edge",
        set_key("nodes.counts", "objects", '"mask"'),
        (
            Expect(
                "nodes.counts.objects",
                at_key("nodes.counts", "objects"),
                ("type mismatch", "`mask` produces Mask", "`counts.objects` (count) expects Labels | Points"),
            ),
        ),
    ),
    # No op produces an Image, so a cycle through threshold also has a type-mismatch edge.
    Case(
        "cycle",
        set_key("nodes.mask", "image", '"cells"'),
        (
            Expect(
                "nodes.mask.image",
                at_key("nodes.mask", "image"),
                ("type mismatch", "`cells` produces Labels", "`mask.image` (threshold) expects Image"),
            ),
            Expect(
                ("nodes.mask", "nodes.cells"), at_field_header(), ("cycle in the graph: ",), check=_is_mask_cells_cycle
            ),
        ),
    ),
    Case(
        "self-reference",
        set_key("nodes.cells", "mask", '"cells"'),
        (
            Expect(
                "nodes.cells.mask", at_key("nodes.cells", "mask"), ("node `cells` cannot take its own output as input",)
            ),
        ),
    ),
    Case(
        "node-named-input",
        append('[nodes.input]\nop = "count"\nobjects = "centroids"\n'),
        (Expect("nodes.input", at_header("nodes.input"), ("`input` is the raw image's name", "choose another")),),
    ),
    # ---- store
    Case(
        "store-multiscale-zero",
        set_key("nodes.cells.store", "multiscale", "0"),
        (
            Expect(
                "nodes.cells.store.multiscale", at_key("nodes.cells.store", "multiscale"), ("an integer ≥ 1", "got 0")
            ),
        ),
    ),
    Case(
        "store-compressor-unknown-id",
        set_key("nodes.cells.store", "compressor", '{ id = "lz4" }'),
        (
            Expect(
                "nodes.cells.store.compressor",
                at_key("nodes.cells.store", "compressor"),
                ("id one of blosc, zstd, gzip, none", "got {'id': 'lz4'}"),
            ),
        ),
    ),
    Case(
        "store-chunks-wrong-length",
        set_key("nodes.cells.store", "chunks", "[32, 128]"),
        (
            Expect(
                "nodes.cells.store.chunks",
                at_key("nodes.cells.store", "chunks"),
                ("a list of 3 integers ≥ 1", "got [32, 128]"),
            ),
        ),
    ),
    Case(
        "store-unknown-key",
        add_key("nodes.cells.store", "compresor", '"zstd"'),
        (
            Expect(
                "nodes.cells.store.compresor",
                at_key("nodes.cells.store", "compresor"),
                ("unknown field `compresor`", "did you mean `compressor`?"),
            ),
        ),
    ),
    # ---- cluster
    Case(
        "cluster-address-without-scheme",
        set_key("cluster", "address", '"127.0.0.1:8786"'),
        (Expect("cluster.address", at_key("cluster", "address"), ("tcp://127.0.0.1:8786", "got '127.0.0.1:8786'")),),
    ),
    Case(
        "cluster-n-workers-negative",
        set_key("cluster", "n_workers", "-3"),
        (Expect("cluster.n_workers", at_key("cluster", "n_workers"), ("an integer ≥ 0", "got -3")),),
    ),
    Case(
        "cluster-int-field-given-bool",
        set_key("cluster", "n_workers", "true"),
        (Expect("cluster.n_workers", at_key("cluster", "n_workers"), ("an integer ≥ 0", "got True")),),
    ),
    # ---- cache and outputs
    Case(
        "cache-url-empty",
        set_key("cache", "url", '""'),
        (Expect("cache.url", at_key("cache", "url"), ("folder path or fsspec URL", "empty string")),),
    ),
    Case(
        "cache-url-not-a-string",
        set_key("cache", "url", "7"),
        (Expect("cache.url", at_key("cache", "url"), ("folder path or fsspec URL", "got 7")),),
    ),
    Case(
        "output-for-unknown-node",
        add_key("outputs", "centroid", '"results/c.csv"'),
        (
            Expect(
                "outputs.centroid",
                at_key("outputs", "centroid"),
                ("unknown node 'centroid'", "known: cells, centroids, counts, mask"),
            ),
        ),
    ),
    Case(
        "output-wrong-suffix",
        set_key("outputs", "centroids", '"results/centroids.txt"'),
        (
            Expect(
                "outputs.centroids",
                at_key("outputs", "centroids"),
                ("a Points output needs a file ending in .csv", "centroids.txt'"),
            ),
        ),
    ),
    Case(
        "output-not-a-string",
        set_key("outputs", "counts", "3"),
        (Expect("outputs.counts", at_key("outputs", "counts"), ("a file path (string)", "got 3")),),
    ),
]


def _params(cases: list[Case]) -> list[object]:
    return [pytest.param(c, id=c.id) for c in cases]


def _describe(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


def assert_problems(text: str, problems: list[Problem], expected: Sequence[Expect]) -> None:
    """``problems`` are exactly ``expected`` (in any order), each at its field, line and message."""
    assert len(problems) == len(expected), _describe(problems)
    remaining = list(problems)
    for exp in expected:
        hits = [p for p in remaining if p.field in exp.fields()]
        assert len(hits) == 1, f"expected one problem at {exp.field}, got:\n{_describe(problems)}"
        problem = hits[0]
        remaining.remove(problem)
        assert problem.file == FILE
        assert problem.line == exp.line(text, problem.field), str(problem)
        for part in exp.contains:
            assert part in problem.message, f"{part!r} not in {problem.message!r}"
        if exp.check is not None:
            assert exp.check(problem), str(problem)


def test_valid_spec_is_valid() -> None:
    spec = parse_spec(VALID_SPEC, FILE)
    assert [n.name for n in spec.nodes] == list(NODE_NAMES)


@pytest.mark.parametrize("case", _params(CASES))
def test_one_mutation_gives_exactly_the_expected_problems(case: Case) -> None:
    text = case.mutate(VALID_SPEC)
    assert text != VALID_SPEC
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    assert_problems(text, info.value.problems, case.expect)


def test_cases_cover_enough_mutations() -> None:
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- several problems at once

INDEPENDENT = [
    "unknown-top-level-table",
    "input-level-negative",
    "crop-unknown-axis",
    "unknown-param-did-you-mean",
    "literal-param-out-of-choices",
    "input-references-unknown-node",
    "type-mismatch-edge",
    "store-multiscale-zero",
    "store-chunks-wrong-length",
    "cluster-address-without-scheme",
    "cache-url-empty",
    "output-wrong-suffix",
]


def test_independent_mutations_are_all_reported_together() -> None:
    cases = [next(c for c in CASES if c.id == cid) for cid in INDEPENDENT]
    text = compose(*(c.mutate for c in cases))(VALID_SPEC)
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    expected = [e for c in cases for e in c.expect]
    assert_problems(text, info.value.problems, expected)
    report = str(info.value)
    assert report.splitlines()[0] == f"{len(expected)} problems in the spec:"
    assert len(report.splitlines()) == len(expected) + 1


def test_missing_input_url_does_not_hide_graph_problems() -> None:
    cases = [next(c for c in CASES if c.id == cid) for cid in ("input-url-missing", "input-references-unknown-node")]
    text = compose(*(c.mutate for c in cases))(VALID_SPEC)
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    assert_problems(text, info.value.problems, [e for c in cases for e in c.expect])


def test_str_of_a_single_problem_is_one_line() -> None:
    text = set_key("nodes.cells", "connectivity", "8")(VALID_SPEC)
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    (problem,) = info.value.problems
    line = key_line(text, "nodes.cells", "connectivity")
    report = str(info.value)
    assert "\n" not in report
    assert report == f"{FILE}:{line}: nodes.cells.connectivity: {problem.message}"
    m = re.fullmatch(r"spec\.toml:(\d+): ([\w.]+): (.+)", report)
    assert m is not None and int(m.group(1)) == line and "got 8" in m.group(3)


def test_toml_error_line_comes_from_the_toml_error() -> None:
    text = set_key("cluster", "address", '"tcp://unterminated')(VALID_SPEC)
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    (problem,) = info.value.problems
    assert problem.field == "toml"
    assert problem.line == key_line(text, "cluster", "address")
    assert "not valid TOML" in problem.message


# --------------------------------------------------------------------------- valid specs


def test_valid_spec_parses_into_the_expected_values() -> None:
    spec = parse_spec(VALID_SPEC, FILE)
    assert isinstance(spec, Spec)
    assert spec.input.crop == ((0, 64), (0, 512), (0, 512))
    assert spec.input.intensity_range == (0.0, 1.0)
    mask, cells, centroids, counts = spec.nodes
    assert (mask.op, mask.input_map, mask.params) == ("threshold", {"image": "input"}, {"level": 0.3})
    assert mask.view == (("colormap", "magenta"),)
    assert cells.input_map == {"mask": "mask"} and cells.params == {"connectivity": 6}
    assert cells.store.chunks == (32, 128, 128) and cells.store.multiscale == 2
    assert dict(cells.store.compressor) == {"id": "zstd", "level": 5}
    assert centroids.input_map == {"labels": "cells", "image": "input"}
    assert counts.input_map == {"objects": "centroids"}
    assert spec.cluster.n_workers == 2 and spec.cluster.address == ""
    assert [name for name, _ in spec.outputs] == ["centroids", "counts"]
    assert line_of(spec.locations, "nodes.cells.store.multiscale") == key_line(
        VALID_SPEC, "nodes.cells.store", "multiscale"
    )


def test_integer_for_float_param_becomes_float() -> None:
    spec = parse_spec(set_key("nodes.mask", "level", "1")(VALID_SPEC), FILE)
    level = spec.node("mask").params["level"]
    assert level == 1.0 and type(level) is float


def test_list_params_become_tuples() -> None:
    spec = parse_spec(set_key("nodes.counts", "block", "[8, 16, 32]")(VALID_SPEC), FILE)
    block = spec.node("counts").params["block"]
    assert block == (8, 16, 32) and isinstance(block, tuple)
    assert isinstance(spec.input.intensity_range, tuple)


def test_params_are_one_read_only_hashable_mapping() -> None:
    spec = parse_spec(VALID_SPEC, FILE)
    params = spec.node("counts").params
    assert isinstance(params, Params) and params == {"block": (64, 256, 256)}
    assert hash(spec.node("counts")) == hash(parse_spec(VALID_SPEC, FILE).node("counts"))
    assert Params({"b": 2, "a": 1}) == Params([("a", 1), ("b", 2)]) == Params(a=1, b=2)
    assert list(Params({"b": 2, "a": 1})) == ["a", "b"]  # name order, as cache entries record them
    assert pickle.loads(pickle.dumps(params)) == params
    with pytest.raises(TypeError):
        params["block"] = (1, 1, 1)  # type: ignore[index]
    by_hand = NodeSpec("mask", "threshold", (("image", "input"),), (("level", 0.3),))  # type: ignore[arg-type]
    assert by_hand.params == Params(level=0.3) and isinstance(by_hand.params, Params)


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    folder = tmp_path / "project" / "specs"  # need not exist: parse_spec does no IO
    spec = parse_spec(VALID_SPEC, str(folder / "pipeline.toml"))
    assert spec.input.url == str((folder / "data" / "volume.ome.zarr").resolve())
    assert spec.cache_url == str((folder / "cache").resolve())
    assert dict(spec.outputs) == {
        "centroids": str((folder / "results" / "centroids.csv").resolve()),
        "counts": str((folder / "results" / "counts.csv").resolve()),
    }


def test_absolute_paths_and_urls_are_kept(tmp_path: Path) -> None:
    absolute = str((tmp_path / "elsewhere" / "image.ome.zarr").resolve())
    text = compose(set_key("input", "url", f'"{absolute}"'), set_key("cache", "url", '"s3://bucket/cache"'))(VALID_SPEC)
    spec = parse_spec(text, str(tmp_path / "specs" / "pipeline.toml"))
    assert spec.input.url == absolute
    assert spec.cache_url == "s3://bucket/cache"


def test_op_value_checks_run_when_the_spec_loads() -> None:
    """count.block has the right type but a bad length: reported with its line, not at run time."""
    text = VALID_SPEC.replace("block = [64, 256, 256]", "block = [64, 256]")
    assert text != VALID_SPEC
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    (problem,) = info.value.problems
    assert problem.field == "nodes.counts.block"
    assert problem.line == text.splitlines().index("block = [64, 256]") + 1
    assert problem.message == "expected three positive integers (z, y, x), got [64, 256]"


def test_outputs_must_be_local_files() -> None:
    text = VALID_SPEC.replace('counts = "results/counts.csv"', 'counts = "s3://bucket/counts.csv"')
    assert text != VALID_SPEC
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    (problem,) = info.value.problems
    assert problem.field == "outputs.counts" and "expected a local file path" in problem.message


def test_a_spec_file_of_random_bytes_is_one_problem_naming_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[input]\nurl = "x"\n' + bytes([0x8D, 0xFF, 0x00, 0x13]) * 20)
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    (problem,) = exc.value.problems
    assert problem.line == 3 and "byte 18 (0x8d) is not UTF-8 text" in problem.message and problem.file == str(path)


def test_masks_and_labels_default_to_a_fast_codec_and_a_given_one_wins() -> None:
    """A mask or labels node without a compressor is stored with blosc lz4; images keep zstd; a node's
    own compressor is kept whatever its type."""
    text = VALID_SPEC.replace('compressor = { id = "zstd", level = 5 }\n', "")
    text += '\n[nodes.smooth]\nop = "gaussian"\nimage = "input"\nsigma = 2.0\n'
    spec = parse_spec(text, FILE)
    nodes = {n.name: n for n in spec.nodes}
    assert dict(nodes["mask"].store.compressor) == {"id": "blosc", "cname": "lz4", "clevel": 5}
    assert dict(nodes["cells"].store.compressor) == {"id": "blosc", "cname": "lz4", "clevel": 5}
    assert dict(nodes["smooth"].store.compressor) == dict(StoreSpec().compressor) == {
        "id": "blosc", "cname": "zstd", "clevel": 3
    }  # fmt: skip
    assert dict(parse_spec(VALID_SPEC, FILE).nodes[1].store.compressor) == {"id": "zstd", "level": 5}
