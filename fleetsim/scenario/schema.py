"""What a scenario is: the fleet, the broker and how devices reach it, what goes wrong and when.

Every field has the default a TOML file gets when it leaves the key out, so a notebook builds one in a line::

    from fleetsim.scenario import Scenario, Group
    s = Scenario(fleet=[Group("pulse-oximeter", 500)], duration=30)

A Scenario is validated when it is made, by the same rules as a file (:mod:`fleetsim.scenario.validate`): a
mistake is one ``ScenarioError`` naming the field (``fleet[0].count``) and the fix. Sub-tables may be given as
their dataclasses or as plain dicts (``broker={"target": "mosquitto"}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fleetsim.names import split_hostport

MAX_DEVICES = 50_000
MAX_DURATION = 3600.0
MAX_WORKERS = 256
TARGETS = ("embedded", "mosquitto")
AUTHS = ("mtls", "tls", "password", "none")
MQTT_VERSIONS = ("3.1.1", "5")
PATTERNS = ("linear", "poisson", "burst")
ACTIONS = ("restart-broker", "revoke", "reenroll", "reload-crl")
# Scenario fault names -> the PKI's Fault value (None: a valid identity revoked before the run).
FAULTS: dict[str, str | None] = {
    "expired": "expired",
    "not_yet_valid": "not-yet-valid",
    "unknown_ca": "unknown-ca",
    "wrong_key": "wrong-key",
    "cn_mismatch": "cn-mismatch",
    "weak_key": "weak-key",
    "revoked": None,
}
API_SOURCE = "Scenario(...)"  # the source of a scenario built in Python: error hints use the API's words


@dataclass(frozen=True)
class FleetGroup:
    """Devices of one model, lot, key type and site (``Group`` for short)."""

    model: str
    count: int
    lot: str = "lot-1"
    key_type: str = "ecdsa-p256"
    site: str = "site-1"


@dataclass(frozen=True)
class BrokerSpec:
    """Which broker the fleet targets and how it authenticates devices."""

    target: str = "embedded"
    tls_version: str = "any"
    session_resumption: bool = False
    auth: str = "mtls"
    allow_remote: bool = False
    isolate: bool = False  # a core of its own for the broker fleetsim starts (see fleetsim.placement)
    processes: int = 1  # a pool of this many brokers fleetsim starts, on consecutive ports; the fleet dealt over

    @property
    def kind(self) -> str:
        """ "embedded", "mosquitto" or "external" (any HOST:PORT, or several, comma-separated)."""
        return self.target if self.target in TARGETS else "external"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each external broker (a cluster's nodes), [] for the ones fleetsim starts."""
        if self.kind != "external":
            return []
        return [a for a in (split_hostport(t.strip()) for t in self.target.split(",")) if a is not None]

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) of the (first) external broker, None for the ones fleetsim starts."""
        return self.addresses[0] if self.addresses else None


@dataclass(frozen=True)
class MqttSpec:
    version: str = "3.1.1"
    keepalive: int = 60
    clean_session: bool = True
    qos_telemetry: int = 0
    qos_alarm: int = 1


@dataclass(frozen=True)
class Arrival:
    pattern: str = "linear"
    rate: float = 100.0


@dataclass(frozen=True)
class Churn:
    """Per connected device, probability per second of dropping; 0 means no churn."""

    rate: float = 0.0
    downtime: tuple[float, float] = (1.0, 5.0)


@dataclass(frozen=True)
class Reconnect:
    """Exponential backoff with full jitter; max_attempts 0 = unlimited within the duration."""

    initial: float = 0.5
    cap: float = 30.0
    max_attempts: int = 0


@dataclass(frozen=True)
class Event:
    """A timed event; revoke takes fraction or lot, reenroll re-issues the previous revoke's devices."""

    at: float
    action: str
    fraction: float | None = None
    lot: str | None = None


STRATEGIES = {  # broker kind -> how fleetsim can make it enforce a new CRL (the first is the default)
    "embedded": ("reload", "poll"),
    "mosquitto": ("sighup", "restart", "kick", "none"),
    "external": ("hook", "none"),
}


