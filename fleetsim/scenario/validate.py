"""Scenario files and dicts checked against the schema: every problem is one ``ScenarioError`` naming the file
(or ``Scenario(...)`` for one built in Python), the field (``fleet[0].count``; array tables count from 0), the
problem and the fix, so a run never fails half-way on a typo. Pure apart from :func:`read_text` reading the
file.

Plain data in, plain data out: the rules know the scenario's parts (:mod:`fleetsim.scenario.parts`), never the
:class:`~fleetsim.scenario.schema.Scenario` built from what they return, so a Scenario can be checked by them
as it is made (``Scenario.__post_init__``) without the two modules importing each other.

    fields = validated(tomllib.loads(text), "ward.toml")  # what Scenario(**fields) is made of
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetsim.errors import ScenarioError
from fleetsim.names import NAME_HINT, TLS_VERSIONS, is_name, split_hostport
from fleetsim.pki import KeyType
from fleetsim.scenario.parts import (
    ACTIONS,
    API_SOURCE,
    AUTHS,
    FAULTS,
    MAX_DEVICES,
    MAX_DURATION,
    MAX_PAYLOAD,
    MAX_SUBSCRIBERS,
    MAX_WORKERS,
    MQTT_VERSIONS,
    PATTERNS,
    STRATEGIES,
    TARGETS,
    Arrival,
    BrokerSpec,
    Churn,
    Event,
    FleetGroup,
    MqttSpec,
    Reconnect,
    Revocation,
    SubscriberGroup,
)
from fleetsim.telemetry import MODELS, topic
from fleetsim.topics import SHARE_PREFIX, overlap, shared_problem, valid_filter

# ---------------------------------------------------------------- loading


def read_text(path: str | Path) -> str:
    """A scenario file's text, or one ``ScenarioError`` saying why it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{p}: no such scenario file", _missing_fix(p)) from None
    except IsADirectoryError:
        raise ScenarioError(f"{p}: is a directory, not a scenario file", "give a .toml file") from None
    except PermissionError:
        raise ScenarioError(
            f"{p}: not readable (permission denied)", "check the file's permissions"
        ) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{p}: not UTF-8 text ({exc.reason})", "save the file as UTF-8") from None
    return text


def toml_data(text: str, source: str) -> dict[str, Any]:
    """Scenario TOML text as plain data, or one ``ScenarioError`` at its line and column in ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        where = f"{source}:{m.group(1)}:{m.group(2)}" if m else source
        problem = msg[: m.start()] if m else msg
        raise ScenarioError(
            f"{where}: invalid TOML: {problem}", "fix the syntax there (see https://toml.io)"
        ) from None
    return data


def _missing_fix(p: Path) -> str:
    if p.parent.is_dir():
        names = sorted(str(q) for q in p.parent.glob("*.toml"))
        close = difflib.get_close_matches(str(p), names, n=1)
        if close:
            return f"did you mean {close[0]}?"
        if names:
            return "scenarios here: " + ", ".join(names)
    return "check the path; the shipped scenarios are in scenarios/, e.g. scenarios/ward.toml"


@dataclass(frozen=True)
class _Where:
    """Where a value sits: the file and the table path, for error messages."""

    source: str
    path: str  # "" = top level

    @property
    def api(self) -> bool:
        """Built in Python (Scenario(...)), not read from a file: hints use the API's words."""
        return self.source.startswith(API_SOURCE)

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str, fix: str) -> ScenarioError:
        name = key if key.startswith("--") else self.field(key)
        return ScenarioError(f"{self.source}: {name}: {problem}", fix)

    def sub(self, path: str) -> _Where:
        return _Where(self.source, path)


