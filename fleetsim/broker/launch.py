"""Start the broker a scenario names, whichever kind, behind the one BrokerHandle face."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetsim.broker.handle import BrokerHandle, BrokerOptions
from fleetsim.errors import BrokerError
from fleetsim.names import split_hostport

PROBE_TIMEOUT_S = 3.0


@dataclass
class ExternalBroker:
    """A broker fleetsim did not start: it can be measured from the device side only."""

    host: str
    port: int
    kind: str = "external"
    plain_port: int | None = None

    def reload_crl(self) -> None:
        """Nothing to do: an external broker reloads its CRL on its own terms."""

    def stats(self) -> dict[str, Any]:
        return {}

    def cpu_seconds(self) -> float | None:
        return None

    def restart(self) -> None:
        raise BrokerError(f"cannot restart the external broker at {self.host}:{self.port}",
                          "drop restart-broker events when --broker is HOST:PORT")

    def stop(self) -> None:
        """Not ours to stop."""

    def __enter__(self) -> ExternalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_address(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) with a clear error."""
    address = split_hostport(target)
    if address is None:
        raise BrokerError(f"broker {target!r} is not embedded, mosquitto or HOST:PORT", "e.g. --broker 127.0.0.1:8883")
    return address


def probe(host: str, port: int) -> None:
    """One TCP connect to a broker fleetsim did not start: a broker that is down is one line, not a whole run."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return
    except ConnectionRefusedError:
        raise BrokerError(f"nothing listens at {host}:{port} (connection refused)",
                          "start the broker, or fix --broker HOST:PORT") from None
    except TimeoutError:
        raise BrokerError(f"no answer from {host}:{port} within {PROBE_TIMEOUT_S:g} s",
                          "check the address and that a firewall lets it through") from None
    except OSError as exc:
        raise BrokerError(f"cannot reach {host}:{port}: {exc.strerror or exc}", "check --broker HOST:PORT") from None


def start_broker(target: str, pki_dir: Path, options: BrokerOptions, *, log_file: Path | None = None,
                 dynsec_admin: str | None = None, persistence: bool = False) -> BrokerHandle:
    """Start the embedded broker or Mosquitto from the PKI, or name an external one.

    ``log_file`` takes the embedded broker's log (Mosquitto keeps its own, see its stats()["log"]).
    ``dynsec_admin``: Mosquitto only, load its dynamic-security plugin with this identity as admin, so live
    clients can be cut by name (MosquittoBroker.disconnect). ``persistence``: Mosquitto only, keep sessions,
    subscriptions and queued messages across a restart (the embedded broker keeps sessions in memory only).
    """
    if target == "embedded":
        from fleetsim.broker.embedded.process import start_embedded

        return start_embedded(pki_dir, options, log_file=log_file)
    if target == "mosquitto":
        from fleetsim.broker.mosquitto.broker import start_mosquitto
        from fleetsim.broker.mosquitto.config import Extras

        return start_mosquitto(pki_dir, options, extras=Extras(dynsec_admin=dynsec_admin, persistence=persistence))
    host, port = parse_address(target)
    return ExternalBroker(host, port)
