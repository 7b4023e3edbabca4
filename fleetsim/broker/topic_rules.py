"""Which topics an identity may publish to and subscribe to: pure matching, no I/O.

A device gets the patterns fleetsim renders for Mosquitto's ACL, with ``%u`` / ``%c`` replaced by the name its
certificate carries (= its client id, cert_rules) and ``%m`` (fleetsim's own) by the model its certificate carries
(its OU): it may publish only on topics those patterns match, so a pulse oximeter cannot publish as an infusion
pump, and subscribe only to filters they cover entirely with ``%m`` read as ``+`` (whatever the model level says,
only the device itself can publish under its id), so ``#``, ``$SYS/#`` and another device's subtree are refused.
The site level is bound to nothing: the PKI does not know a device's site (a scenario's group names it). A monitor
may subscribe to everything and publish nothing. The matching itself (``covers``, ``valid_filter``) is
:mod:`fleetsim.topics`', the one matcher fleetsim has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleetsim.pki.certs import DEVICE, MONITOR
from fleetsim.topics import covers, valid_filter

# Devices publish on fleet/<site>/<model>/<device-id>/<kind>; each is confined to its own subtree, under its model.
DEVICE_TOPICS: tuple[str, ...] = ("fleet/+/%m/%u/#",)
_PLACEHOLDERS = ("%u", "%c")  # Mosquitto's: username, client id; both are the certificate's name here
MODEL = "%m"  # fleetsim's: the certificate's model (OU); Mosquitto's ACL has no such placeholder (mosquitto/config)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one connection may do with topics."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def may_publish(self, topic: str) -> bool:
        return any(covers(f, topic) for f in self.publish)

    def may_subscribe(self, topic_filter: str) -> bool:
        return any(covers(f, topic_filter) for f in self.subscribe)


EVERYTHING = Grant(("#",), ("#", "$SYS/#"))  # the baselines without certificates: no identity to confine to
NOTHING = Grant((), ())
MONITOR_GRANT = Grant((), ("#", "$SYS/#"))


def grant_for(role: str, name: str, device_topics: Iterable[str] = DEVICE_TOPICS, model: str | None = None) -> Grant:
    """The grant of a certificate's identity. A name that would act as a wildcard in a pattern gets nothing; a
    pattern naming the model publishes nothing for a certificate without one (or with a wildcard in it)."""
    if role == MONITOR:
        return MONITOR_GRANT
    if role != DEVICE or not _literal(name):
        return NOTHING
    patterns = tuple(device_topics)
    publish = tuple(fill(p, name, model) for p in patterns if MODEL not in p or _literal(model))
    return Grant(publish, tuple(fill(p, name, "+") for p in patterns))


def _literal(level: str | None) -> bool:
    return level is not None and level != "" and not any(c in level for c in "+#/")


def fill(pattern: str, name: str, model: str | None = None) -> str:
    """``pattern`` with the identity's name for %u / %c and, when given, ``model`` for %m."""
    for placeholder in _PLACEHOLDERS:
        pattern = pattern.replace(placeholder, name)
    return pattern.replace(MODEL, model) if model is not None else pattern


def check_patterns(patterns: Iterable[str]) -> str | None:
    """Why a device_topics setting is unusable (one line), or None."""
    patterns = list(patterns)
    if not patterns:
        return "device_topics is empty: devices could publish nowhere"
    for p in patterns:
        if not valid_filter(fill(p, "x", "x")):
            return f"device_topics pattern {p!r} is not a valid MQTT topic filter"
    return None
