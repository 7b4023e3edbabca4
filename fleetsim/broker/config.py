"""Broker settings from a TOML file (see brokers/embedded.toml), checked like scenario files are."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from fleetsim.errors import BrokerError

TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str, "host": str, "port": int, "tls_version": str, "session_tickets": bool, "drop_revoked": bool,
    "password_file": str, "plain_port": int, "stats_port": int,
}


def load(path: Path) -> dict[str, Any]:
    """The settings in ``path``, by the names `fleetsim broker run` uses for its options."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BrokerError(f"no broker config {path}", "copy brokers/embedded.toml and edit it") from None
    except tomllib.TOMLDecodeError as exc:
        raise BrokerError(f"{path}: invalid TOML: {exc}") from None
    for key, value in data.items():
        if key not in TYPES:
            near = difflib.get_close_matches(key, TYPES, n=1)
            raise BrokerError(f"{path}: unknown key {key!r}", f"did you mean {near[0]!r}?" if near else
                              f"known keys: {', '.join(TYPES)}")
        if not isinstance(value, TYPES[key]) or (TYPES[key] is int and isinstance(value, bool)):
            raise BrokerError(f"{path}: {key} must be a {TYPES[key].__name__}, got {value!r}")  # type: ignore[union-attr]
    if "password_file" in data:
        data["password_file"] = (path.parent / data["password_file"]).resolve()
    return data