def _table(where: _Where, data: Mapping[str, Any], key: str, allowed: Sequence[str]) -> dict[str, Any]:
    """The sub-table ``key`` (empty if absent), with its keys checked against ``allowed``."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        fix = f"pass {key}= as a dict or its dataclass" if where.api else f"write it as a [{key}] section"
        raise where.fail(key, f"must be a table, got {_show(value)}", fix)
    _check_keys(where.sub(key), value, allowed, f"[{key}]")
    return value


def _check_keys(where: _Where, data: Mapping[str, Any], allowed: Sequence[str], label: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            fix = f"did you mean '{close[0]}'?" if close else "allowed keys: " + ", ".join(allowed)
            raise ScenarioError(f"{where.source}: unknown key '{key}' in {label}", fix)


def _show(value: Any) -> str:
    kind = {bool: "boolean", str: "string", int: "integer", float: "number", list: "array", dict: "table"}
    name = kind.get(type(value), type(value).__name__)
    text = json.dumps(value) if isinstance(value, bool | str) else repr(value)
    if isinstance(value, dict | list):
        return f"an {name}" if name[0] in "aeiou" else f"a {name}"
    return text if isinstance(value, int | float) and not isinstance(value, bool) else f"{text} ({name})"


def _check_int(where: _Where, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problem = "must be a positive integer" if low == 1 else f"must be an integer from {low} to {high}"
        if low == 1 and isinstance(value, int) and not isinstance(value, bool) and value > high:
            problem = f"must be at most {high}"
        raise where.fail(key, f"{problem}, got {_show(value)}", f"set {where.field(key)} to {low}..{high}")
    return value


def _check_number(
    where: _Where, key: str, value: Any, low: float, high: float, low_open: bool = False
) -> float:
    ok_type = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok_type or value > high or value < low or (low_open and value == low):
        bound = f"more than {low:g}" if low_open else f"at least {low:g}"
        raise where.fail(
            key,
            f"must be a number {bound} and at most {high:g}, got {_show(value)}",
            f"set {where.field(key)} within those bounds",
        )
    return float(value)


def _int(where: _Where, t: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    return _check_int(where, key, t.get(key, default), low, high)


def _num(
    where: _Where,
    t: Mapping[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    low_open: bool = False,
) -> float:
    return _check_number(where, key, t.get(key, default), low, high, low_open)


def _bool(where: _Where, t: Mapping[str, Any], key: str, default: bool) -> bool:
    value = t.get(key, default)
    if not isinstance(value, bool):
        raise where.fail(
            key, f"must be true or false, got {_show(value)}", f"write {key} = true or {key} = false"
        )
    return value


def _str(where: _Where, t: Mapping[str, Any], key: str, default: str, choices: Sequence[str] = ()) -> str:
    value = t.get(key, default)
    if not isinstance(value, str):
        raise where.fail(key, f"must be a string, got {_show(value)}", f'quote it: {key} = "..."')
    if choices and value not in choices:
        raise where.fail(key, f"unknown value {value!r}", _choose(value, choices))
    return value


def _name(where: _Where, t: Mapping[str, Any], key: str, default: str) -> str:
    value = _str(where, t, key, default)
    if not is_name(value):
        raise where.fail(key, f"{value!r} is not a valid name", NAME_HINT)
    return value


def _choose(value: str, choices: Sequence[str]) -> str:
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower(), list(lower), n=1)
    hint = f"did you mean '{lower[close[0]]}'? " if close else ""
    return f"{hint}(choose one of: {', '.join(choices)})"


_TOP = ("name", "description", "seed", "duration", "connect_timeout", "workers", "revocation", "source_addresses",
        "broker", "mqtt", "arrival", "churn", "reconnect", "fleet", "faults", "events", "subscribers")  # fmt: skip


def validated(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The Scenario's fields from plain data, each checked and normalised (tuples, floats, sub-tables built)."""
    top = _Where(source, "")
    _check_keys(top, data, _TOP, "[top level]")
    duration = _num(top, data, "duration", 60.0, 0.0, MAX_DURATION, low_open=True)
    broker = _broker(top, data)
    fleet = _fleet(top, data)
    mqtt = _mqtt(top, data, broker)
    return {
        "name": _str(top, data, "name", Path(source).stem or "scenario"),
        "description": _str(top, data, "description", ""),
        "seed": _int(top, data, "seed", 1, 0, 2**63 - 1),
        "duration": duration,
        "connect_timeout": _num(top, data, "connect_timeout", 10.0, 0.0, 300.0, low_open=True),
        "workers": _int(top, data, "workers", 0, 0, MAX_WORKERS),
        "broker": broker,
        "mqtt": mqtt,
        "arrival": _arrival(top, data),
        "churn": _churn(top, data),
        "reconnect": _reconnect(top, data),
        "fleet": fleet,
        "faults": _faults(top, data),
        "events": _events(top, data, duration, fleet),
        "revocation": _revocation(top, data, duration, fleet, broker),
        "source_addresses": _sources(top, data, broker),
        "subscribers": _subscribers(top, data, broker, fleet),
    }


