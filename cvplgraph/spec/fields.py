"""Where spec fields stand in the TOML text, and the collector of problems found while parsing.

``tomllib`` reports no positions, so a small line scanner maps every dotted
field path (tables, keys, keys of inline tables) to its line; every problem
then names the file, the line and the field.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cvplgraph.errors import Problem

# --- locating fields in the TOML text -------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r'^\s*("[^"]*"|\'[^\']*\'|[A-Za-z0-9_.\-]+)\s*=')
_INLINE_KEY = re.compile(r'[{,]\s*("[^"]*"|[A-Za-z0-9_\-]+)\s*=')


def _dotted(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


def locate_fields(text: str) -> dict[str, int]:
    """Map dotted field paths to 1-based line numbers (tables, keys and inline-table keys)."""
    out: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _HEADER.match(line):
            table = _dotted(m.group(1))
            out.setdefault(table, number)
            continue
        if m := _KEY.match(line):
            key = _dotted(m.group(1))
            path = f"{table}.{key}" if table else key
            out.setdefault(path, number)
            for sub in _INLINE_KEY.finditer(line[m.end() :]):
                out.setdefault(f"{path}.{_dotted(sub.group(1))}", number)
    return out


def line_of(locations: Mapping[str, int], path: str) -> int | None:
    """Line of a dotted field path, or of its nearest enclosing table."""
    while path:
        if path in locations:
            return locations[path]
        path = path.rpartition(".")[0]
    return None


# --- small parsers: each returns a normalised value or records a problem ----------------------


class Collector:
    def __init__(self, file: str, locations: dict[str, int]) -> None:
        self.file = file
        self.locations = locations
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, line_of(self.locations, path), path, message))

    def unknown_keys(self, table: Mapping[str, Any], allowed: list[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                maybe = f" (did you mean `{hint[0]}`?)" if hint else ""
                self.add(
                    f"{path}.{key}" if path else key,
                    f"unknown field `{key}`{maybe}; expected one of: {', '.join(allowed)}",
                )

    def typed(
        self,
        table: Mapping[str, Any],
        key: str,
        path: str,
        kind: type | tuple[type, ...],
        expected: str,
        default: Any = None,
        required: bool = False,
    ) -> Any:
        full = f"{path}.{key}"
        if key not in table:
            if required:
                self.add(full, f"missing; expected {expected}")
            return default
        value = table[key]
        if not isinstance(value, kind) or (
            isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        ):
            self.add(full, f"expected {expected}, got {value!r}")
            return default
        return value

    def int_list(self, value: Any, full: str, length: int, minimum: int) -> tuple[int, ...] | None:
        ok = (
            isinstance(value, list)
            and len(value) == length
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
        )
        if not ok:
            self.add(full, f"expected a list of {length} integers ≥ {minimum}, got {value!r}")
            return None
        return tuple(value)


def resolve_path(url: str, base: Path) -> str:
    """Local relative paths are relative to the spec's folder; URLs stay as they are."""
    if "://" in url or Path(url).is_absolute():
        return url
    return str((base / url).resolve())
