"""From a scenario's fleet to device identities in a PKI: plan the slots (pure), then find or issue them.

A PKI is reused across runs: a run takes the identities it needs from the pools below and issues only what is
missing, so the second run of a scenario starts at once.

    healthy devices    <lot>-<model>-NNNNN            valid, no fault, the group's key type
    faulty identities  fault-<kind>-<key type>-NNNNN  issued broken on purpose (see fleetsim.pki.Fault)
    revoked devices    revoked-<key type>-NNNNN       issued, then revoked before the run
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleetsim.pki import Device, Fault, Pki
from fleetsim.scenario import FAULTS, Scenario, assign_faults

REVOKED = "revoked"


@dataclass(frozen=True)
class Slot:
    """One device of the fleet before it has an identity."""

    group: int
    model: str
    site: str
    lot: str
    key_type: str
    fault: str | None  # a Fault value, "revoked", or None


@dataclass(frozen=True)
class Provisioned:
    """A slot with the identity it got."""

    slot: Slot
    device_id: str


def plan(scenario: Scenario) -> list[Slot]:
    """Every device of the fleet, in group order, with faults spread reproducibly by the scenario's seed."""
    slots = [
        Slot(i, g.model, g.site, g.lot, g.key_type, None)
        for i, g in enumerate(scenario.fleet)
        for _ in range(g.count)
    ]
    bounds = np.cumsum([0, *(g.count for g in scenario.fleet)])
    by_group = [[str(n) for n in range(a, b)] for a, b in itertools.pairwise(bounds)]
    for name, members in assign_faults(scenario, by_group).items():
        for n in members:
            s = slots[int(n)]
            slots[int(n)] = Slot(s.group, s.model, s.site, s.lot, s.key_type, FAULTS[name] or REVOKED)
    return slots


def pool_of(slot: Slot) -> tuple[str, str, str | None]:
    """(id prefix, key type, fault) of the PKI pool a slot draws from."""
    if slot.fault is None:
        return f"{slot.lot}-{slot.model}", slot.key_type, None
    if slot.fault == REVOKED:
        return f"revoked-{slot.key_type}", slot.key_type, None
    if slot.fault == Fault.WEAK_KEY.value:
        return "fault-weak-key", "rsa-1024", slot.fault
    return f"fault-{slot.fault}-{slot.key_type}", slot.key_type, slot.fault


def _available(pki: Pki, prefix: str, key_type: str, fault: str | None, revoked: bool) -> list[Device]:
    head = f"{prefix}-"
    want = "revoked" if revoked else "valid"
    return [
        d for d in pki.inventory.devices.values()
        if d.id.startswith(head) and d.id[len(head):].isdigit() and d.key_type == key_type
        and (d.fault.value if d.fault else None) == fault and d.status == want
    ]


def provision(pki: Pki, slots: Sequence[Slot], *, workers: int | None = None) -> list[Provisioned]:
    """Give every slot an identity, issuing (and revoking) only what the PKI does not have yet."""
    by_pool: dict[tuple[str, str, str | None, bool], list[int]] = defaultdict(list)
    for i, s in enumerate(slots):
        prefix, key_type, fault = pool_of(s)
        by_pool[(prefix, key_type, fault, s.fault == REVOKED)].append(i)
    ids: dict[int, str] = {}
    for (prefix, key_type, fault, revoked), members in by_pool.items():
        have = _available(pki, prefix, key_type, fault, revoked)
        missing = len(members) - len(have)
        if missing > 0:
            first = slots[members[0]]
            new = pki.issue(missing, prefix=prefix, model=first.model, lot=first.lot,
                            key_type=key_type if fault != Fault.WEAK_KEY.value else "ecdsa-p256",
                            fault=fault, workers=workers)
            if revoked:
                pki.revoke(device_ids=[d.id for d in new], reason="keyCompromise")
            have += new
        for i, d in zip(members, sorted(have, key=lambda d: d.id), strict=False):
            ids[i] = d.id
    return [Provisioned(s, ids[i]) for i, s in enumerate(slots)]
