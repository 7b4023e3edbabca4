"""The parts of a scenario: its sub-tables (the fleet's groups, the broker, MQTT, arrival, churn, reconnect,
events, the revocation rehearsal) as dataclasses with the defaults a TOML file gets when it leaves a key out,
and the names and bounds each field accepts. Plain data: the rules that check them are
:mod:`fleetsim.scenario.validate`'s, and the :class:`~fleetsim.scenario.schema.Scenario` that holds them is
built through those rules.
"""

from __future__ import annotations

from dataclasses import dataclass

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


MAX_PAYLOAD = 60_000  # bytes: a padded payload stays well inside either broker's 64 KiB packet limit
MAX_SUBSCRIBERS = 1_000  # subscriber instances of all [[subscribers]] groups together


@dataclass(frozen=True)
class SubscriberGroup:
    """``count`` subscribers alike (a nurse station, a dashboard), each an identity of its own: a monitor
    certificate of the PKI, client id ``<name>-NNN`` (:meth:`client_ids`), which the broker lets read and never
    write. Each subscribes to ``topics`` (filters; ``$share/<group>/<filter>`` where the broker supports shared
    subscriptions) at ``qos``, with a clean session or a persistent one (``clean_session = false``)."""

    name: str
    topics: tuple[str, ...]
    count: int = 1
    qos: int = 1
    clean_session: bool = True

    def client_ids(self) -> list[str]:
        """Each instance's client id (= its certificate's name): the group's name and its number from 1."""
        return [f"{self.name}-{n:03d}" for n in range(1, self.count + 1)]


@dataclass(frozen=True)
class BrokerSpec:
    """Which broker the fleet targets and how it authenticates devices."""

    target: str = "embedded"
    tls_version: str = "any"
    session_resumption: bool = False
    auth: str = "mtls"
    allow_remote: bool = False
    isolate: bool = False  # a core of its own for the broker fleetsim starts (see fleetsim.runner.placement)
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
    payload_bytes: int = 0  # every payload padded to at least this size; 0: each model's own (telemetry.MODELS)


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


Group = FleetGroup
