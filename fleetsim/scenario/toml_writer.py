"""Writing a scenario back as TOML, for the results directory: parse(dump(s.to_dict())) == s. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _tables(value: Any) -> bool:
    """An array of tables ([[key]]), as opposed to an array of values."""
    return isinstance(value, list) and any(isinstance(v, dict) for v in value)


def dump(data: Mapping[str, Any]) -> str:
    """Minimal TOML writer for the scenario's shape: scalars, arrays, tables and arrays of tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and not _tables(v)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif _tables(value):
            for item in value:
                lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"