def _broker(top: _Where, data: Mapping[str, Any]) -> BrokerSpec:
    keys = ("target", "tls_version", "session_resumption", "auth", "allow_remote", "isolate", "processes")
    t = _table(top, data, "broker", keys)
    w = top.sub("broker")
    spec = BrokerSpec(
        target=_str(w, t, "target", "embedded"),
        tls_version=_str(w, t, "tls_version", "any", TLS_VERSIONS),
        session_resumption=_bool(w, t, "session_resumption", False),
        auth=_str(w, t, "auth", "mtls", AUTHS),
        allow_remote=_bool(w, t, "allow_remote", False),
        isolate=_bool(w, t, "isolate", False),
        processes=_int(w, t, "processes", 1, 1, MAX_BROKERS),
    )
    if spec.target not in TARGETS:
        for part in spec.target.split(","):
            _check_target(w, part.strip(), spec.allow_remote)
        if spec.processes > 1:
            raise w.fail("processes", f"applies only to brokers fleetsim starts, not {spec.target}",
                         'list several targets instead: target = "10.0.0.1:8883,10.0.0.2:8883"')
        if spec.isolate:
            raise w.fail("isolate", f"applies only to a broker fleetsim starts, not {spec.target}",
                         'use target = "embedded" or "mosquitto", or drop isolate')
    return spec


MAX_BROKERS = 16


