"""Counts in words: one rule for every count fleetsim prints, so no line says "1 workers" or "1 waves"."""

from __future__ import annotations


def plural(noun: str) -> str:
    """The English plural of the nouns fleetsim counts: class -> classes, identity -> identities, wave -> waves."""
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def count(n: int, noun: str, many: str | None = None) -> str:
    """``n`` with thousands separators and the noun in the form it takes: "1 worker", "2,000 devices".
    ``many``: the plural where the rule does not give it."""
    return f"{n:,} {noun if n == 1 else many or plural(noun)}"
