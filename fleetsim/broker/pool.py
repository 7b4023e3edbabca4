"""Several brokers behind one BrokerHandle: a pool fleetsim starts on consecutive ports (``[broker] processes = N``,
``--brokers N``), or an external cluster's nodes. The fleet is dealt across ``targets``; counters and CPU are
summed over the members and kept per member, so a run's broker figures cover the whole pool.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Sequence
from typing import Any

from fleetsim.broker.handle import BrokerHandle, BrokerOptions
from fleetsim.broker.totals import ADDITIVE
from fleetsim.errors import BrokerError

PORT_TRIES = 50


class BrokerPool:
    """BrokerHandle over ``members``; the first member's address names the pool."""

    def __init__(self, members: Sequence[BrokerHandle]) -> None:
        self.members = list(members)
        first = self.members[0]
        self.kind, self.host, self.port = first.kind, first.host, first.port

    @property
    def plain_port(self) -> int | None:
        return self.members[0].plain_port

    @property
    def targets(self) -> list[tuple[str, int]]:
        return [(m.host, m.port) for m in self.members]

    def plain_targets(self) -> list[tuple[str, int]]:
        return [(m.host, m.plain_port or m.port) for m in self.members]

    def reload_crl(self) -> None:
        for m in self.members:
            m.reload_crl()

    def restart(self) -> None:
        for m in self.members:
            m.restart()

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def disconnect(self, usernames: Sequence[str]) -> float:
        """Cut these clients on every member that can (Mosquitto's dynamic security); the slowest's seconds."""
        return max(m.disconnect(usernames) for m in self.members)  # type: ignore[attr-defined]

    @property
    def extras(self) -> Any:
        return getattr(self.members[0], "extras", None)

    def cpu_seconds(self) -> float | None:
        values = [m.cpu_seconds() for m in self.members]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    def stats(self) -> dict[str, Any]:
        return pooled([m.stats() for m in self.members])

    def __enter__(self) -> BrokerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pooled(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The members' counters summed, each member's snapshot under ``members`` and its processes under
    ``processes`` (pid, CPU, accepted). Pure."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = {k: v for k, v in parts[0].items() if k not in ADDITIVE}
    for key in ADDITIVE:
        values = [p[key] for p in parts if key in p]
        if not values:
            continue
        if isinstance(values[0], dict):
            merged: dict[str, Any] = {}
            for v in values:
                for k, n in v.items():
                    merged[k] = merged.get(k, 0) + n
            out[key] = merged
        else:
            out[key] = sum(values)
    out["members"] = [{k: v for k, v in p.items() if not isinstance(v, list)} for p in parts]
    out["processes"] = [proc for p in parts for proc in p.get("processes", [{k: p.get(k) for k in
                                                                              ("pid", "cpu_seconds", "accepted")}])]
    return out


def consecutive_ports(host: str, n: int) -> int:
    """A first port with the next ``n - 1`` free as well (checked by binding; a race is the caller's to retry)."""
    for _ in range(PORT_TRIES):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = int(probe.getsockname()[1])
        if base + n > 65535:
            continue
        held = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise BrokerError(f"no {n} consecutive free ports on {host}", "stop what holds them, or use fewer brokers")


def start_pool(n: int, options: BrokerOptions, start_one: Callable[[BrokerOptions, int], BrokerHandle]
               ) -> BrokerHandle:
    """``n`` brokers on consecutive ports (a plain listener each, too, when asked for); one handle for all."""
    if n <= 1:
        return start_one(options, 0)
    width = 2 if options.plain_port is not None else 1
    base = options.port or consecutive_ports(options.host, n * width)
    members: list[BrokerHandle] = []
    try:
        for i in range(n):
            port = base + i * width
            members.append(start_one(dataclasses.replace(options, port=port,
                                                         plain_port=port + 1 if width == 2 else None), i))
    except BaseException:
        for m in members:
            m.stop()
        raise
    return BrokerPool(members)