def _sources(top: _Where, data: Mapping[str, Any], broker: BrokerSpec) -> tuple[str, ...]:
    """Local addresses the devices connect from; each must be an IP address, loopback unless allow_remote."""
    value = data.get("source_addresses", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise top.fail("source_addresses", "must be a list of local IP addresses", 'e.g. ["10.0.0.5", "10.0.0.6"]')
    for v in value:
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise top.fail("source_addresses", f"{v!r} is not an IP address", "give addresses of this host") from None
        if not ip.is_loopback and not broker.allow_remote:
            raise top.fail("source_addresses", f"{v} is not a loopback address",
                           "set allow_remote = true in [broker] for a broker you operate elsewhere")
    return tuple(value)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_target(w: _Where, target: str, allow_remote: bool) -> None:
    address = split_hostport(target)
    if address is None:
        close = difflib.get_close_matches(target, TARGETS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise w.fail(
            "target",
            f"{target!r} is neither embedded, mosquitto nor HOST:PORT",
            f'{hint}write "embedded", "mosquitto" or e.g. "127.0.0.1:8883" ("[::1]:8883" for IPv6)',
        )
    if not allow_remote and not is_loopback(address[0]):
        raise w.fail(
            "target",
            f"{address[0]} is not a loopback address; fleetsim sends its load to this machine only by default",
            "use 127.0.0.1/localhost/::1, or set allow_remote = true in [broker] for a broker you operate",
        )


def _mqtt(top: _Where, data: Mapping[str, Any], broker: BrokerSpec) -> MqttSpec:
    t = _table(top, data, "mqtt", ("version", "keepalive", "clean_session", "qos_telemetry", "qos_alarm",
                                   "payload_bytes"))
    w = top.sub("mqtt")
    version = t.get("version", "3.1.1")
    if version == 5 and not isinstance(version, bool):
        version = "5"
    spec = MqttSpec(
        version=_str(w, {"version": version}, "version", "3.1.1", MQTT_VERSIONS),
        keepalive=_int(w, t, "keepalive", 60, 0, 65535),
        clean_session=_bool(w, t, "clean_session", True),
        qos_telemetry=_int(w, t, "qos_telemetry", 0, 0, 2),
        qos_alarm=_int(w, t, "qos_alarm", 1, 0, 2),
        payload_bytes=_int(w, t, "payload_bytes", 0, 0, MAX_PAYLOAD),
    )
    if spec.version == "5" and broker.kind == "embedded":
        raise w.fail(
            "version",
            "the embedded broker (amqtt) speaks MQTT 3.1.1 only",
            'set version = "3.1.1", or target = "mosquitto" in [broker]',
        )
    return spec


def _arrival(top: _Where, data: Mapping[str, Any]) -> Arrival:
    t = _table(top, data, "arrival", ("pattern", "rate"))
    w = top.sub("arrival")
    return Arrival(
        pattern=_str(w, t, "pattern", "linear", PATTERNS),
        rate=_num(w, t, "rate", 100.0, 0.0, 100_000.0, low_open=True),
    )


def _churn(top: _Where, data: Mapping[str, Any]) -> Churn:
    t = _table(top, data, "churn", ("rate", "downtime"))
    w = top.sub("churn")
    rate = _num(w, t, "rate", 0.0, 0.0, 1.0)
    down = t.get("downtime", [1.0, 5.0])
    if not isinstance(down, list) or len(down) != 2:
        raise w.fail(
            "downtime", f"must be [min, max] seconds, got {_show(down)}", "write e.g. downtime = [1.0, 5.0]"
        )
    low = _check_number(w, "downtime[0]", down[0], 0.0, MAX_DURATION)
    high = _check_number(w, "downtime[1]", down[1], 0.0, MAX_DURATION)
    if low > high:
        raise w.fail("downtime", f"min {low:g} is more than max {high:g}", "write [min, max] with min <= max")
    return Churn(rate=rate, downtime=(low, high))


def _reconnect(top: _Where, data: Mapping[str, Any]) -> Reconnect:
    t = _table(top, data, "reconnect", ("initial", "cap", "max_attempts"))
    w = top.sub("reconnect")
    initial = _num(w, t, "initial", 0.5, 0.0, 600.0, low_open=True)
    cap = _num(w, t, "cap", 30.0, 0.0, 3600.0, low_open=True)
    if cap < initial:
        raise w.fail("cap", f"{cap:g} is less than initial {initial:g}", "make cap at least initial")
    return Reconnect(initial=initial, cap=cap, max_attempts=_int(w, t, "max_attempts", 0, 0, 1_000_000))


def _fleet(top: _Where, data: Mapping[str, Any]) -> tuple[FleetGroup, ...]:
    groups = data.get("fleet")
    if not isinstance(groups, list) or not groups:
        raise top.fail(
            "fleet",
            "no device groups" if not groups else f"must be [[fleet]] tables, got {_show(groups)}",
            'pass fleet=[Group("pulse-oximeter", 100)]' if top.api
            else 'add at least one [[fleet]] table with model = "..." and count = N',
        )
    fleet = tuple(_group(top.sub(f"fleet[{i}]"), g) for i, g in enumerate(groups))
    total = sum(g.count for g in fleet)
    if total > MAX_DEVICES:
        raise top.fail("fleet", f"{total} devices in total, more than {MAX_DEVICES}", "lower the counts")
    return fleet


def _group(w: _Where, t: Any) -> FleetGroup:
    if not isinstance(t, dict):
        raise ScenarioError(f"{w.source}: {w.path}: must be a table, got {_show(t)}", "write it as [[fleet]]")
    _check_keys(w, t, ("model", "count", "lot", "key_type", "site"), w.path)
    if "model" not in t:
        raise w.fail("model", "missing", "add model = one of: " + ", ".join(MODELS))
    if "count" not in t:
        raise w.fail("count", "missing", "add count = N (devices in this group)")
    return FleetGroup(
        model=_str(w, t, "model", "", tuple(MODELS)),
        count=_int(w, t, "count", 1, 1, MAX_DEVICES),
        lot=_name(w, t, "lot", "lot-1"),
        key_type=_key_type(w, t),
        site=_name(w, t, "site", "site-1"),
    )


def _key_type(w: _Where, t: Mapping[str, Any]) -> str:
    text = _str(w, t, "key_type", KeyType.ECDSA_P256.value)
    try:
        kt = KeyType.parse(text)
    except ValueError as exc:
        raise w.fail("key_type", str(exc), "pick one of the listed key types") from None
    if kt is KeyType.RSA_1024:
        raise w.fail(
            "key_type", "rsa-1024 is only for the weak-key fault", "use [faults] weak_key = fraction"
        )
    if kt.post_quantum:  # until runs can choose the bundled TLS stack (issue 26)
        raise w.fail("key_type", f"{kt.value} needs the bundled TLS stack, which runs cannot use yet "
                     f"(Python's ssl, OpenSSL 3.0 here, has no ML-DSA)", "use a classical key type such as ecdsa-p256")
    return kt.value


def _faults(top: _Where, data: Mapping[str, Any]) -> dict[str, float]:
    t = _table(top, data, "faults", tuple(FAULTS))
    w = top.sub("faults")
    faults = {name: _num(w, t, name, 0.0, 0.0, 1.0) for name in FAULTS if name in t}
    total = sum(faults.values())
    if total > 1.0 + 1e-9:
        raise top.fail(
            "faults", f"fractions add up to {total:g}, more than 1", "lower them so they sum to <= 1"
        )
    return {k: v for k, v in faults.items() if v > 0}


def _events(
    top: _Where, data: Mapping[str, Any], duration: float, fleet: Sequence[FleetGroup]
) -> tuple[Event, ...]:
    raw = data.get("events", [])
    if not isinstance(raw, list):
        raise top.fail(
            "events", f"must be [[events]] tables, got {_show(raw)}", "write each event as [[events]]"
        )
    events = [_event(top.sub(f"events[{i}]"), e, duration, {g.lot for g in fleet}) for i, e in enumerate(raw)]
    order = sorted(range(len(events)), key=lambda i: events[i].at)
    revoked = False
    for i in order:
        if events[i].action == "revoke":
            revoked = True
        elif events[i].action == "reenroll" and not revoked:
            raise top.sub(f"events[{i}]").fail(
                "action", "reenroll has no earlier revoke event", "add a revoke event before it"
            )
    return tuple(events[i] for i in order)


def _event(w: _Where, t: Any, duration: float, lots: set[str]) -> Event:
    if not isinstance(t, dict):
        raise ScenarioError(
            f"{w.source}: {w.path}: must be a table, got {_show(t)}", "write it as [[events]]"
        )
    _check_keys(w, t, ("at", "action", "fraction", "lot"), w.path)
    for key in ("at", "action"):
        if key not in t:
            raise w.fail(key, "missing", f"add {key} = ... to every [[events]] table")
    at = _num(w, t, "at", 0.0, 0.0, MAX_DURATION)
    if at >= duration:
        raise w.fail(
            "at", f"{at:g} s is not within the duration ({duration:g} s)", "make it earlier or run longer"
        )
    action = _str(w, t, "action", "", ACTIONS)
    fraction = _num(w, t, "fraction", 0.0, 0.0, 1.0, low_open=True) if "fraction" in t else None
    lot = _name(w, t, "lot", "") if "lot" in t else None
    if action != "revoke" and (fraction is not None or lot is not None):
        raise w.fail("action", f"{action} takes no fraction or lot", 'remove them, or use action = "revoke"')
    if action == "revoke":
        if (fraction is None) == (lot is None):
            raise w.fail(
                "action", "revoke needs exactly one of fraction or lot", 'add fraction = 0.1 or lot = "x"'
            )
        if lot is not None and lot not in lots:
            raise w.fail("lot", f"no [[fleet]] group has lot {lot!r}", _choose(lot, sorted(lots)))
    return Event(at=at, action=action, fraction=fraction, lot=lot)




MAX_FILTERS = 16  # topic filters per [[subscribers]] group
_SUBSCRIBER_KEYS = ("name", "count", "topics", "qos", "clean_session")


def _subscribers(top: _Where, data: Mapping[str, Any], broker: BrokerSpec, fleet: Sequence[FleetGroup]
                 ) -> tuple[SubscriberGroup, ...]:
    """The [[subscribers]] groups: unique names, filters that are valid, do not overlap within a group (a message
    matching two would arrive twice and read as a duplicate) and can match something this fleet publishes."""
    raw = data.get("subscribers", [])
    if not isinstance(raw, list):
        raise top.fail("subscribers", f"must be [[subscribers]] tables, got {_show(raw)}",
                       "write each group as [[subscribers]]")
    groups = tuple(_subscriber(top.sub(f"subscribers[{i}]"), t, broker, fleet) for i, t in enumerate(raw))
    if groups and broker.processes > 1:
        raise top.sub("broker").fail("processes", f"{broker.processes} separate brokers forward no messages to one "
                                     "another: a subscriber of one would miss what devices send the others",
                                     "set processes = 1, or leave out [[subscribers]]")
    if groups and broker.auth != "mtls":
        raise top.sub("broker").fail("auth", f"{broker.auth!r}: subscribers connect with monitor certificates of "
                                     "their own, which need mTLS", 'set auth = "mtls", or leave out [[subscribers]]')
    seen: set[str] = set()
    for i, g in enumerate(groups):
        if g.name in seen:
            raise top.sub(f"subscribers[{i}]").fail("name", f"{g.name!r} names an earlier group too",
                                                    "give each [[subscribers]] group a name of its own")
        seen.add(g.name)
    total = sum(g.count for g in groups)
    if total > MAX_SUBSCRIBERS:
        raise top.fail("subscribers", f"{total} subscribers in total, more than {MAX_SUBSCRIBERS}", "lower the counts")
    return groups


def _subscriber(w: _Where, t: Any, broker: BrokerSpec, fleet: Sequence[FleetGroup]) -> SubscriberGroup:
    if not isinstance(t, dict):
        raise ScenarioError(f"{w.source}: {w.path}: must be a table, got {_show(t)}", "write it as [[subscribers]]")
    _check_keys(w, t, _SUBSCRIBER_KEYS, w.path)
    for key, fix in (("name", 'add name = "nurse-station"'), ("topics", 'add topics = ["fleet/+/+/+/alarm"]')):
        if key not in t:
            raise w.fail(key, "missing", fix)
    name = _name(w, t, "name", "")
    if len(name) > 60:
        raise w.fail("name", f"{len(name)} characters, more than 60", "shorten it: each instance's client id adds -NNN")
    return SubscriberGroup(name=name, topics=_filters(w, t.get("topics"), broker, fleet),
                           count=_int(w, t, "count", 1, 1, MAX_SUBSCRIBERS), qos=_int(w, t, "qos", 1, 0, 2),
                           clean_session=_bool(w, t, "clean_session", True))


def _filters(w: _Where, value: Any, broker: BrokerSpec, fleet: Sequence[FleetGroup]) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) for v in value):
        raise w.fail("topics", f"must be a non-empty list of topic filters, got {_show(value)}",
                     'e.g. topics = ["fleet/+/+/+/alarm"]')
    if len(value) > MAX_FILTERS:
        raise w.fail("topics", f"{len(value)} filters, more than {MAX_FILTERS}", "use wildcards (+, #) instead")
    plain = [_filter(w, f, broker, fleet) for f in value]
    for i, a in enumerate(plain):
        for j in range(i):
            if overlap(a, plain[j]):
                raise w.fail("topics", f"{value[j]!r} and {value[i]!r} overlap: a message matching both would "
                             "arrive twice and read as a duplicate", "keep one, or split them into two groups")
    return tuple(value)


