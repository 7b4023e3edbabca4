"""From a scenario's fleet to device identities in a PKI: plan the slots and their ids (pure), then make the PKI
hold exactly those identities.

A device's id follows from the scenario alone, so the same scenario and seed name the same devices in any PKI:

    healthy devices    <lot>-<model>-NNNNN            valid, no fault, the group's key type
    faulty identities  fault-<kind>-<key type>-NNNNN  issued broken on purpose (see fleetsim.pki.Fault)
    revoked devices    revoked-<key type>-NNNNN       issued, then revoked before the run

NNNNN counts the scenario's devices of that name from 1, in fleet order. A PKI is reused across runs: a run
issues only the ids it does not hold yet, re-enrols a healthy device an earlier run revoked (a new key and
certificate, the same id), and refuses with one line an id the PKI holds with other properties.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fleetsim.errors import PkiError
from fleetsim.pki import Device, Fault, Pki
from fleetsim.pki.certs import MONITOR
from fleetsim.scenario import FAULTS, Scenario, assign_faults

REVOKED = "revoked"
WEAK_KEY_TYPE = "rsa-1024"
ANY = "*"  # a property wants() leaves open


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


def prefix_of(slot: Slot) -> str:
    """The id prefix of a slot: its lot and model, or the kind of identity it stands for."""
    if slot.fault is None:
        return f"{slot.lot}-{slot.model}"
    if slot.fault == REVOKED:
        return f"revoked-{slot.key_type}"
    if slot.fault == Fault.WEAK_KEY.value:
        return "fault-weak-key"
    return f"fault-{slot.fault}-{slot.key_type}"


def device_ids(slots: Sequence[Slot]) -> list[str]:
    """Each slot's id: its prefix and its number among the scenario's slots of that prefix (from 1)."""
    seen: Counter[str] = Counter()
    out = []
    for s in slots:
        prefix = prefix_of(s)
        seen[prefix] += 1
        out.append(f"{prefix}-{seen[prefix]:05d}")
    return out


def _key_type(slot: Slot) -> str:
    return WEAK_KEY_TYPE if slot.fault == Fault.WEAK_KEY.value else slot.key_type


def wants(slot: Slot) -> dict[str, str | None]:
    """What the PKI's device for this slot must be: one id is one physical device, so it keeps these whichever
    scenario names it. ``model`` is ``ANY`` for a faulty or revoked identity, whose id does not name a model."""
    return {"key type": _key_type(slot), "fault": None if slot.fault in (None, REVOKED) else slot.fault,
            "model": slot.model if slot.fault is None else ANY}


def _has(d: Device) -> dict[str, str | None]:
    return {"key type": d.key_type, "fault": d.fault.value if d.fault else None, "model": d.model}


def _mismatch(d: Device, slot: Slot) -> str | None:
    """What the PKI's device differs in from the slot that names it, if anything."""
    have = _has(d)
    for what, need in wants(slot).items():
        if need != ANY and have[what] != need:
            return f"{what} {have[what] or 'none'} where this scenario wants {need or 'none'}"
    return None


def _clash(pki: Pki, device_id: str, slot: Slot, why: str) -> PkiError:
    """The one line for an id the PKI holds as another device, and the two ways out."""
    elsewhere = "run it with --pki on another directory"
    fix = (f"one id is one device, with one key type and model: give [[fleet]] group {slot.group + 1} "
           f"(lot {slot.lot!r}) another lot in this scenario, or {elsewhere}" if slot.fault is None
           else f"{elsewhere} for this scenario")
    return PkiError(f"{pki.root} holds {device_id} with {why}", fix)


def provision(pki: Pki, slots: Sequence[Slot], *, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> list[Provisioned]:
    """Make the PKI hold every slot's identity: issue the missing, revoke the revoked slots', re-enrol the healthy
    ones an earlier run revoked. ``progress(done, total)`` hears about issuing."""
    ids = device_ids(slots)
    held = pki.inventory.devices
    missing: dict[tuple[str, str, str, str | None], list[str]] = {}
    to_revoke, to_reenroll = [], []
    for slot, device_id in zip(slots, ids, strict=True):
        d = held.get(device_id)
        if d is None:
            fault = None if slot.fault == REVOKED else slot.fault
            missing.setdefault((slot.model, slot.lot, _key_type(slot), fault), []).append(device_id)
            if slot.fault == REVOKED:
                to_revoke.append(device_id)
            continue
        if (why := _mismatch(d, slot)) is not None:
            raise _clash(pki, device_id, slot, why)
        if slot.fault == REVOKED and d.status != "revoked":
            to_revoke.append(device_id)
        elif slot.fault is None and d.status == "revoked":
            to_reenroll.append(device_id)
    _issue_missing(pki, missing, workers, progress)
    if to_revoke:
        pki.revoke(device_ids=to_revoke, reason="keyCompromise")
    if to_reenroll:
        pki.reenroll(to_reenroll, workers=workers)
    return [Provisioned(s, i) for s, i in zip(slots, ids, strict=True)]


def _issue_missing(pki: Pki, missing: dict[tuple[str, str, str, str | None], list[str]], workers: int | None,
                   progress: Callable[[int, int], None] | None) -> None:
    total = sum(len(v) for v in missing.values())
    done = 0
    for (model, lot, key_type, fault), group in missing.items():
        def tell(n: int, base: int = done) -> None:
            if progress is not None:
                progress(base + n, total)

        # the weak-key fault is issued as P-256 and weakened by its fault; see fleetsim.pki.Fault
        pki.issue(ids=group, model=model, lot=lot, key_type="ecdsa-p256" if key_type == WEAK_KEY_TYPE else key_type,
                  fault=fault, workers=workers, progress=tell)
        done += len(group)


def provision_monitors(pki: Pki, ids: Sequence[str]) -> None:
    """Make the PKI hold a valid monitor identity for each subscriber id (``Scenario.subscriber_ids``): issue
    the missing; refuse in one line an id the PKI holds as a device, or as a revoked monitor. Done
    before a broker starts: Mosquitto's ACL names the PKI's monitors when it is rendered."""
    held = pki.inventory.devices
    for monitor_id in ids:
        d = held.get(monitor_id)
        if d is None:
            pki.issue_monitor(monitor_id)
        elif d.role != MONITOR:
            raise PkiError(f"{pki.root} holds {monitor_id} as a device, not a subscriber's monitor identity",
                           "give the [[subscribers]] group another name, or run with --pki on another directory")
        elif d.status == "revoked":  # Pki.reenroll would give it back as a device (it does not keep the role)
            raise PkiError(f"{pki.root}: the subscriber identity {monitor_id} is revoked",
                           "give the [[subscribers]] group another name, or run with --pki on another directory")
