"""`fleetsim broker run DIR` (a broker that requires client certificates) and `fleetsim broker stats`."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer

from fleetsim.broker import config as broker_config
from fleetsim.broker.embedded.tls_context import FileStamp
from fleetsim.broker.handle import (
    DEFAULT_MAX_PACKET,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_RETAINED_BYTES,
    DEFAULT_MAX_RETAINED_PER_CLIENT,
    DEFAULT_MAX_SUBSCRIPTIONS,
    BrokerOptions,
)
from fleetsim.broker.topic_rules import DEVICE_TOPICS
from fleetsim.errors import BrokerError
from fleetsim.names import TLS_VERSIONS

MOSQUITTO_CRL_POLL_S = 0.5  # a new crl.pem reaches the Mosquitto `broker run` supervises within this (+ SIGHUP)
RENEW_CHECK_S = 60.0

app = typer.Typer(help="Run a broker that requires client certificates from a fleetsim PKI.", no_args_is_help=True)


@app.command("run")
def run(
    pki_dir: Path = typer.Argument(..., help="PKI directory made by `fleetsim pki init`."),
    kind: str = typer.Option("embedded", "--kind", help="embedded (amqtt, in this process) or mosquitto."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8883, "--port", min=0, max=65535, help="mTLS port; 0 picks a free one."),
    tls_version: str = typer.Option("any", "--tls-version", help="1.2, 1.3 or any."),
    tickets: bool = typer.Option(False, "--tickets/--no-tickets",
                                 help="Session resumption (tickets; TLS 1.2 session ids). Off: full handshakes only."),
    drop_revoked: bool = typer.Option(True, "--drop-revoked/--keep-revoked",
                                      help="End live sessions whose certificate a new CRL revokes (embedded)."),
    password_file: Path | None = typer.Option(None, "--password-file", help="mosquitto_passwd file: also require a password."),
    plain_port: int | None = typer.Option(None, "--plain-port", min=0, max=65535,
                                          help="Also listen on plain TCP (no TLS, baseline for comparisons)."),
    stats_port: int = typer.Option(0, "--stats-port", min=0, max=65535,
                                   help="Loopback port of GET /stats (embedded); 0 picks a free one."),
    max_packet_size: int = typer.Option(DEFAULT_MAX_PACKET, "--max-packet-size", min=1024, max=268_435_460,
                                        help="Largest packet a device may send, in bytes; larger ones close it."),
    max_queued_bytes: int = typer.Option(DEFAULT_MAX_QUEUED_BYTES, "--max-queued-bytes", min=65536, max=1 << 34,
                                         help="Unsent bytes one connection may hold (embedded); past it QoS 0 "
                                              "messages to it are discarded, anything else closes it."),
    max_subscriptions: int = typer.Option(DEFAULT_MAX_SUBSCRIPTIONS, "--max-subscriptions", min=1, max=10_000_000,
                                          help="Subscriptions one client id may hold (embedded); past it SUBACK "
                                               "0x80."),
    max_retained_per_client: int = typer.Option(DEFAULT_MAX_RETAINED_PER_CLIENT, "--max-retained-per-client", min=0,
                                                max=1_000_000,
                                                help="Retained topics one client id may hold (embedded); past it a "
                                                     "retained PUBLISH is delivered, not kept."),
    max_retained_bytes: int = typer.Option(DEFAULT_MAX_RETAINED_BYTES, "--max-retained-bytes", min=0, max=1 << 34,
                                           help="Retained bytes the broker may hold in all (embedded)."),
    config: Path | None = typer.Option(None, "--config", help="Settings file (see brokers/embedded.toml); flags win."),
) -> None:
    """Run until Ctrl-C. New CRLs in DIR/crl.pem apply at once (also on SIGHUP)."""
    given: dict[str, Any] = {
        "kind": kind, "host": host, "port": port, "tls_version": tls_version, "session_tickets": tickets,
        "drop_revoked": drop_revoked, "password_file": password_file, "plain_port": plain_port,
        "stats_port": stats_port, "max_packet_size": max_packet_size, "device_topics": DEVICE_TOPICS,
        "renew_crl": True, "max_queued_bytes": max_queued_bytes,
        "max_subscriptions": max_subscriptions, "max_retained_per_client": max_retained_per_client,
        "max_retained_bytes": max_retained_bytes}
    settings = {**DEFAULTS, **broker_config.load(config), **_explicit(given)} if config is not None else given
    if settings["tls_version"] not in TLS_VERSIONS:
        raise BrokerError(f"unknown TLS version {settings['tls_version']!r}",
                          f"use --tls-version {' or '.join(TLS_VERSIONS)}")
    kind, stats_port = settings.pop("kind"), settings.pop("stats_port")
    options = BrokerOptions(**settings)
    if kind == "embedded":
        asyncio.run(_run_embedded(pki_dir, options, stats_port))
    elif kind == "mosquitto":
        _run_mosquitto(pki_dir, options)
    else:
        raise BrokerError(f"unknown broker kind {kind!r}", "use --kind embedded or --kind mosquitto")


DEFAULTS: dict[str, Any] = {
    "kind": "embedded", "host": "127.0.0.1", "port": 8883, "tls_version": "any", "session_tickets": False,
    "drop_revoked": True, "password_file": None, "plain_port": None, "stats_port": 0,
    "max_packet_size": DEFAULT_MAX_PACKET, "device_topics": DEVICE_TOPICS, "renew_crl": True,
    "max_queued_bytes": DEFAULT_MAX_QUEUED_BYTES, "max_subscriptions": DEFAULT_MAX_SUBSCRIPTIONS,
    "max_retained_per_client": DEFAULT_MAX_RETAINED_PER_CLIENT, "max_retained_bytes": DEFAULT_MAX_RETAINED_BYTES}


def _explicit(given: dict[str, object]) -> dict[str, object]:
    """The flags that differ from their defaults: those were typed, so they win over the config file."""
    return {k: v for k, v in given.items() if v != DEFAULTS.get(k)}


def _where(kind: str, host: str, port: int, plain_port: int | None, extra: str = "") -> str:
    plain = f", plain mqtt://{host}:{plain_port}" if plain_port is not None else ""
    return f"{kind} broker listening on mqtts://{host}:{port} (client certificates required{plain}{extra}); Ctrl-C stops"


async def _run_embedded(pki_dir: Path, options: BrokerOptions, stats_port: int) -> None:
    from fleetsim.broker.embedded.broker import EmbeddedBroker

    broker = EmbeddedBroker(pki_dir, options, stats_port=stats_port)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, broker.reload_crl)
    stats = f", stats http://127.0.0.1:{broker.stats_port}/stats"
    typer.echo(_where("embedded", broker.host, broker.port, broker.plain_port, stats), err=False)
    try:
        await stop.wait()
    finally:
        await broker.stop()


def _run_mosquitto(pki_dir: Path, options: BrokerOptions) -> None:
    from fleetsim.broker.mosquitto.broker import start_mosquitto

    handle = start_mosquitto(pki_dir, options)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: handle.reload_crl())
    typer.echo(_where("mosquitto", handle.host, handle.port, options.plain_port))
    stamp, renew_at = FileStamp.of(handle.layout.crl), time.monotonic() + RENEW_CHECK_S
    issued = FileStamp.of(handle.layout.inventory)
    try:
        while not stop.wait(MOSQUITTO_CRL_POLL_S):  # Mosquitto re-reads its CRL only on SIGHUP: do it for it
            if (now := FileStamp.of(handle.layout.crl)) != stamp:
                stamp = now
                handle.reload_crl()
            if (now := FileStamp.of(handle.layout.inventory)) != issued:  # new devices: their model's ACL line
                issued = now
                handle.reload_acl()
            if time.monotonic() >= renew_at:
                renew_at = time.monotonic() + RENEW_CHECK_S
                handle.renew_crl_if_due()
    finally:
        handle.stop()


@app.command("stats")
def stats(target: str = typer.Argument(..., help="Stats port or URL of a running embedded broker.")) -> None:
    """Print a running embedded broker's counters as JSON."""
    url = f"http://127.0.0.1:{target}/stats" if target.isdigit() else target
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise BrokerError(f"no broker stats at {url}: {exc}", "pass the stats port `broker run` printed") from None
    typer.echo(json.dumps(data, indent=2))


def register(root: typer.Typer) -> None:
    """Add the `broker` sub-app to the fleetsim command line."""
    root.add_typer(app, name="broker")
