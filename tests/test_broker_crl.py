"""Revocation and the CRL's lifecycle in the embedded broker (hole 5): real broker process, real TLS, CRLs
written by the project's PKI (or, for the attacks, signed with its keys and copied over crl.pem by hand)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from mqtt_raw import Raw, attempt, connect, connected, device_context

from fleetsim.broker.embedded.broker import start_embedded
from fleetsim.broker.handle import BrokerOptions
from fleetsim.errors import BrokerError
from fleetsim.pki import Pki, keys
from fleetsim.pki.certs import Issuer, crl

REVOKED = "certificate revoked"


def replace_crl(pki: Pki, pem: bytes) -> None:
    """What an operator's `cp` does: a new file version of crl.pem, behind the PKI's back."""
    tmp = pki.layout.crl.with_name(".crl.hand")
    tmp.write_bytes(pem)
    os.replace(tmp, pki.layout.crl)


def log_lines(path: Path, text: str) -> int:
    return sum(text in line for line in path.read_text().splitlines()) if path.exists() else 0


def test_revocation_is_enforced_before_revoke_returns(make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    pki = make_pki()
    devices = [d.id for d in pki.issue(8, prefix="rv")]
    bystander = devices.pop()
    with start_embedded(pki.root, BrokerOptions(port=0), log_file=tmp_path / "broker.log") as broker:
        waits, round_trips = [], []
        for victim in devices[:6]:
            live = connected(broker.port, device_context(pki, victim), victim)
            pki.revoke(device_ids=[victim])
            returned = time.perf_counter()
            seen = attempt(broker.port, device_context(pki, victim), victim)  # at once: no waiting, no retry
            waits.append(time.perf_counter() - returned)
            assert REVOKED in seen, f"{victim} right after revoke returned: {seen}"
            assert live.closed_within(0.5), "its live session was still open after revoke returned"
            assert [n.error for n in pki.notified] == [None] and pki.notified[0].crl_number == pki.inventory.crl_number
            round_trips.append(pki.notified[0].ms)
        assert attempt(broker.port, device_context(pki, bystander), bystander) == "connack 0"
        stats = broker.stats()
        assert stats["dropped_revoked"] == 6 and stats["crl"]["number"] == pki.inventory.crl_number
        print(f"notify round trips (ms): {[round(ms, 1) for ms in round_trips]}; "
              f"revoke returned -> refused handshake (ms): {[round(w * 1000, 1) for w in waits]}")
        cli = subprocess.run([sys.executable, "-c", "from fleetsim.cli import main; main()", "pki", "revoke",
                              str(pki.root), "--device", devices[6]], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert f"enforced by the embedded broker pid {broker.pid}" in cli.stdout
        assert REVOKED in attempt(broker.port, device_context(pki, devices[6]), devices[6])
    assert not list(pki.layout.brokers_dir.glob("*.json")), "the broker unregisters when it stops"


def test_expired_crl_is_renewed_before_the_broker_listens(make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    pki = make_pki()
    dev, = (d.id for d in pki.issue(1))
    pki.write_crl(valid_for=dt.timedelta(seconds=61))  # thisUpdate is backdated 60 s: nextUpdate in ~1 s
    time.sleep(2)
    old = pki.inventory.crl_number
    with start_embedded(pki.root, BrokerOptions(port=0), log_file=tmp_path / "broker.log") as broker:
        assert attempt(broker.port, device_context(pki, dev), dev) == "connack 0"
        crl_stats = broker.stats()["crl"]
        assert crl_stats["number"] > old and crl_stats["expires_in_s"] > 6 * 86400
    assert log_lines(tmp_path / "broker.log", "renewing it before listening") == 1


def test_crl_is_renewed_at_half_its_validity(make_pki: Callable[..., Pki]) -> None:
    pki = make_pki()
    dev, = (d.id for d in pki.issue(1))
    pki.write_crl(valid_for=dt.timedelta(seconds=75))  # 60 s backdated: past half already, ~15 s left
    old = pki.inventory.crl_number
    with start_embedded(pki.root, BrokerOptions(port=0)) as broker:
        deadline = time.monotonic() + 5
        while broker.stats()["crl"]["number"] == old and time.monotonic() < deadline:
            time.sleep(0.1)
        crl_stats = broker.stats()["crl"]
        assert crl_stats["number"] == old + 1 and crl_stats["renewals"] == 1
        assert crl_stats["expires_in_s"] > 6 * 86400
        assert attempt(broker.port, device_context(pki, dev), dev) == "connack 0"


def test_loud_warning_before_and_at_expiry_when_it_cannot_renew(make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    pki = make_pki()
    pki.write_crl(valid_for=dt.timedelta(seconds=63))  # ~3 s left: inside the last quarter
    log = tmp_path / "broker.log"
    with start_embedded(pki.root, BrokerOptions(port=0, renew_crl=False), log_file=log):
        time.sleep(4.5)
    assert log_lines(log, "expires at") == 1
    assert log_lines(log, "OpenSSL now refuses EVERY device") == 1


def _refused_and_kept(pki: Pki, tmp_path: Path, bad_pem: bytes, reason: str) -> None:
    victim, bystander = (d.id for d in pki.issue(2, prefix="k"))
    log = tmp_path / "broker.log"
    with start_embedded(pki.root, BrokerOptions(port=0), log_file=log) as broker:
        pki.revoke(device_ids=[victim])
        number = pki.inventory.crl_number
        replace_crl(pki, bad_pem)
        time.sleep(1.0)  # five polls
        assert REVOKED in attempt(broker.port, device_context(pki, victim), victim)
        assert attempt(broker.port, device_context(pki, bystander), bystander) == "connack 0"
        crl_stats = broker.stats()["crl"]
        assert crl_stats["number"] == number and crl_stats["errors"] >= 1
        assert reason in (crl_stats["last_refusal"] or "")
    assert log_lines(log, "refused:") == 1, "warned once per file version"


def test_older_crl_copied_over_is_refused(make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    pki = make_pki()
    old = pki.layout.crl.read_bytes()  # CRL #1, no entries
    _refused_and_kept(pki, tmp_path, old, "went back")


def test_crl_of_another_ca_is_refused(make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    pki = make_pki()
    rogue = Issuer(x509.load_pem_x509_certificate(pki.layout.rogue_ca.read_bytes()),
                   keys.from_pem(pki.layout.rogue_key.read_bytes()))
    forged = crl(rogue, [], number=99, this_update=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))
    _refused_and_kept(pki, tmp_path, forged.public_bytes(Encoding.PEM), "not signed by the issuing CA")


def test_crl_with_a_broken_signature_is_refused(make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    pki = make_pki()
    issuing = Issuer(x509.load_pem_x509_certificate(pki.layout.issuing_ca.read_bytes()),
                     keys.from_pem(pki.layout.issuing_key.read_bytes()))
    good = crl(issuing, [], number=99, this_update=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))
    der = bytearray(good.public_bytes(Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    import base64

    body = base64.encodebytes(bytes(der)).replace(b"\n", b"")
    pem = b"-----BEGIN X509 CRL-----\n" + b"\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + \
        b"\n-----END X509 CRL-----\n"
    _refused_and_kept(pki, tmp_path, pem, "not signed by the issuing CA")


def test_corrupt_crl_is_warned_about_once(make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    pki = make_pki()
    _refused_and_kept(pki, tmp_path, b"-----BEGIN X509 CRL-----\nnot base64\n", "not a CRL")


def test_crl_older_than_the_pki_at_start(make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    """A rolled-back crl.pem found at start: renewed from the inventory, or, not allowed to, a one-line error."""
    pki = make_pki()
    victim, = (d.id for d in pki.issue(1))
    old = pki.layout.crl.read_bytes()
    pki.revoke(device_ids=[victim])
    replace_crl(pki, old)
    with pytest.raises(BrokerError, match="older than the PKI's latest") as info:
        start_embedded(pki.root, BrokerOptions(port=0, renew_crl=False)).stop()
    assert "\n" not in str(info.value) and "fleetsim pki crl" in str(info.value)
    with start_embedded(pki.root, BrokerOptions(port=0)) as broker:
        assert REVOKED in attempt(broker.port, device_context(pki, victim), victim)


def test_notify_skips_dead_and_foreign_registrations(make_pki: Callable[..., Pki]) -> None:
    from fleetsim.pki import notify

    pki = make_pki()
    d = pki.layout.brokers_dir
    d.mkdir(parents=True)
    (d / "1-1.json").write_text('{"pid": 999999999, "url": "http://127.0.0.1:1/reload-crl"}')
    (d / "2-2.json").write_text(f'{{"pid": {os.getpid()}, "url": "http://192.0.2.1:80/reload-crl"}}')
    assert notify.notify(pki.layout) == []
    assert not (d / "1-1.json").exists() and (d / "2-2.json").exists()  # dead pid removed, remote never called


def test_notify_trusts_only_the_broker_that_registered(make_pki: Callable[..., Pki]) -> None:
    """kill -9 leaves a broker's registration behind, and later something else answers on its port: another
    HTTP server, or another broker. Neither is taken for the registered broker: not trusted, the file removed."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from fleetsim.pki import notify

    class Impostor(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b'{"crl": {"number": 99}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    pki = make_pki()
    d = pki.layout.brokers_dir
    d.mkdir(parents=True)

    def stale(name: str, port: int, token: str) -> Path:
        path = d / name  # its pid alive (ours), its port answering
        path.write_text(json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{port}/reload-crl/{token}",
                                    "token": token}))
        return path

    impostor = HTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        with start_embedded(pki.root, BrokerOptions(port=0)) as broker:
            assert broker.stats_port is not None
            files = [stale("1-1.json", impostor.server_address[1], "0" * 32),
                     stale("2-2.json", broker.stats_port, "1" * 32)]  # the broker that had this port before
            answers = notify.notify(pki.layout)
            assert [n.pid for n in answers if n.error is None] == [broker.pid]
            assert len(answers) == 3 and not any(f.exists() for f in files)
            assert sum(n.stale for n in answers) == 2
    finally:
        impostor.shutdown()


