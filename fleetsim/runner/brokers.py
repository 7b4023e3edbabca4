"""The brokers of one run: how the devices authenticate to them (the password file written for auth =
"password"), which to start or name (one, a pool, an external cluster's nodes), and what is kept of them after
(the log, the final counters)."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetsim.broker.embedded.auth import write_password_file
from fleetsim.broker.handle import BrokerHandle, BrokerOptions
from fleetsim.broker.launch import ExternalBroker, start_broker
from fleetsim.broker.pool import BrokerPool, start_pool
from fleetsim.pki import Pki
from fleetsim.scenario import Scenario
from fleetsim.scenario.schema import strategy_of


@dataclass(frozen=True)
class Auth:
    """How devices authenticate, for the overhead comparisons: the broker's side and the devices' side."""

    options: BrokerOptions
    password: str | None = None  # every device's password when auth = "password"


def broker_auth(scenario: Scenario, secrets_dir: Path, device_ids: list[str]) -> Auth:
    """mtls: client certificates required; tls: server-only TLS; password: server-only TLS + a password each;
    none: plain TCP on a second listener. Verification of the broker by the device stays on in every mode."""
    b = scenario.broker
    options = BrokerOptions(port=0, tls_version=b.tls_version, session_tickets=b.session_resumption,  # type: ignore[arg-type]
                            require_certificate=b.auth == "mtls", plain_port=0 if b.auth == "none" else None)
    if b.auth != "password":
        return Auth(options)
    password = secrets.token_urlsafe(16)
    path = secrets_dir / "passwords"
    write_password_file(path, device_ids, password.encode())
    return Auth(dataclasses.replace(options, password_file=path), password)


KICK_ADMIN = "fleetsim-dynsec-admin"


def kick_admin(scenario: Scenario, pki: Pki) -> str | None:
    """A rehearsal that kicks revoked clients from Mosquitto needs its dynamic-security plugin and an admin
    identity (a monitor certificate of the PKI, made once)."""
    if scenario.revocation is None or strategy_of(scenario) != "kick":
        return None
    if KICK_ADMIN not in pki.inventory.devices:
        pki.issue_monitor(KICK_ADMIN)
    return KICK_ADMIN


def start_brokers(scenario: Scenario, pki: Pki, auth: Auth, broker_log: Path) -> BrokerHandle:
    """The broker (or pool) the scenario names; an external cluster's nodes as a pool of their addresses."""
    b = scenario.broker
    if b.kind == "external":
        nodes = [ExternalBroker(h, p) for h, p in b.addresses]
        return nodes[0] if len(nodes) == 1 else BrokerPool(nodes)
    admin = kick_admin(scenario, pki)
    # a subscriber with a persistent session is owed what is published while it is away, a broker restart
    # included: Mosquitto keeps that only with persistence on
    persistence = any(not g.clean_session for g in scenario.subscribers)

    def one(options: BrokerOptions, i: int) -> BrokerHandle:
        log = broker_log if i == 0 else broker_log.with_name(f"broker-{i + 1}.log")
        return start_broker(b.target, pki.root, options, log_file=log, dynsec_admin=admin, persistence=persistence)

    return start_pool(b.processes, auth.options, one)


def pool_targets(broker: BrokerHandle, auth: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(broker, BrokerPool):
        return ()
    return tuple(broker.plain_targets() if auth == "none" else broker.targets)


def keep_log(source: object, target: Path) -> None:
    """Mosquitto logs into its private runtime directory, gone at stop: keep a copy with the results."""
    if isinstance(source, str) and Path(source).is_file() and not target.exists():
        with contextlib.suppress(OSError):
            shutil.copyfile(source, target)


def safe_stats(broker: BrokerHandle) -> dict[str, Any]:
    try:
        return broker.stats()
    except Exception as exc:  # a dead broker still lets the run write what the devices measured
        return {"error": str(exc)}
