"""Content keys: canonical, order-independent hashes of what determines a value."""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_LENGTH = 24  # hex characters (96 bits)


def canonical(value: Any) -> Any:
    """A JSON-able form in which equal values look equal: tuples → lists, sorted dict
    keys, floats tagged so that 1 and 1.0 (different parameter types) never collide."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float):
        return {"float": repr(value)}  # repr round-trips exactly; nan/inf stay distinct
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    raise TypeError(f"cannot hash a {type(value).__name__} parameter")


def digest(obj: Any) -> str:
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def node_key(op: str, version: int, params: dict[str, Any], input_keys: dict[str, str]) -> str:
    """Key of a node: op name, op version, canonical parameters and input keys."""
    return digest({"op": op, "version": version, "params": params, "inputs": input_keys})