def _filter(w: _Where, text: str, broker: BrokerSpec, fleet: Sequence[FleetGroup]) -> str:
    """The filter ``text`` subscribes to (a shared subscription's without its ``$share/<name>/``), checked."""
    plain = text
    if text.startswith(SHARE_PREFIX):
        problem = shared_problem(text)
        if problem is not None:
            raise w.fail("topics", problem, "e.g. $share/stations/fleet/+/+/+/alarm")
        if broker.kind == "embedded":
            raise w.fail("topics", f"{text!r}: the embedded broker (amqtt, MQTT 3.1.1) has no shared subscriptions",
                         'set target = "mosquitto" in [broker], or subscribe without $share/<name>/')
        plain = text[len(SHARE_PREFIX):].partition("/")[2]
    elif not valid_filter(text):
        raise w.fail("topics", f"{text!r} is not a valid topic filter",
                     "+ and # stand for whole levels, # only last: e.g. fleet/+/+/+/alarm or fleet/ward-a/#")
    published = {topic(g.site, g.model, "+", "+") for g in fleet}
    if not any(overlap(plain, p) for p in published):
        raise w.fail("topics", f"{text!r} matches nothing this fleet publishes",
                     "devices publish on " + topic("<site>", "<model>", "<device-id>", "telemetry|alarm"))
    return plain


