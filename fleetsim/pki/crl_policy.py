"""Decisions about a CRL's lifecycle: which one a broker may load, when one is renewed. Pure: bytes and times in.

Why a broker judges a CRL before loading it: OpenSSL takes any CRL the issuing CA signed, so an older one copied
over crl.pem (a lower CRL number, fewer entries) would quietly let revoked devices back in; and a CRL past its
nextUpdate makes OpenSSL refuse every device with a misleading "certificate expired" (Mosquitto issue 1826).
So a candidate must be signed by the issuing CA, carry a CRL number not below the one in force (nor below the
PKI's own count), be valid now, and a CRL is renewed at half its validity, well before it expires.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

NOT_YET_VALID_SLACK = dt.timedelta(seconds=5)  # clocks of the writer and the broker agree to a few seconds
WARN_BEFORE = dt.timedelta(days=1)  # how long before nextUpdate an unrenewed CRL is warned about


@dataclass(frozen=True)
class CrlFacts:
    """What decides about one CRL file version."""

    number: int | None
    this_update: dt.datetime
    next_update: dt.datetime | None
    issuer_ok: bool  # issued by the issuing CA (name) and its signature verifies with that CA's key
    serials: frozenset[int]
    pem: bytes

    @property
    def label(self) -> str:
        return f"CRL #{self.number}" if self.number is not None else "CRL without number"


def read_crl(pem: bytes, issuing_ca: x509.Certificate) -> CrlFacts:
    """The facts of a PEM CRL. Raises ValueError when it is not one."""
    crl = x509.load_pem_x509_crl(pem)
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    issuer_ok = crl.issuer == issuing_ca.subject and crl.is_signature_valid(issuing_ca.public_key())  # type: ignore[arg-type]
    return CrlFacts(number, crl.last_update_utc, crl.next_update_utc, issuer_ok,
                    frozenset(entry.serial_number for entry in crl), pem)


def judge(pem: bytes, issuing_ca: x509.Certificate, current: CrlFacts | None, now: dt.datetime, *,
          floor: int = 0) -> tuple[CrlFacts | None, str | None]:
    """``pem`` read and judged: (its facts, None) when it may replace ``current``, else (its facts or None, why
    not). A file that is no CRL at all (empty, cut short by an interrupted copy, garbage) is a refusal like any
    other, never an error: a broker keeps the CRL it enforces rather than going down with the file."""
    try:
        facts = read_crl(pem, issuing_ca)
    except ValueError as exc:
        return None, f"not a CRL ({exc})"
    return facts, refusal(facts, current, now, floor=floor)


def refusal(candidate: CrlFacts, current: CrlFacts | None, now: dt.datetime, *, floor: int = 0) -> str | None:
    """Why ``candidate`` must not replace ``current`` (one line), or None when it may. ``floor`` is the highest
    CRL number the PKI says it issued (its inventory): a file below it is an old copy."""
    if not candidate.issuer_ok:
        return "CRL not signed by the issuing CA"
    if candidate.number is None:
        return "CRL has no CRL number"
    if current is not None and current.number is not None:
        if candidate.number < current.number:
            return f"CRL number went back from #{current.number} to #{candidate.number}"
        if candidate.number == current.number and candidate.pem != current.pem:
            return f"another CRL with the same number #{candidate.number}"
    if candidate.number < floor:
        return f"{candidate.label} is older than the PKI's latest, #{floor}"
    if candidate.this_update > now + NOT_YET_VALID_SLACK:
        return f"{candidate.label} is not valid before {candidate.this_update:%Y-%m-%d %H:%M:%S} UTC"
    if expired(candidate, now):
        return f"{candidate.label} expired at {candidate.next_update:%Y-%m-%d %H:%M:%S} UTC"
    return None


def expired(facts: CrlFacts, now: dt.datetime) -> bool:
    return facts.next_update is not None and facts.next_update <= now


def renewal_due(facts: CrlFacts, now: dt.datetime) -> bool:
    """Renew at half its validity: a missed attempt still leaves the other half to try again."""
    if facts.next_update is None:
        return False
    return now >= facts.this_update + (facts.next_update - facts.this_update) / 2


def expires_soon(facts: CrlFacts, now: dt.datetime) -> bool:
    """Close enough to nextUpdate to warn loudly (a day, or the last quarter of a short validity)."""
    if facts.next_update is None:
        return False
    margin = min(WARN_BEFORE, (facts.next_update - facts.this_update) / 4)
    return now >= facts.next_update - margin
