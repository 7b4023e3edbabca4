"""MQTT topic names and filters (MQTT 3.1.1 4.7, MQTT 5 4.8.2): matching, validity, overlap and shared
subscriptions. Pure: text in, answers out.

One matcher for the whole of fleetsim: the brokers' topic rules (:mod:`fleetsim.broker.topic_rules`) decide what
an identity may publish and subscribe to with it, a scenario's ``[[subscribers]]`` are checked with it, and the
delivery accounting (:mod:`fleetsim.results.deliveries`) decides with it which subscriber was owed which message.
It sits this low so that all of them can use it without importing one another.
"""

from __future__ import annotations

SHARE_PREFIX = "$share/"


def covers(allowed: str, requested: str) -> bool:
    """Whether every topic the filter ``requested`` can match is matched by the filter ``allowed`` (4.7).

    A topic name is a filter without wildcards, so this is also "does ``allowed`` match topic ``requested``".
    ``#`` matches its parent level too; filters starting with a wildcard never match ``$`` topics (4.7.2).
    """
    want, have = requested.split("/"), allowed.split("/")
    if want[0].startswith("$") and have[0] in ("+", "#"):
        return False
    for i, level in enumerate(have):
        if level == "#":
            return True
        if i >= len(want) or want[i] == "#":
            return False
        if level != "+" and level != want[i]:
            return False
    return len(want) == len(have)


def valid_filter(text: str) -> bool:
    """4.7.1: ``#`` only as the last level, ``+`` only as a whole level, and not empty."""
    levels = text.split("/")
    return bool(text) and all(
        ("#" not in lv or (lv == "#" and i == len(levels) - 1)) and ("+" not in lv or lv == "+")
        for i, lv in enumerate(levels))


def shared(text: str) -> tuple[str, str] | None:
    """(share name, filter) of a shared subscription ``$share/<name>/<filter>`` (MQTT 5 4.8.2), or None for any
    other filter. A malformed one (empty or wildcard share name, invalid filter) is None too: check it with
    :func:`shared_problem` first."""
    if not text.startswith(SHARE_PREFIX):
        return None
    name, _, topic_filter = text[len(SHARE_PREFIX):].partition("/")
    if not name or any(c in name for c in "+#") or not valid_filter(topic_filter):
        return None
    return name, topic_filter


def shared_problem(text: str) -> str | None:
    """Why ``text``, which starts with ``$share/``, is not a shared subscription (one line), or None."""
    name, slash, topic_filter = text[len(SHARE_PREFIX):].partition("/")
    if not name or not slash:
        return f"{text!r} has no share name: write $share/<name>/<filter>"
    if any(c in name for c in "+#"):
        return f"{text!r}: a share name may not hold + or #"
    if not valid_filter(topic_filter):
        return f"{text!r}: {topic_filter!r} is not a valid topic filter"
    return None


def overlap(a: str, b: str) -> bool:
    """Whether some topic matches both filters ``a`` and ``b``: a subscriber holding both may then get one message
    twice (one copy per matching subscription is allowed by MQTT 5 and done by some brokers), which would read as a
    duplicate."""
    x, y = a.split("/"), b.split("/")
    if (x[0] in ("+", "#") and y[0].startswith("$")) or (y[0] in ("+", "#") and x[0].startswith("$")):
        return False
    for i in range(max(len(x), len(y))):
        p = x[i] if i < len(x) else None
        q = y[i] if i < len(y) else None
        if p == "#" or q == "#":
            return True
        if p is None or q is None:  # one ended; the other matches its parent level only through a last "#"
            rest = x[i:] if q is None else y[i:]
            return rest == ["#"]
        if p != q and p != "+" and q != "+":
            return False
    return True
