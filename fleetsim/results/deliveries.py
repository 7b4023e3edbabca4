"""Delivery accounting: which published message reached which subscriber, how fast, and what was lost, duplicated
or reordered on the way, computed from rows alone. Pure: no I/O, so every figure can be recomputed from the
Parquet files by hand.

Inputs (columns as lists, like every row table of a run):

* publish rows (PUBLISH_COLUMNS), one per message a device handed to its connection: the device, its ``seq``,
  ``kind``, ``qos`` and ``topic``, ``published_at`` (ns, wall clock) and whether the broker ``acked`` it (PUBACK /
  PUBCOMP; for QoS 0: written to the socket). A QoS 1/2 publish not acknowledged was in flight when its
  connection ended (a disconnect, a broker restart, the end of the run): nothing else ends a publish;
* delivery rows (DELIVERY_COLUMNS), one per copy a subscriber received, **in the order that subscriber received
  them**: subscriber, device, seq, kind, qos, published_at, received_at (ns), ``duplicate`` (the DUP flag of the
  PUBLISH it came in: a redelivery);
* the subscriptions (:class:`Subscription`): each subscriber's filters, QoS, session and the spans its
  subscription held.

Who is owed what. An *audience* is one subscriber with its plain filters, or one shared subscription
(``$share/<name>/<filter>``: the group's members together, a message owed once to the group). A publish is owed
to an audience whose filter matches its topic if it was published while the subscription held (from its SUBACK
to the end of its connection for a clean session; from the first SUBACK on for a persistent one), or if the
audience received it anyway. Each (audience, device) pair is counted at the *effective QoS*, the lower of the
publish's and the subscription's:

* every QoS: owed, delivered (at least one copy), duplicated (copies past the first), out of order (a first copy
  whose seq is below one the same subscriber already got on that device's topic: MQTT orders messages per topic,
  so a device's telemetry and alarms may legitimately overtake each other);
* QoS 1 and 2: lost (owed, not delivered, though the broker acknowledged the publish) and unconfirmed (owed, not
  delivered, and the broker never acknowledged it: in flight at a disconnect, or at the end of the run);
* QoS 0: owed (sent) and delivered only: nothing acknowledges it end to end, so nothing is called lost;
* a QoS 2 duplicate is a broker fault (exactly once was promised), unless the broker is known to downgrade QoS 2.

And one figure no broker semantics can hide (:attr:`Accounting.alarms`): every alarm published, against every
audience whose filter matches it, received or not, whenever it was published and whatever its QoS.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetsim.engine.rowlog import PUBLISHED, RECEIVED
from fleetsim.results.shape import Distribution
from fleetsim.results.summary import distribution
from fleetsim.topics import covers, shared

PUBLISH_COLUMNS = (*PUBLISHED.names, "acked")  # the workers' log of publishes, each marked acknowledged or not
DELIVERY_COLUMNS = tuple(RECEIVED.names)  # the subscribers' log, as written
PAIR_COLUMNS = ("audience", "device", "qos", "owed", "delivered", "duplicated", "out_of_order", "lost",
                "unconfirmed")
COUNTS = PAIR_COLUMNS[3:]
ALARM = "alarm"
NS_PER_MS = 1e6


@dataclass(frozen=True)
class Subscription:
    """One subscriber instance as the broker saw it.

    ``windows``: the (SUBACK, end of connection) spans of its connections, ns, end None while it lasted to the
    end of the run. A persistent session (``clean_session`` False) is owed everything from its first SUBACK on:
    the broker keeps its subscription and queues for it while it is away.
    """

    subscriber: str
    filters: tuple[str, ...]
    qos: int
    clean_session: bool = True
    windows: tuple[tuple[int, int | None], ...] = ()

    def owed_spans(self) -> list[tuple[int, float]]:
        """The spans in which a publish is owed to it, sorted, end inf for open-ended."""
        spans = sorted((start, float("inf") if end is None else end) for start, end in self.windows)
        if not self.clean_session and spans:
            return [(spans[0][0], float("inf"))]
        return spans


@dataclass
class Audience:
    """Whom a message is owed to once: a subscriber's plain filters, or one shared subscription's members."""

    name: str
    filters: tuple[str, ...]
    qos: int
    members: tuple[str, ...]
    starts: list[int] = field(default_factory=list)  # owed spans, merged and sorted
    ends: list[float] = field(default_factory=list)

    def matches(self, topic: str) -> bool:
        return any(covers(f, topic) for f in self.filters)

    def owed_at(self, published_at: int) -> bool:
        i = bisect.bisect_right(self.starts, published_at) - 1
        return i >= 0 and published_at < self.ends[i]


def audiences(subscriptions: Sequence[Subscription]) -> list[Audience]:
    """Each subscriber's plain filters as one audience named after it; each shared subscription as one audience
    named ``$share/<name>/<filter>``, at the lowest QoS among its members (a message goes to one member, and is
    owed at a level every member subscribed at)."""
    out: dict[str, Audience] = {}
    spans: dict[str, list[tuple[int, float]]] = {}
    for sub in subscriptions:
        plain = tuple(f for f in sub.filters if shared(f) is None)
        if plain:
            out[sub.subscriber] = Audience(sub.subscriber, plain, sub.qos, (sub.subscriber,))
            spans[sub.subscriber] = sub.owed_spans()
        for f in sub.filters:
            share = shared(f)
            if share is None:
                continue
            a = out.setdefault(f, Audience(f, (share[1],), sub.qos, ()))
            a.qos, a.members = min(a.qos, sub.qos), (*a.members, sub.subscriber)
            spans.setdefault(f, []).extend(sub.owed_spans())
    for name, a in out.items():
        a.starts, a.ends = _merged(spans[name])
    return list(out.values())


def _merged(spans: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    starts: list[int] = []
    ends: list[float] = []
    for start, end in sorted(spans):
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


@dataclass
class Accounting:
    """What the rows say about delivery; :meth:`figures` is its JSON-ready form."""

    pairs: dict[str, list[Any]]  # PAIR_COLUMNS, one row per (audience, device, effective QoS)
    latency_ms: dict[str, Distribution]  # "<kind>/qos<N>" -> distribution of first copies
    alarms: dict[str, Any]  # end to end: every alarm x every audience whose filter matches it
    publishes: Counter[str]  # by kind
    first_copies: Counter[str]  # by kind: deliveries counted once per audience
    faults: dict[str, int]  # what a correct broker never does, and rows that fit no publish or subscription
    redelivered: int = 0  # copies that came with the DUP flag set

    def totals(self) -> dict[str, dict[str, int]]:
        """The pairs' counts summed per effective QoS ("qos0": owed and delivered only)."""
        out: dict[str, dict[str, int]] = {}
        for i, qos in enumerate(self.pairs["qos"]):
            row = out.setdefault(f"qos{qos}", dict.fromkeys(COUNTS, 0))
            for name in COUNTS:
                row[name] += self.pairs[name][i]
        for name, row in out.items():
            if name == "qos0":
                del row["lost"], row["unconfirmed"]
        return dict(sorted(out.items()))

    def fan_out(self) -> dict[str, float | None]:
        """Deliveries (first copies, one per audience) per publish, by kind; None where nothing was published."""
        return {kind: round(self.first_copies[kind] / n, 3) if n else None for kind, n in sorted(self.publishes.items())}

    def figures(self) -> dict[str, Any]:
        return {"totals": self.totals(), "latency_ms": self.latency_ms, "alarms": self.alarms,
                "fan_out": self.fan_out(), "faults": self.faults, "redelivered": self.redelivered}


