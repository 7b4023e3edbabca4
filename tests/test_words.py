"""Counts in words (fleetsim.words): every printed count takes the noun's right form."""

from __future__ import annotations

from fleetsim.report.summary_tables import revocation_rows
from fleetsim.words import count


def test_a_count_of_one_is_singular_and_others_plural() -> None:
    assert [count(1, "worker"), count(2, "worker"), count(0, "wave")] == ["1 worker", "2 workers", "0 waves"]
    assert [count(3, "class"), count(2, "broker process"), count(1_000, "ecdsa-p256 identity")] == [
        "3 classes", "2 broker processes", "1,000 ecdsa-p256 identities"]


def test_a_rehearsal_with_one_wave_says_one_wave() -> None:
    rows = dict(revocation_rows({"reenrolled": 4, "waves": 1, "reenroll_ms": 12.0, "connected_before": 1}))
    assert rows["re-enrolled (waves, PKI time)"].startswith("4 in 1 wave,")
    assert rows["fleet back to its level before"].endswith("(1 device)")
