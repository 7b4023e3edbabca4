"""Telling the brokers that serve a PKI that its CRL changed, and hearing back that they enforce it.

A broker started from a PKI directory (the embedded broker, in-process or as its own process) registers under
``DIR/run/brokers/<pid>-<port>.json`` with the loopback URL of its reload endpoint and a random token of its own,
which is part of that URL and which its answer carries back as ``registration``. A broker killed with -9 leaves
its file behind: whatever answers on that port later (another server, another broker) does not know the token,
so it is not taken for the registered broker and the stale file is removed. Whatever rewrites the CRL
through the PKI (revoke, reenroll, crl) then POSTs there and waits: the broker answers only once its new TLS
context serves the next handshake and it has closed the live sessions of newly revoked devices. So
``Pki.revoke`` returns after a local broker enforces the revocation. A broker that is not registered (Mosquitto,
one on another machine) sees the new file on its own terms: the embedded broker polls it every 0.2 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fleetsim.pki.layout import Layout, write_file

TIMEOUT_S = 5.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Notified:
    """One broker's answer: the CRL number it enforces now, or why it did not answer."""

    pid: int
    url: str
    ms: float
    crl_number: int | None = None
    error: str | None = None
    stale: bool = False  # the registration named no broker any more, and was removed


def register(layout: Layout, url: str, token: str) -> Path:
    """Announce a broker serving this PKI (``url``: its loopback POST endpoint, ``token``: what its answer carries
    as ``registration``). Returns the file to unregister."""
    port = urlsplit(url).port or 0
    path = layout.brokers_dir / f"{os.getpid()}-{port}.json"
    write_file(path, json.dumps({"pid": os.getpid(), "url": url, "token": token, "started": time.time()}).encode())
    return path


def unregister(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def notify(layout: Layout, timeout: float = TIMEOUT_S) -> list[Notified]:
    """POST every registered broker's reload endpoint and wait for each; stale registrations are removed."""
    directory = layout.brokers_dir
    if not directory.is_dir():
        return []
    answers = []
    for path in sorted(directory.glob("*.json")):
        try:
            entry = json.loads(path.read_bytes())
            pid, url, token = int(entry["pid"]), str(entry["url"]), entry.get("token")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # being written, or not ours
        if not _alive(pid):
            unregister(path)
            continue
        if urlsplit(url).hostname not in LOOPBACK or not isinstance(token, str):
            continue  # never send anything off this machine on the strength of a file, nor trust one without token
        answers.append(_post(path, pid, url, token, timeout))
    return answers


def _post(path: Path, pid: int, url: str, token: str, timeout: float) -> Notified:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=timeout) as response:
            stats = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        stale = isinstance(exc, urllib.error.HTTPError) \
            or isinstance(getattr(exc, "reason", exc), ConnectionRefusedError)
        if stale:
            unregister(path)  # nothing listens there any more, or something that does not know the token
        return Notified(pid, url, (time.perf_counter() - started) * 1000, error=str(exc), stale=stale)
    ms = (time.perf_counter() - started) * 1000
    if not isinstance(stats, dict) or stats.get("registration") != token:
        unregister(path)
        return Notified(pid, url, ms, error="another server answers there, not the registered broker",
                        stale=True)
    number = stats.get("crl", {}).get("number") if isinstance(stats.get("crl"), dict) else None
    return Notified(pid, url, ms, number if isinstance(number, int) else None)