def account(publishes: Mapping[str, Sequence[Any]], deliveries: Mapping[str, Sequence[Any]],
            subscriptions: Sequence[Subscription], *, downgrades_qos2: bool = False) -> Accounting:
    """The delivery accounting of one run (see the module's docstring for every definition)."""
    groups = audiences(subscriptions)
    index = {(d, s): i for i, (d, s) in enumerate(zip(publishes["device"], publishes["seq"], strict=True))}
    topics: dict[str, list[int]] = {}  # topic -> indices of the audiences it matches

    def matching(topic: str) -> list[int]:
        found = topics.get(topic)
        if found is None:
            found = topics[topic] = [k for k, a in enumerate(groups) if a.matches(topic)]
        return found

    member_of: dict[str, set[int]] = {}
    for k, a in enumerate(groups):
        for m in a.members:
            member_of.setdefault(m, set()).add(k)
    pairs: dict[tuple[int, str, int], Counter[str]] = {}
    copies: Counter[tuple[int, int]] = Counter()  # (audience, publish) -> copies received
    first_at: dict[tuple[int, int], int] = {}  # (audience, publish) -> received_at of the first copy
    faults = {"qos2_duplicates": 0, "unsubscribed": 0, "unknown_publish": 0}
    latency: dict[str, list[float]] = {}
    highest: dict[tuple[str, str, str], int] = {}  # (subscriber, device, kind) -> highest seq received
    redelivered = 0
    pq, ptopic, pdev = publishes["qos"], publishes["topic"], publishes["device"]
    for sub, dev, seq, kind, pub_at, rx_at, dup in zip(
            *(deliveries[c] for c in ("subscriber", "device", "seq", "kind", "published_at", "received_at",
                                      "duplicate")), strict=True):
        redelivered += bool(dup)
        p = index.get((dev, seq))
        if p is None:
            faults["unknown_publish"] += 1
            continue
        mine = member_of.get(sub, set())
        found = next((k for k in matching(ptopic[p]) if k in mine), None)
        if found is None:
            faults["unsubscribed"] += 1  # the broker sent it a message no filter of its asked for
            continue
        k = found
        qos = min(pq[p], groups[k].qos)
        counts = pairs.setdefault((k, dev, qos), Counter())
        copies[(k, p)] += 1
        if copies[(k, p)] > 1:
            counts["duplicated"] += 1
            if qos == 2 and not downgrades_qos2:
                faults["qos2_duplicates"] += 1
            continue
        first_at[(k, p)] = rx_at
        latency.setdefault(f"{kind}/qos{qos}", []).append((rx_at - pub_at) / NS_PER_MS)
        stream = (sub, dev, kind)
        if seq < highest.get(stream, -1):
            counts["out_of_order"] += 1
        else:
            highest[stream] = seq
    alarms = Counter[str]()
    alarm_ms: list[float] = []
    published: Counter[str] = Counter()
    first_copies: Counter[str] = Counter()
    for p, (dev, kind, qos, topic, pub_at, acked) in enumerate(zip(
            pdev, publishes["kind"], pq, ptopic, publishes["published_at"], publishes["acked"], strict=True)):
        published[kind] += 1
        for k in matching(topic):
            received = (k, p) in first_at
            if kind == ALARM:
                alarms["expected"] += 1
                if received:
                    alarms["received"] += 1
                    alarm_ms.append((first_at[(k, p)] - pub_at) / NS_PER_MS)
            if not received and not groups[k].owed_at(pub_at):
                continue
            eff = min(qos, groups[k].qos)
            counts = pairs.setdefault((k, dev, eff), Counter())
            counts["owed"] += 1
            if received:
                counts["delivered"] += 1
                first_copies[kind] += 1
            elif eff > 0:
                counts["lost" if acked else "unconfirmed"] += 1
    return Accounting(_columns(pairs, groups), {k: distribution(v) for k, v in sorted(latency.items())},
                      {"expected": alarms["expected"], "received": alarms["received"],
                       "missed": alarms["expected"] - alarms["received"], "latency_ms": distribution(alarm_ms)},
                      published, first_copies, faults, redelivered)


def _columns(pairs: Mapping[tuple[int, str, int], Counter[str]], groups: Sequence[Audience]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {c: [] for c in PAIR_COLUMNS}
    for (k, dev, qos), counts in sorted(pairs.items(), key=lambda kv: (groups[kv[0][0]].name, *kv[0][1:])):
        out["audience"].append(groups[k].name)
        out["device"].append(dev)
        out["qos"].append(qos)
        for name in COUNTS:
            out[name].append(counts[name])
    return out
