"""The PKI's inventory: who was issued what, what was revoked. Pure data, (de)serialised as JSON."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any

from cryptography import x509


class Fault(StrEnum):
    """Identities broken on purpose, for fault injection. Each is labelled in the inventory."""

    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    UNKNOWN_CA = "unknown-ca"
    WRONG_KEY = "wrong-key"
    CN_MISMATCH = "cn-mismatch"
    WEAK_KEY = "weak-key"


REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}


CRL_BACKDATE = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Device:
    """One device identity. ``id`` is its MQTT client id; ``serial`` is its current certificate's."""

    id: str
    serial: int
    model: str
    lot: str
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    fault: Fault | None = None
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None
    generation: int = 1  # bumped by each re-enrolment
    role: str = "device"  # or "monitor": reads every topic, publishes none (fleetsim.pki.certs.ROLES)

    @property
    def status(self) -> str:
        return "revoked" if self.revoked_at else "valid"

    def to_json(self) -> dict[str, Any]:
        # Spelled out rather than dataclasses.asdict (which deep-copies): this runs once per device per save.
        return {
            "id": self.id, "serial": format(self.serial, "x"), "model": self.model, "lot": self.lot,
            "key_type": self.key_type, "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(), "fault": self.fault.value if self.fault else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revocation_reason": self.revocation_reason, "generation": self.generation, "status": self.status,
            "role": self.role,
        }

    @cached_property
    def json_text(self) -> str:
        """:meth:`to_json` as compact JSON, kept: every save writes every device, almost all unchanged. Bulk
        issuance fills it while workers are still signing, so saving at the end only joins strings."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def batch(cls, ids: Iterable[str], serials: Iterable[int], **common: Any) -> list[Device]:
        """Devices alike but for id and serial, as bulk issuance makes them, their ``json_text`` filled from one
        encoding of what they share: ~0.1 us a device instead of ~7 us, a good part of writing its files."""
        devices = [cls(id=i, serial=s, **common) for i, s in zip(ids, serials, strict=True)]
        if devices:
            shared = {k: v for k, v in devices[0].to_json().items() if k not in ("id", "serial")}
            rest = json.dumps(shared, separators=(",", ":"))[1:]  # never empty: '"model":...}'
            for d in devices:
                d.__dict__["json_text"] = f'{{"id":{json.dumps(d.id)},"serial":"{d.serial:x}",{rest}'
        return devices

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Device:
        d = {k: v for k, v in d.items() if k != "status"}
        d["serial"] = int(d["serial"], 16)
        for k in ("not_before", "not_after", "revoked_at"):
            d[k] = dt.datetime.fromisoformat(d[k]) if d.get(k) else None
        d["fault"] = Fault(d["fault"]) if d.get("fault") else None
        return cls(**d)


@dataclass(frozen=True)
class RevokedSerial:
    """A CRL entry. Kept apart from Device so a re-enrolled device's old serials stay revoked."""

    serial: int
    device_id: str
    when: dt.datetime
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"serial": format(self.serial, "x"), "device_id": self.device_id,
                "when": self.when.isoformat(), "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RevokedSerial:
        return cls(int(d["serial"], 16), d["device_id"], dt.datetime.fromisoformat(d["when"]), d["reason"])


@dataclass
class Inventory:
    """Everything the PKI remembers besides its key and certificate files."""

    org: str
    trust_domain: str
    crl_url: str | None
    crl_number: int = 0
    crl_this_update: dt.datetime | None = None
    devices: dict[str, Device] = field(default_factory=dict)
    revoked: list[RevokedSerial] = field(default_factory=list)

    def select(
        self, *, status: str | None = None, lot: str | None = None, model: str | None = None,
        fault: str | None = None, role: str | None = "device",
    ) -> list[Device]:
        """Identities matching every filter given; ``fault="none"`` selects healthy ones. Devices only unless
        ``role`` says otherwise (None: every role)."""
        out = []
        for d in self.devices.values():
            if role and d.role != role:
                continue
            if status and d.status != status:
                continue
            if lot and d.lot != lot:
                continue
            if model and d.model != model:
                continue
            if fault and (d.fault.value if d.fault else "none") != fault:
                continue
            out.append(d)
        return out

    def next_ids(self, prefix: str, count: int) -> list[str]:
        """``count`` fresh ids ``<prefix>-NNNNN`` after the highest already issued with that prefix."""
        start = 0
        head = f"{prefix}-"
        for did in self.devices:
            tail = did[len(head):]
            if did.startswith(head) and tail.isdigit():
                start = max(start, int(tail))
        width = max(5, len(str(start + count)))
        return [f"{prefix}-{n:0{width}d}" for n in range(start + 1, start + count + 1)]

    def revoke(self, device_id: str, when: dt.datetime, reason: str) -> Device:
        d = self.devices[device_id]
        if d.revoked_at is None:
            d = replace(d, revoked_at=when, revocation_reason=reason)
            self.devices[device_id] = d
            self.revoked.append(RevokedSerial(d.serial, device_id, when, reason))
        return d

    def next_crl_time(self, now: dt.datetime) -> dt.datetime:
        """thisUpdate for the next CRL: strictly later than the last (CRL readers must never see a tie) yet not in
        the future (OpenSSL rejects a CRL that is "not yet valid"). CRL times have whole seconds, so each CRL is
        backdated by CRL_BACKDATE: that leaves room for a burst of CRLs in one second. Past the room, the result
        is after ``now`` and the caller waits for it."""
        candidate = now - CRL_BACKDATE
        if self.crl_this_update and candidate <= self.crl_this_update:
            return self.crl_this_update + dt.timedelta(seconds=1)
        return candidate

    def _header(self) -> dict[str, Any]:
        return {
            "format": 1,
            "org": self.org,
            "trust_domain": self.trust_domain,
            "crl_url": self.crl_url,
            "crl_number": self.crl_number,
            "crl_this_update": self.crl_this_update.isoformat() if self.crl_this_update else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self._header(),
            "devices": [d.to_json() for d in self.devices.values()],
            "revoked": [r.to_json() for r in self.revoked],
        }

    def dumps(self) -> str:
        """Compact JSON of :meth:`to_json`, built from each device's kept ``json_text``."""
        head = json.dumps(self._header(), separators=(",", ":"))[:-1]  # an object that is never empty: drop "}"
        devices = ",".join(d.json_text for d in self.devices.values())
        revoked = json.dumps([r.to_json() for r in self.revoked], separators=(",", ":"))
        return f'{head},"devices":[{devices}],"revoked":{revoked}}}'

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Inventory:
        devices = [Device.from_json(x) for x in d["devices"]]
        return cls(
            org=d["org"],
            trust_domain=d["trust_domain"],
            crl_url=d.get("crl_url"),
            crl_number=d.get("crl_number", 0),
            crl_this_update=dt.datetime.fromisoformat(d["crl_this_update"]) if d.get("crl_this_update") else None,
            devices={x.id: x for x in devices},
            revoked=[RevokedSerial.from_json(x) for x in d.get("revoked", [])],
        )