# --- Mosquitto: its supervisor judges the CRL the same way (Mosquitto itself loads whatever the CA signed) -------
needs_mosquitto = pytest.mark.skipif(not os.access("/usr/sbin/mosquitto", os.X_OK), reason="mosquitto missing")


@needs_mosquitto
def test_mosquitto_keeps_its_crl_when_an_older_one_is_copied_over(make_pki: Callable[..., Pki]) -> None:
    from fleetsim.broker.mosquitto.broker import start_mosquitto

    pki = make_pki()
    victim, bystander = (d.id for d in pki.issue(2))
    old = pki.layout.crl.read_bytes()
    with start_mosquitto(pki.root, BrokerOptions(port=0)) as broker:
        pki.revoke(device_ids=[victim])
        broker.reload_crl()
        assert REVOKED in attempt(broker.port, device_context(pki, victim, tls="1.2"), victim)
        replace_crl(pki, old)
        broker.reload_crl()
        assert REVOKED in attempt(broker.port, device_context(pki, victim, tls="1.2"), victim)
        assert attempt(broker.port, device_context(pki, bystander), bystander) == "connack 0"
        assert broker.stats()["crl"]["refused"] == 1


@needs_mosquitto
def test_mosquitto_starts_with_a_renewed_crl_when_the_old_one_expired(make_pki: Callable[..., Pki]) -> None:
    from fleetsim.broker.mosquitto.broker import start_mosquitto

    pki = make_pki()
    dev, = (d.id for d in pki.issue(1))
    pki.write_crl(valid_for=dt.timedelta(seconds=61))
    time.sleep(2)
    with start_mosquitto(pki.root, BrokerOptions(port=0)) as broker:
        assert attempt(broker.port, device_context(pki, dev), dev) == "connack 0"
        assert broker.stats()["crl"]["number"] == Pki.open(pki.root).inventory.crl_number


