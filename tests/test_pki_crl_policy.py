"""CRL lifecycle decisions as pure logic (fleetsim.pki.crl_policy), on CRLs the project's PKI signs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleetsim.pki import Pki, crl_policy, keys
from fleetsim.pki.certs import Issuer, Revocation, crl

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def facts(pki: Pki, number: int, *, issuer: str = "issuing", serials: tuple[int, ...] = (),
          this_update: dt.datetime = NOW - dt.timedelta(hours=1), days: float = 7) -> crl_policy.CrlFacts:
    lay = pki.layout
    cert_path, key_path = (lay.rogue_ca, lay.rogue_key) if issuer == "rogue" else (lay.issuing_ca, lay.issuing_key)
    signer = Issuer(x509.load_pem_x509_certificate(cert_path.read_bytes()), keys.from_pem(key_path.read_bytes()))
    entries = [Revocation(s, this_update, x509.ReasonFlags.key_compromise) for s in serials]
    pem = crl(signer, entries, number=number, this_update=this_update,
              valid_for=dt.timedelta(days=days)).public_bytes(Encoding.PEM)
    return crl_policy.read_crl(pem, x509.load_pem_x509_certificate(lay.issuing_ca.read_bytes()))


def test_which_crl_may_replace_which(make_pki: Callable[..., Pki]) -> None:
    pki = make_pki()
    current = facts(pki, 5, serials=(7,))
    assert crl_policy.refusal(facts(pki, 6, serials=(7, 8)), current, NOW) is None
    assert crl_policy.refusal(current, current, NOW) is None  # the same file again
    assert "went back from #5 to #4" in (crl_policy.refusal(facts(pki, 4), current, NOW) or "")
    assert "same number" in (crl_policy.refusal(facts(pki, 5, serials=(9,)), current, NOW) or "")
    assert "not signed by the issuing CA" in (crl_policy.refusal(facts(pki, 9, issuer="rogue"), current, NOW) or "")
    assert "older than the PKI's latest, #8" in (crl_policy.refusal(facts(pki, 6), None, NOW, floor=8) or "")
    assert "expired" in (crl_policy.refusal(facts(pki, 6, this_update=NOW - dt.timedelta(days=8)), current, NOW)
                         or "")
    assert "not valid before" in (crl_policy.refusal(facts(pki, 6, this_update=NOW + dt.timedelta(minutes=5)),
                                                      current, NOW) or "")


def test_renewal_and_warnings(make_pki: Callable[..., Pki]) -> None:
    pki = make_pki()
    f = facts(pki, 2, this_update=NOW - dt.timedelta(days=3))  # 7 days: half at 3.5
    assert not crl_policy.renewal_due(f, NOW) and crl_policy.renewal_due(f, NOW + dt.timedelta(hours=13))
    assert not crl_policy.expires_soon(f, NOW + dt.timedelta(days=2)) and \
        crl_policy.expires_soon(f, NOW + dt.timedelta(days=3, hours=1))
    assert crl_policy.expired(f, NOW + dt.timedelta(days=4))


def test_pki_renews_only_when_due_and_numbers_past_a_crl_written_by_hand(make_pki: Callable[..., Pki]) -> None:
    pki = make_pki()
    assert not pki.renew_crl()
    n = pki.inventory.crl_number
    issuing = Issuer(x509.load_pem_x509_certificate(pki.layout.issuing_ca.read_bytes()),
                     keys.from_pem(pki.layout.issuing_key.read_bytes()))
    by_hand = crl(issuing, [], number=n + 10, this_update=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5),
                  valid_for=dt.timedelta(seconds=8))  # past half its validity
    pki.layout.crl.write_bytes(by_hand.public_bytes(Encoding.PEM))
    assert pki.renew_crl()
    assert pki.inventory.crl_number == n + 11  # past the hand-written one: a broker would refuse a reused number
