"""Run Debian's Mosquitto 2.0 as a mutual-TLS broker over a fleetsim PKI, and supervise it.

Mosquitto started as root drops to the user ``mosquitto``, and re-reads its config, CA, key and CRL as that
user on SIGHUP. So the broker reads only copies in a private runtime directory owned by that user; the PKI's
own files (device keys included) are never loosened. ``reload_crl`` copies the current crl.pem in, then
sends SIGHUP: Mosquitto rebuilds its TLS context, which also voids its old TLS 1.3 session tickets.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil
from cryptography import x509

from fleetsim import lifecycle
from fleetsim.broker import totals
from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.mosquitto.config import (
    DYNSEC_TOPIC,
    MODEL_ACL_LIMIT,
    Extras,
    RuntimeFiles,
    render,
    render_acl,
    uses_identity,
)
from fleetsim.errors import BrokerError, FleetsimError
from fleetsim.pki import crl_policy
from fleetsim.pki.certs import DEVICE, MONITOR
from fleetsim.pki.crl_policy import CrlFacts
from fleetsim.pki.layout import Layout, crl_floor

log = logging.getLogger("fleetsim.broker.mosquitto")

BINARY_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
RUN_AS = "mosquitto"  # Mosquitto's default `user`: whom it becomes when started as root
ADDRESS_IN_USE = "Address already in use"
RUNTIME_PREFIX = "fleetsim-mosquitto-"  # each broker's private directory under the temp dir (a server key copy)
OWNER_FILE = "owner.pid"  # the pid of the fleetsim process that made the directory, for sweep_stale_runtime_dirs
KICKS_PER_MESSAGE = 200  # CNs per dynamic-security message: ~27 KB, well under the 64 KiB max_packet_size


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def find_binary() -> str:
    """Path of the mosquitto executable, or a one-line error saying how to get it."""
    found = shutil.which("mosquitto") or next((p for p in BINARY_CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None:
        raise BrokerError("mosquitto is not installed", "install it: apt-get install mosquitto")
    return found


def free_port(host: str) -> int:
    """A port the OS says is free now (tests and port=0); a race is retried by the caller."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _raise_nofile() -> None:
    """preexec_fn: thousands of devices need thousands of descriptors; take the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _open_files_limit(pid: int) -> int | None:
    """The child's soft open-files limit, read from /proc (prlimit on another process may be refused)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


# -- reading the log ---------------------------------------------------------------------------------------
_CONNECTED = re.compile(r"New client connected from \S+ as (?P<cid>\S+) \(.*?(?:u'(?P<user>[^']*)')?\)\.$")
_OPENSSL = re.compile(r"OpenSSL Error\[\d+\]: \S+:SSL routines::(?P<what>.+)$")
_CLIENT = re.compile(r"Client (?P<cid>\S+) (?P<how>disconnected|closed its connection|has exceeded)")
# A handshake that fails inside accept() is logged in one line, with no "New connection" or "Client" line.
_ACCEPT_FAILED = re.compile(r"Client connection from \S+ failed: \S+:SSL routines::(?P<what>.+?)\.?$")
_NOT_AUTHORISED = re.compile(r"Client \S+ disconnected, not authori[sz]ed")
_TAKEOVER = re.compile(r"Client \S+ already connected, closing old connection")

# OpenSSL's server-side words -> a short reason. Mosquitto's log does not say *why* a certificate failed
# verification (expired, unknown CA and revoked all read "certificate verify failed"); the device's alert does.
TLS_REASONS = {
    "peer did not return a certificate": "no-certificate",
    "certificate verify failed": "certificate-verify-failed",
    "unexpected eof while reading": "handshake-aborted",
    "wrong version number": "tls-version",
    "unsupported protocol": "tls-version",
    "no shared cipher": "no-shared-cipher",
}


def _tls_reason(what: str) -> str:
    what = what.strip()
    return TLS_REASONS.get(what, f"tls: {what}")


