"""Timed scenario events (restart the broker, revoke a batch, re-enrol it), each step timed.

The revocation rehearsal reads its answer from here: how long revoking took, how long publishing the CRL took,
how long the broker took to pick it up, how long re-enrolment took.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetsim.broker.handle import BrokerHandle
from fleetsim.pki import Pki
from fleetsim.scenario import Event


@dataclass
class EventLog:
    """What happened when, for events.json."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: Event, elapsed: float, **steps: Any) -> dict[str, Any]:
        record = {"at": event.at, "action": event.action, "fired_at_s": round(elapsed, 3), **steps}
        self.records.append(record)
        return record


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


class EventRunner:
    """Fires each event once its time has come; remembers the last revoked batch for a re-enrol event."""

    def __init__(self, events: Sequence[Event], pki: Pki, broker: BrokerHandle, fleet: dict[str, str],
                 seed: int) -> None:
        self.pending = sorted(events, key=lambda e: e.at)
        self.pki = pki
        self.broker = broker
        self.fleet = fleet  # healthy device id -> lot, the devices an event may act on
        self.rng = random.Random(seed)
        self.last_revoked: list[str] = []
        self.log = EventLog()

    def fire_due(self, elapsed: float, state: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        fired = []
        while self.pending and self.pending[0].at <= elapsed:
            event = self.pending.pop(0)
            fired.append(self.fire(event, elapsed))
        return fired

    def fire(self, event: Event, elapsed: float) -> dict[str, Any]:
        action = getattr(self, "_" + event.action.replace("-", "_"))
        steps: dict[str, Any] = action(event)
        return self.log.add(event, elapsed, **steps)

    def _restart_broker(self, event: Event) -> dict[str, Any]:
        t = time.perf_counter()
        self.broker.restart()
        return {"restart_ms": _ms(t)}

    def _reload_crl(self, event: Event) -> dict[str, Any]:
        t = time.perf_counter()
        self.broker.reload_crl()
        return {"reload_ms": _ms(t)}

    def _targets(self, event: Event) -> list[str]:
        ids = sorted(self.fleet)
        if event.lot is not None:
            return [i for i in ids if self.fleet[i] == event.lot]
        assert event.fraction is not None  # the scenario allows a revoke with exactly one of lot or fraction
        return self.rng.sample(ids, round(len(ids) * event.fraction))

    def _revoke(self, event: Event) -> dict[str, Any]:
        targets = self._targets(event)
        if not targets:
            return {"devices": 0}
        t = time.perf_counter()
        # crl.pem only: the reload below is the broker's step, timed apart (see fleetsim.rehearsal.drive)
        self.pki.revoke(device_ids=targets, reason="keyCompromise", notify_brokers=False)
        revoke_ms = _ms(t)
        t = time.perf_counter()
        self.broker.reload_crl()
        reload_ms = _ms(t)
        self.pki.notify_brokers()  # any other broker registered on the PKI (its own: a no-op by now)
        self.last_revoked = targets
        return {"devices": len(targets), "revoke_and_crl_ms": revoke_ms, "broker_reload_ms": reload_ms,
                "crl_number": self.pki.inventory.crl_number, "device_ids": targets}

    def _reenroll(self, event: Event) -> dict[str, Any]:
        targets = self.last_revoked  # the scenario puts a revoke before every reenroll
        if not targets:
            return {"devices": 0}
        t = time.perf_counter()
        self.pki.reenroll(targets)
        self.last_revoked = []
        return {"devices": len(targets), "reenroll_ms": _ms(t), "device_ids": targets}