def overridden(data: Mapping[str, Any], source: str, *, devices: int | None, duration: float | None,
               workers: int | None, broker: str | None, isolate: bool | None, brokers: int | None = None
               ) -> tuple[dict[str, Any], str]:
    """A scenario's data with the CLI's overrides, each checked, and the source errors then name (see
    Scenario.with_overrides); the whole is validated as it is built."""
    data = {**data, "broker": dict(data["broker"])}
    where = _Where(f"{source} (with overrides)", "")
    if devices is not None:
        _check_int(where, "--devices", devices, 1, MAX_DEVICES)
        data["fleet"] = _scale_fleet(data["fleet"], devices)
    if duration is not None:
        _check_number(where, "--duration", duration, 0.0, MAX_DURATION, low_open=True)
        data["duration"] = duration
        data["events"] = [e for e in data["events"] if e["at"] < duration]
    if workers is not None:
        _check_int(where, "--workers", workers, 0, MAX_WORKERS)
        data["workers"] = workers
    if broker is not None:
        data["broker"]["target"] = broker
    if isolate is not None:
        data["broker"]["isolate"] = isolate
    if brokers is not None:
        _check_int(where, "--brokers", brokers, 1, MAX_BROKERS)
        data["broker"]["processes"] = brokers
    return data, where.source