@dataclass
class LogTally:
    """Counts connections accepted and refused by reading Mosquitto's log lines, incrementally.

    An OpenSSL error counts as a refusal only when the next line about a client is ``Client <unknown>``:
    a connected device that drops its socket without close_notify logs the same OpenSSL error.
    """

    accepted: int = 0
    disconnected: int = 0
    identity_mismatch: int = 0  # client id differs from certificate CN (username): Mosquitto lets it in
    rejected: Counter[str] = field(default_factory=Counter)
    reloads: int = 0
    takeovers: int = 0  # a client id connected again: the old connection closed (3.1.4-2)
    _pending_tls: str | None = None

    def feed(self, line: str) -> None:
        if (m := _CONNECTED.search(line)) is not None:
            self.accepted += 1
            user = m.group("user")
            if user is not None and user != m.group("cid"):
                self.identity_mismatch += 1
        elif (m := _OPENSSL.search(line)) is not None:
            self._pending_tls = _tls_reason(m.group("what"))
        elif (m := _ACCEPT_FAILED.search(line)) is not None:
            self.rejected[_tls_reason(m.group("what"))] += 1
        elif _NOT_AUTHORISED.search(line):
            self.rejected["not-authorised"] += 1
        elif _TAKEOVER.search(line):
            self.takeovers += 1
        elif (m := _CLIENT.search(line)) is not None:
            if m.group("cid") == "<unknown>":
                self.rejected[self._pending_tls or "protocol-error"] += 1
            else:
                self.disconnected += 1
            self._pending_tls = None
        elif line.endswith("Reloading config."):
            self.reloads += 1

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "disconnected": self.disconnected,
                "identity_mismatch": self.identity_mismatch, "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()), "reloads": self.reloads, "takeovers": self.takeovers}


def first_error(text: str) -> str | None:
    """The line that explains a failed start: Mosquitto's first 'Error:' line, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "Error" in ln:
            ln = ln.split(": ", 1)[1] if re.match(r"^\d{4}-\d\d-\d\dT", ln) else ln
            return ln.removeprefix("Error: ")
    return lines[-1] if lines else None


def monitors(layout: Layout) -> list[str]:
    """The PKI's valid monitor identities (their CN is their name): they may read every topic."""
    try:
        inventory = json.loads(layout.inventory.read_bytes())
    except (OSError, ValueError):
        return []
    return [d["id"] for d in inventory.get("devices", ())
            if d.get("role") == MONITOR and d.get("status") == "valid"]