TORN_CRLS = ("empty", "truncated", "garbage")


def torn_crl(pki: Pki, kind: str) -> bytes:
    """A crl.pem that is no CRL: empty, cut in the middle (a copy interrupted), or garbage."""
    return {"empty": b"", "truncated": pki.layout.crl.read_bytes()[:150], "garbage": b"\x00\xffnot a CRL\n"}[kind]


@needs_mosquitto
@pytest.mark.parametrize("kind", TORN_CRLS)
def test_mosquitto_keeps_its_crl_when_crl_pem_is_torn(make_pki: Callable[..., Pki], kind: str) -> None:
    """Issue 23 item 6, the library path: a torn crl.pem is a refusal like any other, not an error."""
    from fleetsim.broker.mosquitto.broker import start_mosquitto

    pki = make_pki()
    victim, bystander = (d.id for d in pki.issue(2))
    with start_mosquitto(pki.root, BrokerOptions(port=0, renew_crl=False)) as broker:
        pki.revoke(device_ids=[victim])
        broker.reload_crl()
        number = broker.stats()["crl"]["number"]
        replace_crl(pki, torn_crl(pki, kind))
        broker.reload_crl()
        broker.reload_crl()  # the same file version again: counted, not warned again
        assert broker.alive
        assert REVOKED in attempt(broker.port, device_context(pki, victim, tls="1.2"), victim)
        assert attempt(broker.port, device_context(pki, bystander), bystander) == "connack 0"
        assert broker.stats()["crl"] == {"number": number, "refused": 2}
        broker.restart()  # comes back with the CRL it had (renew_crl=False: nothing rewrites the file)
        assert REVOKED in attempt(broker.port, device_context(pki, victim, tls="1.2"), victim)


