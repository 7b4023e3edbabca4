"""What the simulator needs from any broker it drives, whichever kind it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from fleetsim.broker.topic_rules import DEVICE_TOPICS

TlsVersion = Literal["1.2", "1.3", "any"]
# Telemetry is well under 1 KB a message (ECG bursts ~0.8 KB): 64 KiB leaves room for any CONNECT a device sends
# and keeps what one connection can make a broker buffer small.
DEFAULT_MAX_PACKET = 64 * 1024
# What the embedded broker queues unsent for one connection (fleetsim.broker.embedded.outbound): 1 MiB is
# ~1,000 telemetry messages of fleetsim's devices (under 1 KB each), the depth Mosquitto's default
# max_queued_messages (1000) gives, or 16 packets of the largest size a device may send.
DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024
# Subscriptions one client id may hold on the embedded broker (fleetsim.broker.embedded.subscriptions): a
# fleetsim device holds one or two; AWS IoT Core allows 50 per connection by default. 1,000 leaves room for
# any real device while one device can no longer fill the broker's table (84,000 of them raised everyone's
# PUBACK median 100-fold).
DEFAULT_MAX_SUBSCRIPTIONS = 1000
# Each session's QoS 1/2 messages on the embedded broker (fleetsim.broker.embedded.session_queue): Mosquitto's
# max_inflight_messages (20) awaiting acknowledgement each way, max_queued_messages (1,000) waiting behind them, and
# at most 16 x DEFAULT_MAX_QUEUED_BYTES of them (Mosquitto's byte cap is off by default; a thousand messages of up to
# 16 KiB, fleetsim's telemetry being under 1 KB).
DEFAULT_MAX_INFLIGHT = 20
DEFAULT_MAX_QUEUED_MESSAGES = 1000
DEFAULT_MAX_SESSION_QUEUE_BYTES = 16 * DEFAULT_MAX_QUEUED_BYTES
# Retained messages on the embedded broker (fleetsim.broker.embedded.retained): a device keeps a handful (its
# status, its last reading per kind); 100 topics per client id, with on average up to 10 KiB each (1 MiB a client
# at the default), and 64 MiB for the whole broker (each message charged its topic, payload and ~640 bytes of the
# broker's own objects: ~100,000 small ones). Past either, a retained PUBLISH is delivered but not kept, counted.
DEFAULT_MAX_RETAINED_PER_CLIENT = 100
RETAINED_BYTES_PER_TOPIC = 10 * 1024
DEFAULT_MAX_RETAINED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class BrokerOptions:
    """Knobs common to the brokers fleetsim starts. Loopback by default: load stays on this machine."""

    host: str = "127.0.0.1"
    port: int = 8883  # 0 picks a free port (tests)
    tls_version: TlsVersion = "any"
    session_tickets: bool = False  # resumption; off by default: a resumed session skips the handshake's CRL check
    drop_revoked: bool = True  # embedded only: end live sessions whose certificate the new CRL revokes
    password_file: Path | None = None  # optional username/password auth on top, for overhead comparisons
    plain_port: int | None = None  # optional plain-TCP listener, for the no-auth/no-TLS baseline
    require_certificate: bool = True  # False only for the server-only-TLS baseline, on purpose
    max_packet_size: int = DEFAULT_MAX_PACKET  # bytes, fixed header included; larger packets close the connection
    connect_timeout_s: float = 10.0  # embedded: from the TLS handshake until the session is accepted (CONNACK)
    device_topics: tuple[str, ...] = DEVICE_TOPICS  # where a device may publish/subscribe (%u, %m: its name, model)
    renew_crl: bool = True  # renew the PKI's CRL at half its validity (needs the issuing CA's key, i.e. a local PKI)
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES  # embedded: unsent bytes one connection may hold
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS  # embedded: per client id; past it SUBACK 0x80
    max_inflight_messages: int = DEFAULT_MAX_INFLIGHT  # embedded: per session, QoS 1/2 awaiting acknowledgement
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES  # embedded: per session, queued behind them (or offline)
    max_session_queue_bytes: int = DEFAULT_MAX_SESSION_QUEUE_BYTES  # embedded: the same queue, in bytes
    max_retained_per_client: int = DEFAULT_MAX_RETAINED_PER_CLIENT  # embedded: retained topics per client id
    max_retained_bytes: int = DEFAULT_MAX_RETAINED_BYTES  # embedded: retained bytes in all (charged, see above)


class BrokerHandle(Protocol):
    """A running broker, as the engine and the tests see it."""

    kind: str  # "embedded" | "mosquitto" | "external"
    host: str
    port: int  # the TLS listener

    @property
    def plain_port(self) -> int | None:
        """The plain-TCP listener's port, when one was asked for."""

    def reload_crl(self) -> None:
        """Make new connections see the PKI's current crl.pem now."""

    def stats(self) -> dict[str, Any]:
        """Broker-side counters since the handle started, over every process it ran (restarts included): accepted,
        rejected by reason, handshake times, cpu_seconds; ``processes`` lists each process."""

    def cpu_seconds(self) -> float | None:
        """CPU seconds of every process the handle ran, restarts included, read cheaply (sampled once a second
        during a run); None when it cannot be known (a broker fleetsim did not start)."""

    def restart(self) -> None:
        """Stop and start again on the same port (a timed event in scenarios); counters carry on."""

    def stop(self) -> None:
        """Stop and release the port; safe to call twice."""