def device_models(layout: Layout) -> list[tuple[str, str]]:
    """Each device identity of the PKI with its model (its certificate's OU): the ACL binds its model level."""
    try:
        inventory = json.loads(layout.inventory.read_bytes())
    except (OSError, ValueError):
        return []
    return [(d["id"], d["model"]) for d in inventory.get("devices", ())
            if d.get("role", DEVICE) == DEVICE and d.get("model")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sweep_stale_runtime_dirs(tmp: Path) -> list[Path]:
    """Remove the runtime directories of brokers whose fleetsim process is gone: a SIGKILLed orchestrator never
    removes its own, and each holds a copy of the server key. A directory without an owner file, or whose owner
    lives, is left alone. Returns what was removed."""
    removed = []
    for root in tmp.glob(RUNTIME_PREFIX + "*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed

# -- the broker ---------------------------------------------------------------------------------------------
class MosquittoBroker:
    """A Mosquitto process over one PKI; implements fleetsim.broker.handle.BrokerHandle."""

    kind = "mosquitto"

    def __init__(self, pki_dir: Path | str, options: BrokerOptions, extras: Extras = Extras()) -> None:
        self.layout = Layout(Path(pki_dir).absolute())
        self._check_pki()
        self.binary = find_binary()
        self.extras = extras
        self._auto_port = options.port == 0
        self._auto_plain = options.plain_port == 0
        self.options = self._concrete_ports(options)
        self.host = self.options.host
        self.port = self.options.port
        sweep_stale_runtime_dirs(Path(tempfile.gettempdir()))
        self.files = RuntimeFiles(Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX)))
        (self.files.root / OWNER_FILE).write_text(str(os.getpid()))
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._log_offset = 0
        self._log_rest = b""
        self.tally = LogTally()  # read from the log, which restarts append to: it spans every process
        self._retired_cpu = 0.0  # CPU seconds of the processes restart() replaced
        self._crl: CrlFacts | None = None  # the CRL Mosquitto enforces
        self._warned_crls: set[bytes] = set()
        self.crl_refused = 0
        self._said_unbound = False  # the model level left unbound past MODEL_ACL_LIMIT: logged once

    @property
    def plain_port(self) -> int | None:
        return self.options.plain_port

    # -- setup ------------------------------------------------------------------------------------------
    def _check_pki(self) -> None:
        needed = [self.layout.ca_chain, self.layout.server_cert, self.layout.server_key, self.layout.crl]
        missing = [str(p.relative_to(self.layout.root)) for p in needed if not p.is_file()]
        if missing:
            raise BrokerError(f"no usable PKI at {self.layout.root} (missing {', '.join(missing)})",
                              f"create one with `fleetsim pki init {self.layout.root}`")

    def _concrete_ports(self, options: BrokerOptions) -> BrokerOptions:
        port = options.port or free_port(options.host)
        plain = options.plain_port
        if plain == 0:
            plain = free_port(options.host)
        return replace(options, port=port, plain_port=plain)

    def _owner(self) -> tuple[int, int] | None:
        """Whom the runtime files must belong to: Mosquitto's own user when we are root, else nobody new."""
        if os.geteuid() != 0:
            return None
        try:
            pw = pwd.getpwnam(RUN_AS)
        except KeyError:
            raise BrokerError(f"running as root but there is no user {RUN_AS!r} for Mosquitto to become",
                              "reinstall it: apt-get install --reinstall mosquitto") from None
        return pw.pw_uid, pw.pw_gid

    def _place(self, data: bytes, dest: Path, mode: int) -> None:
        """Write atomically into the runtime dir, owned by the broker's user, with ``mode``."""
        tmp = dest.with_name(f".{dest.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        owner = self._owner()
        if owner:
            os.chown(tmp, *owner)
        os.replace(tmp, dest)

    def _prepare(self) -> None:
        f, lay = self.files, self.layout
        owner = self._owner()
        os.chmod(f.root, 0o700)
        if owner:
            os.chown(f.root, *owner)
        self._place(lay.ca_chain.read_bytes(), f.cafile, 0o644)
        self._place(lay.server_cert.read_bytes(), f.certfile, 0o644)
        self._place(lay.server_key.read_bytes(), f.keyfile, 0o600)
        self._place(self._crl_for_start(), f.crlfile, 0o644)
        if self.options.password_file is not None:
            self._place(Path(self.options.password_file).read_bytes(), f.password_file, 0o600)
        if uses_identity(self.options) and self.extras.acl:
            self._place(self._acl().encode(), f.acl_file, 0o644)
        if self.extras.dynsec_admin is not None:
            self._place(self._dynsec_config(self.extras.dynsec_admin), f.dynsec, 0o600)
        if self.extras.persistence:
            f.persistence.mkdir(mode=0o700, exist_ok=True)
            if owner:
                os.chown(f.persistence, *owner)
        self._place(render(self.options, f, self.extras).encode(), f.config, 0o600)

    def _acl(self) -> str:
        readers = (*self.extras.acl_readers, *monitors(self.layout))
        return render_acl(self.options.device_topics, readers, self._bound_models())

    def reload_acl(self, timeout: float = 5.0) -> bool:
        """Write the ACL again from the PKI's inventory (devices issued since the start get their model's line) and
        SIGHUP if it changed; True when it did. Mosquitto re-reads acl_file on SIGHUP."""
        if not (uses_identity(self.options) and self.extras.acl) or self._proc is None or not self.alive:
            return False
        acl = self._acl().encode()
        if self.files.acl_file.read_bytes() == acl:
            return False
        self._place(acl, self.files.acl_file, 0o644)
        before = self._read_log().reloads
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._read_log().reloads == before and time.monotonic() < deadline and self.alive:
            time.sleep(0.01)
        return True

    def _bound_models(self) -> list[tuple[str, str]] | None:
        """The devices whose model level the ACL binds, or None past MODEL_ACL_LIMIT (said once in the log)."""
        devices = device_models(self.layout)
        if len(devices) <= MODEL_ACL_LIMIT:
            return devices
        if not self._said_unbound:
            self._said_unbound = True
            log.warning("the PKI holds %d devices: Mosquitto's ACL binds their id level, not their model level "
                        "(one user section per device past %d would stall Mosquitto at every CRL reload); the "
                        "embedded broker binds both", len(devices), MODEL_ACL_LIMIT)
        return None

    @staticmethod
    def _dynsec_config(admin: str) -> bytes:
        """A dynamic-security config whose admin is the certificate CN ``admin``, made by mosquitto_ctrl itself. Its
        password is never used: with use_identity_as_username Mosquitto 2.0 skips password checks altogether."""
        tool = shutil.which("mosquitto_ctrl")
        if tool is None:
            raise BrokerError("mosquitto_ctrl is not installed", "install it: apt-get install mosquitto-clients")
        with tempfile.TemporaryDirectory(prefix="fleetsim-dynsec-") as tmp:
            path = Path(tmp) / "dynamic-security.json"
            result = subprocess.run([tool, "dynsec", "init", str(path), admin, os.urandom(12).hex()],
                                    capture_output=True, text=True, timeout=10)
            if result.returncode != 0 or not path.exists():
                raise BrokerError(f"mosquitto_ctrl dynsec init failed: {result.stderr.strip() or result.stdout.strip()}")
            return path.read_bytes()

    def disconnect(self, usernames: Sequence[str], timeout: float = 10.0) -> float:
        """Cut the live sessions of these certificate CNs now (Mosquitto never does on a new CRL): one
        $CONTROL/dynamic-security message, createClient + deleteClient each (deleteClient kicks by username and
        leaves no state). Needs Extras(dynsec_admin=...). Returns the seconds until Mosquitto answered."""
        admin = self.extras.dynsec_admin
        if admin is None:
            raise BrokerError("disconnect needs the dynamic-security plugin", "start it with Extras(dynsec_admin=CN)")
        commands = [{"command": c, "username": u} for u in usernames for c in ("createClient", "deleteClient")]
        # several messages: one over max_packet_size would cost the admin its connection (500 CNs are ~67 KB)
        chunks = [commands[i:i + 2 * KICKS_PER_MESSAGE] for i in range(0, len(commands), 2 * KICKS_PER_MESSAGE)]
        return control(self, admin, [{"commands": c} for c in chunks], timeout)

    # -- process ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Write the config and launch; returns once the ports listen, or raises one clear BrokerError."""
        for attempt in range(3):
            self._prepare()
            self._launch()
            try:
                self._wait_ready(timeout)
                return self
            except BrokerError as exc:
                self._terminate()
                if ADDRESS_IN_USE in str(exc) and (self._auto_port or self._auto_plain) and attempt < 2:
                    self.options = self._concrete_ports(replace(
                        self.options, port=0 if self._auto_port else self.port,
                        plain_port=0 if self._auto_plain else self.options.plain_port))
                    self.port = self.options.port
                    continue  # a port picked for us was taken in between: pick again
                self._cleanup()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self._stderr = open(self.files.stderr, "ab")  # noqa: SIM115 - closed in _terminate
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.files.config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._stderr, preexec_fn=lifecycle.preexec_tied(signal.SIGTERM, _raise_nofile),
            start_new_session=True, **self._as_its_user(),
        )

    def _as_its_user(self) -> dict[str, Any]:
        """Popen's arguments that start Mosquitto as its own user when we are root, rather than let it drop to
        that user itself: the kernel clears the parent-death signal when a process changes its credentials, and
        Mosquitto would then outlive a fleetsim that is killed. Ports under 1024 need it to bind as root first."""
        owner = self._owner()
        if owner is None or min(self._ports()) < 1024:
            return {}
        return {"user": owner[0], "group": owner[1], "extra_groups": []}

    def _ports(self) -> set[int]:
        return {self.port} | ({self.options.plain_port} if self.options.plain_port else set())

    def _listening(self) -> bool:
        assert self._proc is not None
        try:
            conns = psutil.Process(self._proc.pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        ports = {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}
        return self._ports() <= ports

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                failure = self._start_failure()
                raise BrokerError(failure, _fix(failure))
            if self._listening():
                return
            time.sleep(0.02)
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout:g} s",
                          "look for another broker or a firewall holding the port")

    def _start_failure(self) -> str:
        text = ""
        for p in (self.files.log, self.files.stderr):
            with contextlib.suppress(OSError):
                text += p.read_text(errors="replace")
        line = first_error(text) or f"exited with code {self._proc.returncode if self._proc else '?'}"
        return f"mosquitto could not start on {self.host}:{self.port}: {line}"

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _cleanup(self) -> None:
        shutil.rmtree(self.files.root, ignore_errors=True)

    # -- BrokerHandle ---------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- CRL: judged here (fleetsim.pki.crl_policy), since Mosquitto loads whatever the CA signed -------------
    def _judge_crl(self, *, floor: int = 0) -> tuple[CrlFacts | None, str | None, bytes]:
        """The PKI's crl.pem as it is now: its facts, why it may not replace the CRL in force (None: it may), and
        its bytes (what "once per file version" goes by). Unreadable or torn is a refusal, not an error."""
        try:
            pem = self.layout.crl.read_bytes()
        except OSError as exc:
            return None, f"cannot read it ({exc.strerror or exc})", str(exc).encode()
        facts, problem = crl_policy.judge(pem, self._issuing_ca(), self._crl, _utcnow(), floor=floor)
        return facts, problem, pem

    def _issuing_ca(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.layout.issuing_ca.read_bytes())

    def _crl_for_start(self) -> bytes:
        """The CRL Mosquitto starts with: renewed first when past half its validity (Mosquitto refuses every
        client once it expires, issue 1826), rewritten from the inventory when stale or torn; on a restart, the
        one in force when the file is refused; else a one-line error."""
        if self.options.renew_crl:
            self._renew(force=False)
        facts, problem, version = self._judge_crl(floor=crl_floor(self.layout))
        if problem is not None and self.options.renew_crl:
            log.warning("%s: %s; rewriting it before Mosquitto starts", self.layout.crl, problem)
            self._renew(force=True)
            facts, problem, version = self._judge_crl(floor=crl_floor(self.layout))
        if problem is not None and self._crl is not None:  # a restart: Mosquitto comes back with the CRL it had
            self._refused(problem, version)
            return self._crl.pem
        if problem is not None or facts is None:
            raise BrokerError(f"{self.layout.crl}: {problem}", f"rewrite it with `fleetsim pki crl {self.layout.root}`")
        self._crl = facts
        return facts.pem

    def _refused(self, problem: str, version: bytes) -> None:
        """Count a refused crl.pem and say why, once per file version; the CRL in force stays."""
        self.crl_refused += 1
        if version not in self._warned_crls:
            if len(self._warned_crls) > 1000:
                self._warned_crls.clear()
            self._warned_crls.add(version)
            log.warning("%s refused: %s; Mosquitto keeps %s", self.layout.crl, problem,
                        self._crl.label if self._crl else "its CRL")

    def _renew(self, *, force: bool) -> bool:
        from fleetsim.pki import Pki

        try:
            pki = Pki.open(self.layout.root)
            if force:
                pki.write_crl()
                return True
            return pki.renew_crl()
        except (FleetsimError, OSError) as exc:
            log.warning("cannot renew %s here: %s", self.layout.crl, exc)
            return False

    def renew_crl_if_due(self) -> None:
        """What a long-running supervisor calls now and then (`fleetsim broker run --kind mosquitto` does)."""
        if self.options.renew_crl and self._renew(force=False):
            self.reload_crl()

    def reload_crl(self, timeout: float = 2.0) -> None:
        """Judge the PKI's crl.pem; if it may replace the one in force, copy it in, SIGHUP, and wait for Mosquitto
        to log that it reloaded. A refused one (torn, unreadable, older, another CA's...) is counted and warned
        about once per version, and Mosquitto keeps its CRL."""
        if not self.alive or self._proc is None:
            raise BrokerError("mosquitto is not running", "start it again (restart())")
        facts, problem, version = self._judge_crl()
        if self._crl is not None and version == self._crl.pem:
            return
        if problem is not None or facts is None:
            self._refused(problem or "not a CRL", version)
            return
        self._crl = facts
        self._place(facts.pem, self.files.crlfile, 0o644)
        before = self._read_log().reloads
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        # Mosquitto is single-threaded: once it logs the reload, it has rebuilt its TLS context before it
        # accepts the next connection.
        while self._read_log().reloads == before:
            if time.monotonic() > deadline or not self.alive:
                raise BrokerError(f"mosquitto did not confirm the CRL reload within {timeout:g} s",
                                  f"see {self.files.log}")
            time.sleep(0.01)

    def _read_log(self) -> LogTally:
        """Feed the log lines written since the last call into the tally."""
        try:
            with open(self.files.log, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._log_offset:
                    self._log_offset = 0  # truncated
                f.seek(self._log_offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.tally
        self._log_offset += len(chunk)
        *lines, self._log_rest = (self._log_rest + chunk).split(b"\n")
        for ln in lines:
            self.tally.feed(ln.decode(errors="replace").rstrip())
        return self.tally

    def _connected(self, proc: psutil.Process) -> int:
        return sum(1 for c in proc.net_connections(kind="inet")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr.port in self._ports())

    def stats(self) -> dict[str, Any]:
        """Process CPU and memory, live connections, and accepted/refused counts read from the log."""
        out: dict[str, Any] = {"kind": self.kind, "host": self.host, "port": self.port, "alive": self.alive,
                               "pid": self.pid, "log": str(self.files.log), **self._read_log().as_dict(),
                               "crl": {"number": self._crl.number if self._crl else None, "refused": self.crl_refused}}
        if self._proc is None:
            return out
        if not self.alive:
            out["exit_code"] = self._proc.returncode
            return out
        try:
            proc = psutil.Process(self._proc.pid)
            cpu = proc.cpu_times()
            out.update(cpu_seconds=self._retired_cpu + cpu.user + cpu.system, rss_bytes=proc.memory_info().rss,
                       connected=self._connected(proc), open_files_limit=_open_files_limit(proc.pid))
        except psutil.NoSuchProcess:
            out["alive"] = False
        return out

    def cpu_seconds(self) -> float | None:
        now = totals.process_cpu(self.pid if self.alive else None)
        return self._retired_cpu + now if now is not None else None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port(s), with the PKI's current files (and kept persistence)."""
        self._retired_cpu += totals.process_cpu(self.pid) or 0.0
        self._terminate()
        self._prepare()
        self._launch()
        try:
            self._wait_ready(timeout)
        except BrokerError:
            self._terminate()
            raise

    def stop(self) -> None:
        """Stop the process and delete the runtime directory; safe to call twice."""
        self._terminate()
        self._cleanup()

    def __enter__(self) -> MosquittoBroker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def control(broker: MosquittoBroker, admin: str, messages: Sequence[dict[str, Any]], timeout: float) -> float:
    """Publish dynamic-security control messages as the ``admin`` certificate and wait for every response."""
    import paho.mqtt.client as mqtt

    lay = broker.layout
    ctx = ssl.create_default_context(cafile=str(lay.ca_chain))
    ctx.load_cert_chain(lay.device_cert(admin), lay.device_key(admin))
    answered, pending = threading.Event(), [len(messages)]

    def on_response(*_: object) -> None:
        pending[0] -= 1
        if pending[0] <= 0:
            answered.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=admin)
    client.tls_set_context(ctx)
    client.on_message = on_response
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe(f"{DYNSEC_TOPIC}/response", qos=1)[0]
        started = time.perf_counter()
        for message in messages:
            client.publish(DYNSEC_TOPIC, json.dumps(message), qos=1)
        if not answered.wait(timeout):
            raise BrokerError(f"mosquitto's dynamic-security plugin did not answer within {timeout:g} s",
                              f"see {broker.files.log}")
        return time.perf_counter() - started
    finally:
        client.loop_stop()
        client.disconnect()


def start_mosquitto(pki_dir: Path | str, options: BrokerOptions = BrokerOptions(), *,
                    extras: Extras = Extras(), timeout: float = 10.0) -> MosquittoBroker:
    """Start Mosquitto as an mTLS broker over the PKI at ``pki_dir``; use as a context manager or stop()."""
    broker = MosquittoBroker(pki_dir, options, extras)
    try:
        return broker.start(timeout)
    except BaseException:
        broker.stop()
        raise


def _fix(failure: str) -> str:
    if ADDRESS_IN_USE in failure:
        return "another process holds the port: stop it or pick another port"
    return "the generated config was rejected; this is a fleetsim bug, please report that line"