@needs_mosquitto
def test_mosquitto_supervisor_survives_a_torn_crl(make_pki: Callable[..., Pki]) -> None:
    """Issue 23 item 6: `fleetsim broker run --kind mosquitto` kept serving with its last good CRL while crl.pem
    was torn (written atomically), said why once, then applied the next good CRL."""
    pki = make_pki()
    victim, bystander = (d.id for d in pki.issue(2))
    proc = subprocess.Popen([sys.executable, "-c", "from fleetsim.cli import main; main()", "broker", "run",
                             str(pki.root), "--kind", "mosquitto", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split("mqtts://127.0.0.1:")[1].split(" ")[0])
        assert attempt(port, device_context(pki, bystander), bystander) == "connack 0"
        replace_crl(pki, torn_crl(pki, "truncated"))
        time.sleep(1.2)  # two of its 0.5 s polls
        assert proc.poll() is None, "the supervisor must keep running"
        assert attempt(port, device_context(pki, bystander), bystander) == "connack 0"
        pki.revoke(device_ids=[victim])  # a good new CRL: applied
        time.sleep(1.2)
        assert REVOKED in attempt(port, device_context(pki, victim, tls="1.2"), victim)
        assert attempt(port, device_context(pki, bystander), bystander) == "connack 0"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert err.count("refused: not a CRL") == 1, err


# --- hole 7: resumption is off unless tickets are on ---------------------------------------------------------
def _resume_twice(port: int, ctx: object, dev: str) -> tuple[bool, str]:
    """A TLS 1.2 session id offered again: (resumed?, what the second connection got)."""
    import ssl

    first = Raw(port, ctx)  # type: ignore[arg-type]
    first.send(connect(dev))
    assert first.connack() == (0, 0)
    session = first.sock.session
    first.close()
    second = Raw(port, ctx, session=session)  # type: ignore[arg-type]
    resumed = second.sock.session_reused
    second.send(connect(dev))
    try:
        ack = second.connack()
    except (TimeoutError, ssl.SSLError):
        ack = None
    return bool(resumed), "closed" if ack is None else f"connack {ack[1]}"


@pytest.mark.parametrize("tickets", [False, True])
def test_tls12_session_resumption_only_with_tickets(make_pki: Callable[..., Pki], tickets: bool) -> None:
    pki = make_pki()
    dev, = (d.id for d in pki.issue(1))
    with start_embedded(pki.root, BrokerOptions(port=0, session_tickets=tickets)) as broker:
        ctx = device_context(pki, dev, tls="1.2")
        resumed, seen = _resume_twice(broker.port, ctx, dev)
        if tickets:
            assert resumed and seen == "connack 0"
        else:  # Python's ssl has no switch for OpenSSL's server session cache: a resumed session is closed
            assert not resumed or seen == "closed", (resumed, seen)
            assert broker.stats()["rejected"].get("resumed session (resumption is off)", 0) == (1 if resumed else 0)