def _scale_fleet(groups: list[dict[str, Any]], devices: int) -> list[dict[str, Any]]:
    """Scale counts to sum to ``devices`` by largest remainder; groups that get none are dropped."""
    total = sum(g["count"] for g in groups)
    exact = [g["count"] * devices / total for g in groups]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(groups)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: devices - sum(counts)]:
        counts[i] += 1
    return [{**g, "count": c} for g, c in zip(groups, counts, strict=True) if c > 0]


_REVOCATION_KEYS = ("lot", "model", "devices", "fraction", "reason", "steady", "steady_timeout", "strategy", "hook",
                    "crl_copy_to", "reenroll_after", "reenroll_rate", "crl_prefill")


def _revocation(top: _Where, data: Mapping[str, Any], duration: float, fleet: Sequence[FleetGroup],
                broker: BrokerSpec) -> Revocation | None:
    """The [revocation] section of a rehearsal; None when there is none."""
    if "revocation" not in data or data["revocation"] is None:
        return None
    t = _table(top, data, "revocation", _REVOCATION_KEYS)
    w = top.sub("revocation")
    targets = [k for k in ("lot", "model", "devices", "fraction") if k in t]
    if len(targets) != 1:
        raise w.fail("lot", f"needs exactly one target, got {', '.join(targets) or 'none'}",
                     'give one of lot = "...", model = "...", devices = ["id", ...] or fraction = 0.1')
    from fleetsim.pki import REASONS  # the PKI's revocation reasons

    r = Revocation(
        lot=_name(w, t, "lot", "") if "lot" in t else None,
        model=_str(w, t, "model", "", tuple(MODELS)) if "model" in t else None,
        devices=_ids(w, t),
        fraction=_num(w, t, "fraction", 0.1, 0.0, 1.0, low_open=True) if "fraction" in t else None,
        reason=_str(w, t, "reason", "keyCompromise", tuple(REASONS)),
        steady=_steady(w, t, duration),
        steady_timeout=_num(w, t, "steady_timeout", 60.0, 0.0, MAX_DURATION, low_open=True),
        strategy=_strategy(w, t, broker),
        hook=_str(w, t, "hook", ""),
        crl_copy_to=_str(w, t, "crl_copy_to", ""),
        reenroll_after=None if t.get("reenroll_after", 5.0) is False
        else _num(w, t, "reenroll_after", 5.0, 0.0, MAX_DURATION),
        reenroll_rate=_num(w, t, "reenroll_rate", 0.0, 0.0, 100_000.0),
        crl_prefill=_int(w, t, "crl_prefill", 0, 0, 1_000_000),
    )
    if r.lot is not None and r.lot not in {g.lot for g in fleet}:
        raise w.fail("lot", f"no [[fleet]] group has lot {r.lot!r}", _choose(r.lot, sorted({g.lot for g in fleet})))
    if r.model is not None and r.model not in {g.model for g in fleet}:
        raise w.fail("model", f"no [[fleet]] group has model {r.model!r}",
                     _choose(r.model, sorted({g.model for g in fleet})))
    if broker.kind == "external" and r.strategy in ("", "hook") and not (r.hook or r.crl_copy_to):
        raise w.fail("hook", "an external broker needs a hook command or crl_copy_to (or strategy = \"none\")",
                     'e.g. crl_copy_to = "/etc/mosquitto/crl.pem" and hook = "systemctl reload mosquitto"')
    return r


def _ids(w: _Where, t: Mapping[str, Any]) -> tuple[str, ...]:
    if "devices" not in t:
        return ()
    ids = t["devices"]
    if not isinstance(ids, list) or not ids or not all(is_name(i) for i in ids):
        raise w.fail("devices", "must be a non-empty list of device ids", 'e.g. devices = ["hr-2026-heart-rate-monitor-00001"]')
    return tuple(ids)


def _steady(w: _Where, t: Mapping[str, Any], duration: float) -> str | float:
    value = t.get("steady", "connected")
    if value == "connected":
        return value
    at = _check_number(w, "steady", value, 0.0, MAX_DURATION)
    if at >= duration:
        raise w.fail("steady", f"{at:g} s is not within the duration ({duration:g} s)", "make it earlier or run longer")
    return at


def _strategy(w: _Where, t: Mapping[str, Any], broker: BrokerSpec) -> str:
    """The strategy asked for ("" = the broker's default, chosen at run time, so --broker may change)."""
    allowed = STRATEGIES[broker.kind]
    value = _str(w, t, "strategy", "")
    if value and value not in allowed:
        raise w.fail("strategy", f"the {broker.kind} broker cannot do {value!r}", _choose(value, allowed))
    return value
