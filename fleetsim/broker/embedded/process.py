"""The embedded broker in its own process: its CPU is measured apart from the simulator's.

``start_embedded(pki_dir, options)`` runs ``python -m fleetsim.broker.embedded.child`` and waits for the one
JSON line it prints: ``{"ready": ..., "port": N, "stats_port": M}`` or ``{"error": "<one line>"}``, which
becomes a BrokerError here (port in use, not a PKI, unreadable key). The handle talks to the child over
its loopback stats endpoint (GET /stats, POST /reload-crl); SIGTERM stops it; it stops by itself when
its parent dies (the kernel's parent-death signal, else its own watch on its parent's pid). This module imports neither the broker nor amqtt: the simulator spawns brokers without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fleetsim import lifecycle
from fleetsim.broker import totals
from fleetsim.broker.handle import BrokerOptions
from fleetsim.errors import BrokerError

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


def options_to_json(options: BrokerOptions) -> str:
    data = dataclasses.asdict(options)
    if data["password_file"] is not None:
        data["password_file"] = str(data["password_file"])
    return json.dumps(data)


def options_from_json(text: str) -> BrokerOptions:
    data = json.loads(text)
    if data.get("password_file") is not None:
        data["password_file"] = Path(data["password_file"])
    if "device_topics" in data:
        data["device_topics"] = tuple(data["device_topics"])
    return BrokerOptions(**data)


class EmbeddedProcess:
    """A BrokerHandle (kind "embedded") for an embedded broker running in a child process."""

    kind = "embedded"

    def __init__(self, pki_dir: Path | str, options: BrokerOptions | None = None, *,
                 log_file: Path | None = None) -> None:
        self.pki_dir = Path(pki_dir)
        self.log_file = log_file  # where its log goes; None: this process's stderr
        self.options = options or BrokerOptions()
        self.host = self.options.host
        self.port = self.options.port
        self.plain_port: int | None = None
        self.stats_port: int | None = None
        self.restarts = 0
        self._retired: list[dict[str, Any]] = []  # final counters of the processes restart() replaced
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedProcess:
        cmd = [sys.executable, "-m", "fleetsim.broker.embedded.child", str(self.pki_dir),
               "--options-json", options_to_json(self.options)]
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(open(self.log_file, "a")) if self.log_file else None
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                          text=True, start_new_session=True,
                                          preexec_fn=lifecycle.preexec_tied(signal.SIGTERM))
        ready = self._ready_line()
        if "error" in ready:
            self._reap()
            raise BrokerError(ready["error"])
        self.port, self.plain_port, self.stats_port = ready["port"], ready["plain_port"], ready["stats_port"]
        return self

    def _ready_line(self) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
        line = proc.stdout.readline() if readable else ""
        if line:
            result: dict[str, Any] = json.loads(line)
            return result
        self._reap()
        if not readable:
            raise BrokerError(f"embedded broker did not start within {READY_TIMEOUT_S:.0f} s",
                              f"see {self._log_hint}")
        raise BrokerError(f"embedded broker exited with code {proc.returncode} before it was ready",
                          f"see {self._log_hint}")

    @property
    def _log_hint(self) -> str:
        return str(self.log_file) if self.log_file else "its messages above"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError("the embedded broker is not running", "start it again")
        request = urllib.request.Request(f"http://127.0.0.1:{self.stats_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                result: dict[str, Any] = json.load(response)
        except (urllib.error.URLError, OSError) as exc:
            raise BrokerError(f"the embedded broker (pid {self.pid}) does not answer: {exc}",
                              "check it is still running") from None
        return result

    def stats(self) -> dict[str, Any]:
        """Broker-side counters over every process this handle ran, and how often it restarted it."""
        result = totals.combine(self._retired, self._call("GET", "/stats"))
        result["restarts"] = self.restarts
        return result

    def cpu_seconds(self) -> float | None:
        now = totals.process_cpu(self.pid)
        before = sum(r.get("cpu_seconds", 0.0) for r in self._retired)
        return before + now if now is not None else None

    def reload_crl(self) -> None:
        self._call("POST", "/reload-crl")

    def restart(self) -> None:
        """Stop and start again on the same port(s); the old process's counters are kept and added in."""
        with contextlib.suppress(BrokerError):  # a broker that died cannot say what it counted
            self._retired.append(self._call("GET", "/stats"))
        self.stop()
        self.options = dataclasses.replace(self.options, port=self.port, plain_port=self.plain_port)
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        self._reap()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> EmbeddedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def start_embedded(pki_dir: Path | str, options: BrokerOptions | None = None, *,
                   log_file: Path | None = None) -> EmbeddedProcess:
    """Start the embedded broker in a child process; returns once it listens (BrokerError if it cannot)."""
    return EmbeddedProcess(pki_dir, options, log_file=log_file).start()
