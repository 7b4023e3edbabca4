"""Broker settings from a TOML file (see brokers/embedded.toml), checked like scenario files are."""

from __future__ import annotations

import difflib
import math
import tomllib
from pathlib import Path
from typing import Any

from fleetsim.broker.topic_rules import check_patterns
from fleetsim.errors import BrokerError

TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str, "host": str, "port": int, "tls_version": str, "session_tickets": bool, "drop_revoked": bool,
    "password_file": str, "plain_port": int, "stats_port": int, "max_packet_size": int,
    "connect_timeout_s": (int, float), "device_topics": list, "renew_crl": bool, "max_queued_bytes": int,
    "max_subscriptions": int, "max_inflight_messages": int, "max_queued_messages": int,
    "max_session_queue_bytes": int, "max_retained_per_client": int, "max_retained_bytes": int,
}

# Keys with a range, so a typo (max_packet_size = 64) is refused here rather than closing every connection.
RANGES: dict[str, tuple[float, float]] = {"max_packet_size": (1024, 268_435_460), "connect_timeout_s": (0.1, 3600),
                                          "max_queued_bytes": (65536, 1 << 34), "max_subscriptions": (1, 10_000_000),
                                          "max_inflight_messages": (1, 65_535), "max_queued_messages": (0, 10_000_000),
                                          "max_session_queue_bytes": (0, 1 << 34),
                                          "max_retained_per_client": (0, 1_000_000), "max_retained_bytes": (0, 1 << 34)}


def _type_name(kind: type | tuple[type, ...]) -> str:
    return "number" if isinstance(kind, tuple) else kind.__name__


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
        if not isinstance(value, TYPES[key]) or isinstance(value, bool) is not (TYPES[key] is bool):
            raise BrokerError(f"{path}: {key} must be a {_type_name(TYPES[key])}, got {value!r}")
        low, high = RANGES.get(key, (-math.inf, math.inf))
        if isinstance(value, int | float) and not low <= value <= high:
            raise BrokerError(f"{path}: {key} = {value!r} is out of range", f"use {low:g} to {high:g}")
    if "device_topics" in data:
        topics = data["device_topics"]
        problem = "device_topics must list strings" if not all(isinstance(t, str) for t in topics) else \
            check_patterns(topics)
        if problem is not None:
            raise BrokerError(f"{path}: {problem}", 'e.g. device_topics = ["fleet/+/%m/%u/#"]')
        data["device_topics"] = tuple(topics)
    if "password_file" in data:
        data["password_file"] = (path.parent / data["password_file"]).resolve()
    return data