@dataclass(frozen=True)
class Revocation:
    """A mass-revocation rehearsal (``fleetsim rehearse``): when, whom, how the broker enforces it, re-enrolment.

    Exactly one target: ``lot``, ``model``, ``devices`` (ids) or a seeded random ``fraction`` of the healthy fleet.
    ``steady``: "connected" (every healthy device connected, waiting at most ``steady_timeout`` s) or a time (s).
    ``reenroll_after``: seconds after enforcement (None: the devices stay revoked); ``reenroll_rate``: devices per
    second in waves (0: all at once). ``crl_prefill``: earlier revocations already on the CRL (CRL size).
    """

    lot: str | None = None
    model: str | None = None
    devices: tuple[str, ...] = ()
    fraction: float | None = None
    reason: str = "keyCompromise"
    steady: str | float = "connected"
    steady_timeout: float = 60.0
    strategy: str = ""  # "": the broker's default (STRATEGIES)
    hook: str = ""  # external broker: shell command run once the CRL is written
    crl_copy_to: str = ""  # external broker: where the CRL is written for it
    reenroll_after: float | None = 5.0
    reenroll_rate: float = 0.0
    crl_prefill: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    description: str = ""
    seed: int = 1
    duration: float = 60.0
    connect_timeout: float = 10.0
    workers: int = 0  # 0: one per core, less the cores a broker on this machine takes
    broker: BrokerSpec = field(default_factory=lambda: BrokerSpec())
    mqtt: MqttSpec = field(default_factory=lambda: MqttSpec())
    arrival: Arrival = field(default_factory=lambda: Arrival())
    churn: Churn = field(default_factory=lambda: Churn())
    reconnect: Reconnect = field(default_factory=lambda: Reconnect())
    fleet: tuple[FleetGroup, ...] = ()
    faults: dict[str, float] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    revocation: Revocation | None = None
    source_addresses: tuple[str, ...] = ()  # local addresses the devices connect from (default: chosen as needed)
    source: str = field(default=API_SOURCE, compare=False)  # where it came from, for error messages

    def __post_init__(self) -> None:
        from fleetsim.scenario.validate import validated  # validate builds the sub-tables defined here

        for name, value in validated(self.to_dict(), self.source).items():
            object.__setattr__(self, name, value)

    @property
    def devices(self) -> int:
        return sum(g.count for g in self.fleet)

    def with_overrides(
        self,
        devices: int | None = None,
        duration: float | None = None,
        workers: int | None = None,
        broker: str | None = None,
        isolate: bool | None = None,
        brokers: int | None = None,
    ) -> Scenario:
        """The same scenario with CLI overrides, validated like the file.

        ``devices`` scales every group proportionally (largest remainder, groups left empty are dropped);
        a shorter ``duration`` drops the events it no longer reaches.
        """
        from fleetsim.scenario.validate import overridden

        return overridden(self, devices=devices, duration=duration, workers=workers, broker=broker,
                          isolate=isolate, brokers=brokers)

    def replace(self, **changes: Any) -> Scenario:
        """A copy with some fields changed (validated), e.g. ``s.replace(duration=10)``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return Scenario(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, TOML-ready (None fields left out); parse(to_toml()) gives back an equal Scenario."""
        churn = _fields(self.churn)
        if isinstance(churn, dict) and isinstance(churn.get("downtime"), tuple):
            churn["downtime"] = list(churn["downtime"])
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "duration": self.duration,
            "connect_timeout": self.connect_timeout,
            "workers": self.workers,
            "broker": _fields(self.broker),
            "mqtt": _fields(self.mqtt),
            "arrival": _fields(self.arrival),
            "churn": churn,
            "reconnect": _fields(self.reconnect),
            "fleet": [_fields(g) for g in self.fleet] if isinstance(self.fleet, list | tuple) else self.fleet,
            "faults": dict(self.faults),
            "events": [_without_none(_fields(e)) for e in self.events] if isinstance(self.events, list | tuple)
            else self.events,
            **({"revocation": _revocation_data(self.revocation)} if self.revocation is not None else {}),
            **({"source_addresses": list(self.source_addresses)} if self.source_addresses else {}),
        }

    def to_toml(self) -> str:
        """The scenario as run, for the results directory."""
        from fleetsim.scenario.toml_writer import dump

        return dump(self.to_dict())


Group = FleetGroup


def _fields(obj: Any) -> Any:
    """A sub-table as plain data, whether given as its dataclass or as a dict (anything else as it is, for the
    validator to refuse in one line)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return {name: getattr(obj, name) for name in obj.__dataclass_fields__}
    return obj



def _without_none(table: Any) -> Any:
    return {k: v for k, v in table.items() if v is not None} if isinstance(table, dict) else table


def strategy_of(scenario: Scenario) -> str:
    """The rehearsal's enforcement strategy: the one asked for, or the broker's default."""
    asked = scenario.revocation.strategy if scenario.revocation else ""
    return asked or STRATEGIES[scenario.broker.kind][0]


def _revocation_data(r: Any) -> Any:
    data = _without_none(_fields(r))
    if isinstance(data, dict):
        if not data.get("devices"):
            data.pop("devices", None)
        elif isinstance(data["devices"], tuple):
            data["devices"] = list(data["devices"])
        for key in ("strategy", "hook", "crl_copy_to"):
            if data.get(key) == "":
                data.pop(key)
    return data
