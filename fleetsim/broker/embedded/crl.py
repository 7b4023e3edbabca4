"""The CRL in force in one embedded broker, the TLS context built from it, and the CRL's lifecycle.

A new crl.pem is judged (fleetsim.pki.crl_policy) before it replaces the one in force: one whose number goes
back, that another CA signed, whose signature does not verify, or that is expired, is refused and the last good
one kept; each refused file version is warned about once, not at every poll. The CRL is renewed at half its
validity through the PKI (``Pki.renew_crl``, which then tells every registered broker), a loud warning comes
before it expires if that keeps failing, and an expired CRL at start is renewed before the broker listens.
Blocking (file reads, signing): the broker runs ``renew`` in an executor.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time
from collections import Counter
from typing import Any

from cryptography import x509

from fleetsim.broker.embedded import tls_context
from fleetsim.broker.handle import BrokerOptions
from fleetsim.errors import BrokerError, FleetsimError
from fleetsim.pki import crl_policy
from fleetsim.pki.crl_policy import CrlFacts
from fleetsim.pki.layout import Layout, crl_floor

log = logging.getLogger("fleetsim.broker.embedded")

RENEW_RETRY_S = 60.0  # after a failed renewal attempt


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CrlKeeper:
    """Judges and loads CRLs for one broker; ``context`` always serves the CRL in force (``facts``)."""

    def __init__(self, layout: Layout, options: BrokerOptions, issuing_ca: x509.Certificate, *,
                 renew: bool = True) -> None:
        self.layout = layout
        self.options = options
        self.issuing_ca = issuing_ca
        self.renew_allowed = renew
        self.facts: CrlFacts | None = None
        self.context: ssl.SSLContext | None = None
        self._judged: tls_context.FileStamp | None = None  # the file version last judged, accepted or not
        self._warned: set[tuple[str, int | None]] = set()  # (what, CRL number): lifecycle warnings given
        self._refused_versions: set[tls_context.FileStamp | None] = set()  # file versions warned about
        self._next_renewal = 0.0
        self.reloads = 0
        self.renewals = 0
        self.refused: Counter[str] = Counter()
        self.last_refusal: str | None = None
        self.reload_ms: float | None = None

    @property
    def revoked(self) -> frozenset[int]:
        return self.facts.serials if self.facts is not None else frozenset()

    # --- loading ---------------------------------------------------------------------------------------------
    def load_initial(self) -> None:
        """The CRL to start with; an expired or stale one is renewed first when allowed. Raises BrokerError."""
        problem = self._try(floor=crl_floor(self.layout))
        if problem is not None and self.renew_allowed:
            log.warning("%s: %s; renewing it before listening", self.layout.crl, problem)
            self.renew(force=True)
            problem = self._try(floor=crl_floor(self.layout))
        if problem is not None:
            raise BrokerError(f"{self.layout.crl}: {problem}",
                              f"rewrite it with `fleetsim pki crl {self.layout.root}`")

    def _try(self, *, floor: int = 0) -> str | None:
        """Judge the file as it is now and load it if it may replace the CRL in force; the refusal, or None."""
        stamp = tls_context.FileStamp.of(self.layout.crl)
        try:
            pem = self.layout.crl.read_bytes()
        except OSError as exc:
            return f"cannot read it ({exc.strerror or exc})"
        self._judged = stamp
        if self.facts is not None and pem == self.facts.pem:
            return None  # unchanged
        try:
            facts = crl_policy.read_crl(pem, self.issuing_ca)
        except ValueError as exc:
            return f"not a CRL ({exc})"
        problem = crl_policy.refusal(facts, self.facts, _now(), floor=floor)
        if problem is not None:
            return problem
        started = time.perf_counter()
        self.context = tls_context.build_context(self.layout, self.options, facts.pem)
        self.facts = facts
        self.reloads += 1
        self.reload_ms = round((time.perf_counter() - started) * 1000, 3)
        return None

    def reload(self) -> bool:
        """Re-read crl.pem; True when a new CRL is now in force. A refused one is counted and, once per file
        version, warned about; the CRL in force stays."""
        before = self.facts
        problem = self._try()
        if problem is None:
            return self.facts is not before
        self.refused[problem] += 1
        self.last_refusal = problem
        if self._judged not in self._refused_versions:
            if len(self._refused_versions) > 1000:
                self._refused_versions.clear()
            self._refused_versions.add(self._judged)
            log.warning("%s refused: %s; keeping %s", self.layout.crl, problem,
                        before.label if before else "no CRL")
        return False

    def changed_on_disk(self) -> bool:
        stamp = tls_context.FileStamp.of(self.layout.crl)
        return stamp is not None and stamp != self._judged

    # --- lifecycle -------------------------------------------------------------------------------------------
    def renewal_wanted(self) -> bool:
        """Whether to renew now (half the validity gone, and no failed attempt in the last minute); warns once
        per CRL when expiry comes close or has come."""
        facts, now = self.facts, _now()
        if facts is None:
            return False
        if crl_policy.expired(facts, now):
            self._warn_once("expired", facts, "%s expired at %s: OpenSSL now refuses EVERY device (as 'certificate "
                            "expired'); run `fleetsim pki crl %s`", logging.ERROR)
        elif crl_policy.expires_soon(facts, now):
            self._warn_once("soon", facts, "%s expires at %s and has not been renewed; run `fleetsim pki crl %s`",
                            logging.WARNING)
        if not self.renew_allowed or not crl_policy.renewal_due(facts, now):
            return False
        return time.monotonic() >= self._next_renewal

    def _warn_once(self, what: str, facts: CrlFacts, message: str, level: int) -> None:
        if (what, facts.number) not in self._warned:
            self._warned.add((what, facts.number))
            log.log(level, message, facts.label, facts.next_update, self.layout.root)

    def renew(self, *, force: bool = False) -> None:
        """Blocking: have the PKI rewrite the CRL if due (``force``: in any case), from its inventory; it then
        notifies the registered brokers, this one too."""
        from fleetsim.pki import Pki

        self._next_renewal = time.monotonic() + RENEW_RETRY_S
        try:
            pki = Pki.open(self.layout.root)
            if force:
                pki.write_crl()
                self.renewals += 1
            elif pki.renew_crl():
                self.renewals += 1
        except (FleetsimError, OSError) as exc:
            label = self.facts.label if self.facts else "the CRL"
            if ("renew-failed", self.facts.number if self.facts else None) not in self._warned:
                self._warned.add(("renew-failed", self.facts.number if self.facts else None))
                log.warning("cannot renew %s here (%s); it expires at %s", label, exc,
                            self.facts.next_update if self.facts else "?")

    def stats(self) -> dict[str, Any]:
        facts = self.facts
        return {
            "number": facts.number if facts else None,
            "this_update": facts.this_update.isoformat() if facts else None,
            "next_update": facts.next_update.isoformat() if facts and facts.next_update else None,
            "expires_in_s": round((facts.next_update - _now()).total_seconds(), 1)
            if facts and facts.next_update else None,
            "reloads": self.reloads,
            "renewals": self.renewals,
            "errors": sum(self.refused.values()),
            "refused": dict(self.refused),
            "last_refusal": self.last_refusal,
            "last_reload_ms": self.reload_ms,
            "revoked_serials": len(self.revoked),
        }
