"""Mosquitto configuration as text: pure functions, no I/O, so every setting is unit-testable.

The runtime (:mod:`.broker`) copies the PKI's files into a private directory and renders the
config from the paths below. ``per_listener_settings true`` keeps the mTLS listener's rules (no anonymous
clients, topic ACL tied to the certificate's CN) apart from the optional plain-TCP baseline listener.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.topic_rules import DEVICE_TOPICS, MODEL, fill
from fleetsim.names import TLS12_CIPHERS, TLS13_SUITES, TLS_PINNED

# Mosquitto's words for fleetsim's TLS version names (None: its default, 1.2 and 1.3).
TLS_VERSIONS: dict[str, str | None] = {**{name: f"tlsv{name}" for name in TLS_PINNED}, "any": None}

# Devices publish on fleet/<site>/<model>/<device-id>/<kind>. With use_identity_as_username the username is
# the certificate's CN, so BrokerOptions.device_topics (topic_rules.DEVICE_TOPICS, the embedded broker's rule too)
# confines each device to its own subtree, whatever client id it claims.
READER_TOPICS = ("#", "$SYS/#")
# Mosquitto 2.0.11 reads an acl_file's users in time quadratic in their number, at start and at every SIGHUP (each
# CRL reload), and looks a user up linearly at each CONNECT. Measured here, one user section per device: 5,000
# devices ~0.07 s per load, CONNECT median 0.05 -> 0.08 ms; 10,000 0.3 s, 0.10 ms; 50,000 7.3 s per load (Mosquitto
# serves nobody meanwhile), 0.30 ms. Up to this many devices in the PKI the model level is bound on Mosquitto; past it the
# ACL leaves it unbound (the device id level stays bound) and fleetsim says so.
MODEL_ACL_LIMIT = 5_000
DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"  # Debian's mosquitto package
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"  # what a monitor identity may read: everything


@dataclass(frozen=True)
class RuntimeFiles:
    """Where the broker's copies of its inputs live, all inside one private runtime directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def cafile(self) -> Path:
        return self.root / "ca-chain.pem"

    @property
    def certfile(self) -> Path:
        return self.root / "server-cert.pem"

    @property
    def keyfile(self) -> Path:
        return self.root / "server-key.pem"

    @property
    def crlfile(self) -> Path:
        return self.root / "crl.pem"

    @property
    def password_file(self) -> Path:
        return self.root / "passwords"

    @property
    def acl_file(self) -> Path:
        return self.root / "acl"

    @property
    def log(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def dynsec(self) -> Path:
        return self.root / "dynamic-security.json"

    @property
    def persistence(self) -> Path:
        return self.root / "persistence"


@dataclass(frozen=True)
class Extras:
    """Mosquitto-only knobs that BrokerOptions does not carry."""

    persistence: bool = False  # on: sessions survive restart() (persistent-session tests)
    acl: bool = True  # tie each device's topics to its certificate CN (BrokerOptions.device_topics)
    acl_readers: tuple[str, ...] = ()  # more CNs allowed to read every topic (the PKI's monitors always are)
    # Opt-in: load Debian's dynamic-security plugin with this certificate CN as its admin, to cut live clients
    # (MosquittoBroker.disconnect). It cannot bind client ids to certificates (brokers/README.md): the ACL stays.
    dynsec_admin: str | None = None


def uses_identity(options: BrokerOptions) -> bool:
    """The certificate CN is the MQTT username unless another auth method was asked for."""
    return options.require_certificate and options.password_file is None


def render_acl(patterns: Sequence[str] = DEVICE_TOPICS, readers: Sequence[str] = (),
               devices: Sequence[tuple[str, str]] | None = ()) -> str:
    """An acl_file: per-device patterns, plus read access to every topic for the named monitor identities.

    Mosquitto's patterns know only %u and %c. A pattern naming the model (%m) becomes a ``pattern read`` with any
    model level (as the embedded broker lets a device subscribe) and, for each (id, model) of ``devices`` (the PKI's
    inventory, whose model is the certificate's OU), a ``topic write`` under that device's own model. With
    ``devices`` None the model level is left unbound (``pattern readwrite`` with any model): see
    MODEL_ACL_LIMIT.
    """
    lines = ["# fleetsim: each device reads and writes only its own subtree (username = certificate CN)"]
    bound = [p for p in patterns if MODEL in p]
    lines += [f"pattern readwrite {p.replace(MODEL, '+')}" for p in patterns if MODEL not in p or devices is None]
    if bound and devices is not None:
        lines += [f"pattern read {p.replace(MODEL, '+')}" for p in bound]
        lines.append("# and publishes only under the model its certificate names (no %m in Mosquitto: one per device)")
        for device_id, model in devices:
            lines += [f"user {device_id}", *(f"topic write {fill(p, device_id, model)}" for p in bound)]
    for cn in dict.fromkeys(readers):
        lines += ["", f"user {cn}", *(f"topic read {t}" for t in READER_TOPICS)]
    return "\n".join(lines) + "\n"


def _tls_listener(options: BrokerOptions, files: RuntimeFiles, extras: Extras) -> list[str]:
    lines = [
        f"listener {options.port} {options.host}",
        "max_connections -1",
        f"cafile {files.cafile}",
        f"certfile {files.certfile}",
        f"keyfile {files.keyfile}",
        f"crlfile {files.crlfile}",
        f"require_certificate {str(options.require_certificate).lower()}",
        f"ciphers {TLS12_CIPHERS}",  # the embedded broker's: no CBC-SHA1 suite (Mosquitto's default accepts them)
        f"ciphers_tls1.3 {TLS13_SUITES}",
    ]
    version = TLS_VERSIONS[options.tls_version]
    if version:
        lines.append(f"tls_version {version}")
    if uses_identity(options):
        lines += ["use_identity_as_username true", "allow_anonymous false"]
        if extras.acl:
            lines.append(f"acl_file {files.acl_file}")
        if extras.dynsec_admin is not None:
            lines += [f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {files.dynsec}"]
    elif options.password_file is not None:
        lines += [f"password_file {files.password_file}", "allow_anonymous false"]
    else:  # server-only TLS baseline, on purpose: anyone with the CA may connect
        lines.append("allow_anonymous true")
    return lines


def _plain_listener(options: BrokerOptions, files: RuntimeFiles) -> list[str]:
    lines = [f"listener {options.plain_port} {options.host}", "max_connections -1"]
    if options.password_file is not None:
        lines += [f"password_file {files.password_file}", "allow_anonymous false"]
    else:  # no-auth baseline, loopback by default
        lines.append("allow_anonymous true")
    return lines


def render(options: BrokerOptions, files: RuntimeFiles, extras: Extras = Extras()) -> str:
    """The whole mosquitto.conf for ``options``; ports must already be concrete (not 0)."""
    if options.port == 0 or options.plain_port == 0:
        raise ValueError("render() needs concrete ports; pick free ones first")
    lines = [
        "# generated by fleetsim: do not edit, it is rewritten on every start",
        "per_listener_settings true",
        "set_tcp_nodelay true",
        f"max_packet_size {options.max_packet_size}",  # whole packet; a larger one disconnects (any MQTT version)
        f"persistence {str(extras.persistence).lower()}",
    ]
    if extras.persistence:
        lines.append(f"persistence_location {files.persistence}/")
    lines += [
        f"log_dest file {files.log}",
        *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
        *_tls_listener(options, files, extras),
    ]
    if options.plain_port is not None:
        lines += ["", *_plain_listener(options, files)]
    return "\n".join(lines) + "\n"
