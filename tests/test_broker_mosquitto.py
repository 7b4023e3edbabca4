"""Mosquitto over a fleetsim PKI: real broker, real TLS, certificates issued at test time."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_raw import connected, device_context
from paho.mqtt.enums import CallbackAPIVersion

from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.mosquitto import broker as mosq
from fleetsim.broker.mosquitto.broker import LogTally, MosquittoBroker, start_mosquitto
from fleetsim.broker.mosquitto.config import Extras, RuntimeFiles, render, render_acl
from fleetsim.errors import BrokerError
from fleetsim.names import TLS12_CIPHERS, TLS13_SUITES
from fleetsim.pki import Layout, Pki

pytestmark = pytest.mark.mosquitto
needs_binary = pytest.mark.skipif(not os.access("/usr/sbin/mosquitto", os.X_OK),
                                  reason="/usr/sbin/mosquitto missing (apt-get install mosquitto)")
needs_clients = pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients missing")
OBSERVER = "observer-00001"


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki.init(tmp_path_factory.mktemp("pki") / "pki")
    p.issue(4, prefix="dev")
    p.issue(1, prefix="observer")
    p.issue(1, prefix="revoked")
    for fault in ("expired", "not-yet-valid", "unknown-ca", "wrong-key", "cn-mismatch"):
        p.issue(1, prefix=fault, fault=fault)
    p.revoke(device_ids=["revoked-00001"])
    return p


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[MosquittoBroker]:
    if not os.access("/usr/sbin/mosquitto", os.X_OK):
        pytest.skip("/usr/sbin/mosquitto missing")
    with start_mosquitto(pki.root, BrokerOptions(port=0), extras=Extras(acl_readers=(OBSERVER,))) as b:
        yield b


def _ctx(pki: Pki, device: str | None, max_tls: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.layout.ca_chain))
    if max_tls is not None:
        ctx.maximum_version = max_tls
    if device is not None:
        ctx.load_cert_chain(pki.layout.device_cert(device), pki.layout.device_key(device))
    return ctx


def connect_bytes(client_id: str, keepalive: int = 30) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, built by hand."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def mqtt_connect(port: int, ctx: ssl.SSLContext, client_id: str) -> str:
    """One device connection: 'connack <rc>' or the TLS error the device saw (the broker's alert)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(connect_bytes(client_id))
                reply = tls.recv(4)
                return f"connack {reply[3]}" if len(reply) == 4 and reply[0] == 0x20 else "eof"
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused: {exc}"


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    """The broker logs a refusal after the device has seen it: poll briefly."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- pure parts ---------------------------------------------------------------------------------------------
def test_render_mtls_listener(tmp_path: Path) -> None:
    text = render(BrokerOptions(port=1883, tls_version="1.3"), RuntimeFiles(tmp_path))
    for line in ("listener 1883 127.0.0.1", "require_certificate true", "use_identity_as_username true",
                 "set_tcp_nodelay true", "max_connections -1", "tls_version tlsv1.3", "persistence false",
                 f"crlfile {tmp_path}/crl.pem", f"log_dest file {tmp_path}/mosquitto.log", "allow_anonymous false",
                 f"acl_file {tmp_path}/acl", "log_type information", "max_packet_size 65536"):
        assert line in text.splitlines(), line


def test_mosquitto_is_given_the_embedded_brokers_cipher_suites(tmp_path: Path) -> None:
    text = render(BrokerOptions(port=1883), RuntimeFiles(tmp_path)).splitlines()
    template = (Path(__file__).parent.parent / "brokers" / "mosquitto.conf.template").read_text().splitlines()
    for line in (f"ciphers {TLS12_CIPHERS}", f"ciphers_tls1.3 {TLS13_SUITES}"):
        assert line in text and line in template, line


def test_render_baselines(tmp_path: Path) -> None:
    files = RuntimeFiles(tmp_path)
    server_only = render(BrokerOptions(port=1, require_certificate=False, plain_port=2), files).splitlines()
    assert "require_certificate false" in server_only
    assert "use_identity_as_username true" not in server_only
    assert "listener 2 127.0.0.1" in server_only and server_only.count("allow_anonymous true") == 2
    pw = render(BrokerOptions(port=1, password_file=tmp_path / "pw"), files, Extras(persistence=True)).splitlines()
    assert f"password_file {tmp_path}/passwords" in pw and "use_identity_as_username true" not in pw
    assert f"persistence_location {tmp_path}/persistence/" in pw
    assert "tls_version" not in "\n".join(pw)  # "any": Mosquitto's default, TLS 1.2 and 1.3
    with pytest.raises(ValueError):
        render(BrokerOptions(port=0), files)


def test_render_acl() -> None:
    acl = render_acl(readers=("obs",), devices=[("ox-1", "pulse-oximeter")]).splitlines()
    assert "pattern read fleet/+/+/%u/#" in acl and acl[-3:] == ["user obs", "topic read #", "topic read $SYS/#"]
    assert acl[acl.index("user ox-1") + 1] == "topic write fleet/+/pulse-oximeter/ox-1/#"  # Mosquitto has no %m
    assert "pattern readwrite fleet/+/+/%u/#" in render_acl(devices=None).splitlines()  # past MODEL_ACL_LIMIT
    assert render_acl(("a/%u/#",)).splitlines()[1:] == ["pattern readwrite a/%u/#"]


def test_log_tally_counts_reasons() -> None:
    tally = LogTally()
    for line in [
        "T: New client connected from 127.0.0.1:1 as dev-1 (p2, c1, k60, u'dev-1').",
        "T: New client connected from 127.0.0.1:2 as dev-2 (p2, c1, k60, u'dev-2-imposter').",
        "T: OpenSSL Error[0]: error:0A0000C7:SSL routines::peer did not return a certificate",
        "T: Client <unknown> disconnected: Protocol error.",
        "T: OpenSSL Error[0]: error:0A000126:SSL routines::unexpected eof while reading",
        "T: Client dev-1 closed its connection.",  # a connected device leaving rudely: not a refusal
        "T: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
        "T: Client <unknown> disconnected: Protocol error.",
        "T: Client connection from 127.0.0.1 failed: error:0A000086:SSL routines::certificate verify failed.",
        "T: Reloading config.",
    ]:
        tally.feed(line)
    d = tally.as_dict()
    assert (d["accepted"], d["identity_mismatch"], d["disconnected"], d["reloads"]) == (2, 1, 1, 1)
    assert d["rejected"] == {"no-certificate": 1, "certificate-verify-failed": 2}


def test_not_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mosq.shutil, "which", lambda _: None)
    monkeypatch.setattr(mosq, "BINARY_CANDIDATES", ())
    with pytest.raises(BrokerError, match=r"apt-get install mosquitto"):
        mosq.find_binary()


# -- a real broker --------------------------------------------------------------------------------------------
@needs_binary
def test_missing_pki_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BrokerError) as err:
        start_mosquitto(tmp_path / "nope", BrokerOptions(port=0))
    assert "no usable PKI" in str(err.value) and "fleetsim pki init" in str(err.value)
    assert "\n" not in str(err.value)


@needs_binary
def test_port_in_use_is_one_line(pki: Pki) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BrokerError) as err:
            start_mosquitto(pki.root, BrokerOptions(port=port))
    msg = str(err.value)
    assert "Address already in use" in msg and str(port) in msg and "\n" not in msg


@needs_binary
def test_runtime_files_private_and_pki_untouched(pki: Pki, broker: MosquittoBroker) -> None:
    key = broker.files.keyfile
    assert key.stat().st_mode & 0o777 == 0o600
    assert broker.files.root.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:  # Mosquitto drops to its own user: it owns its copies, nothing else changed
        import pwd
        assert key.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
        assert pki.layout.server_key.stat().st_uid == 0
    assert pki.layout.device_key("dev-00001").stat().st_mode & 0o777 == 0o600
    assert broker.stats()["open_files_limit"] >= 1024


@needs_binary
@needs_clients
def test_valid_device_publishes_with_mosquitto_clients(pki: Pki, broker: MosquittoBroker) -> None:
    lay, dev, topic = pki.layout, "dev-00001", "fleet/site-1/generic/dev-00001/telemetry"
    tls = ["-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(lay.ca_chain)]
    pub = subprocess.run(["mosquitto_pub", *tls, "--cert", str(lay.device_cert(dev)), "--key",
                          str(lay.device_key(dev)), "-i", dev, "-t", topic, "-m", "72bpm", "-q", "1", "-r"],
                         capture_output=True, text=True, timeout=10)
    assert pub.returncode == 0, pub.stderr
    sub = subprocess.run(["mosquitto_sub", *tls, "--cert", str(lay.device_cert(OBSERVER)), "--key",
                          str(lay.device_key(OBSERVER)), "-i", OBSERVER, "-t", "fleet/#", "-C", "1", "-W", "5", "-v"],
                         capture_output=True, text=True, timeout=10)
    assert sub.stdout.strip() == f"{topic} 72bpm", sub.stderr
    subprocess.run(["mosquitto_pub", *tls, "--cert", str(lay.device_cert(dev)), "--key", str(lay.device_key(dev)),
                    "-i", dev, "-t", topic, "-n", "-r"], check=True, timeout=10)  # clear the retained message


@needs_binary
def test_valid_device_with_paho(pki: Pki, broker: MosquittoBroker) -> None:
    dev = "dev-00002"
    topic = f"fleet/site-1/generic/{dev}/telemetry"
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev)
    client.tls_set_context(_ctx(pki, dev))

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)[0]
        time.sleep(0.1)
        client.publish(topic, b"spo2=98", qos=1).wait_for_publish(5)
        assert done.wait(5) and got == [b"spo2=98"]
    finally:
        client.disconnect()
        client.loop_stop()


# The reason a refused device sees. TLS 1.2 here: in TLS 1.3 the client's handshake completes before the
# server judges its certificate, and the alert may be lost to a reset when the CONNECT bytes cross it.
REFUSALS = [
    (None, "alert handshake failure"),  # no certificate at all
    ("unknown-ca-00001", "alert unknown ca"),
    ("expired-00001", "alert certificate expired"),
    ("not-yet-valid-00001", "alert bad certificate"),  # OpenSSL sends no more precise alert for notBefore
    ("revoked-00001", "alert certificate revoked"),
]


@needs_binary
@pytest.mark.parametrize(("device", "reason"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_refused_with_reason(pki: Pki, broker: MosquittoBroker, device: str | None, reason: str) -> None:
    before = broker.stats()["rejected_total"]
    result = mqtt_connect(broker.port, _ctx(pki, device, ssl.TLSVersion.TLSv1_2), device or "nobody")
    assert result.startswith("refused") and reason in result, result
    assert wait_for(lambda: broker.stats()["rejected_total"] == before + 1)


@needs_binary
def test_refused_over_tls13_too(pki: Pki, broker: MosquittoBroker) -> None:
    result = mqtt_connect(broker.port, _ctx(pki, "revoked-00001"), "revoked-00001")
    assert result.startswith("refused") or result == "eof", result  # alert, or EOF when a reset ate it


@needs_binary
@needs_clients
def test_refused_with_mosquitto_pub(pki: Pki, broker: MosquittoBroker) -> None:
    lay, dev = pki.layout, "revoked-00001"
    pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(lay.ca_chain),
                          "--cert", str(lay.device_cert(dev)), "--key", str(lay.device_key(dev)), "-i", dev,
                          "-t", f"fleet/s/m/{dev}/t", "-m", "x", "--tls-version", "tlsv1.2"],
                         capture_output=True, text=True, timeout=10)
    assert pub.returncode != 0, pub.stderr  # mosquitto_pub names no reason: "A TLS error occurred" or similar


def test_wrong_key_never_reaches_the_broker(pki: Pki) -> None:
    """A certificate with someone else's key cannot even be loaded: OpenSSL refuses before any handshake."""
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        _ctx(pki, "wrong-key-00001")


@needs_binary
@needs_clients
def test_cn_mismatch_accepted_at_connect_but_confined_by_acl(pki: Pki, broker: MosquittoBroker) -> None:
    """Mosquitto 2.0 cannot refuse a client id that differs from the CN at CONNECT (no such option; the
    will topic is not checked there either). The CN is the username, and the ACL confines topics to it:
    the imposter cannot publish as the device it claims to be. MQTT 5 says so in PUBACK; 3.1.1 drops silently."""
    dev = "cn-mismatch-00001"
    before = broker.stats()["identity_mismatch"]
    assert mqtt_connect(broker.port, _ctx(pki, dev), dev) == "connack 0"
    lay = pki.layout
    pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(lay.ca_chain),
                          "--cert", str(lay.device_cert(dev)), "--key", str(lay.device_key(dev)), "-i", dev,
                          "-V", "5", "-q", "1", "-t", f"fleet/site-1/generic/{dev}/telemetry", "-m", "x"],
                         capture_output=True, text=True, timeout=10)
    assert "Not authorized" in pub.stderr, pub.stderr
    assert wait_for(lambda: broker.stats()["identity_mismatch"] >= before + 2)  # the broker-side count names it


@needs_binary
def test_revoke_while_running(pki: Pki, broker: MosquittoBroker) -> None:
    victim, bystander, live = "dev-00003", "dev-00004", "dev-00001"
    holder = _ctx(pki, live).wrap_socket(socket.create_connection(("127.0.0.1", broker.port)),
                                         server_hostname="localhost")
    holder.sendall(connect_bytes(live))
    assert holder.recv(4)[3] == 0
    assert mqtt_connect(broker.port, _ctx(pki, victim, ssl.TLSVersion.TLSv1_2), victim) == "connack 0"
    t0 = time.monotonic()
    pki.revoke(device_ids=[victim])
    broker.reload_crl()
    result = mqtt_connect(broker.port, _ctx(pki, victim, ssl.TLSVersion.TLSv1_2), victim)
    assert time.monotonic() - t0 < 1.0
    assert "alert certificate revoked" in result, result
    assert mqtt_connect(broker.port, _ctx(pki, bystander), bystander) == "connack 0"
    holder.sendall(b"\xc0\x00")  # PINGREQ: Mosquitto keeps live sessions of revoked or not, this one is fine
    assert holder.recv(2) == b"\xd0\x00"
    holder.close()
    assert broker.stats()["reloads"] >= 1


@needs_binary
def test_server_only_tls_and_plain_baselines(pki: Pki) -> None:
    opts = BrokerOptions(port=0, require_certificate=False, plain_port=0)
    with start_mosquitto(pki.root, opts) as b:
        assert mqtt_connect(b.port, _ctx(pki, None), "anyone") == "connack 0"
        assert b.options.plain_port
        with socket.create_connection(("127.0.0.1", b.options.plain_port), timeout=5) as s:
            s.sendall(connect_bytes("plain"))
            assert s.recv(4) == b"\x20\x02\x00\x00"


@needs_binary
def test_restart_same_port_and_death_is_visible(pki: Pki) -> None:
    with start_mosquitto(pki.root, BrokerOptions(port=0, tls_version="1.3"),
                         extras=Extras(persistence=True)) as b:
        port, pid = b.port, b.pid
        b.restart()
        assert (b.port, b.alive) == (port, True) and b.pid != pid
        assert Layout(pki.root).is_pki() and b.files.persistence.is_dir()
        assert mqtt_connect(b.port, _ctx(pki, "dev-00002"), "dev-00002") == "connack 0"
        stats = b.stats()
        assert stats["cpu_seconds"] >= 0 and stats["accepted"] >= 1
        os.kill(b.pid or 0, 9)
        time.sleep(0.1)
        assert not b.alive and b.stats()["alive"] is False
        with pytest.raises(BrokerError, match="not running"):
            b.reload_crl()
    assert not b.files.root.exists()
    b.stop()  # twice is fine


@needs_binary
@pytest.mark.skipif(shutil.which("mosquitto_ctrl") is None, reason="mosquitto_ctrl missing")
def test_dynsec_opt_in_cuts_live_sessions_by_certificate_cn(tmp_path: Path) -> None:
    """Opt-in: the dynamic-security plugin, administered by a certificate identity, kicks live sessions by CN.
    It does not bind the client id (a device still connects as anyone) and does not keep a kicked one out."""
    p = Pki.init(tmp_path / "pki")
    p.issue(4)
    p.issue_monitor("dynsec-admin")
    with start_mosquitto(p.root, BrokerOptions(port=0), extras=Extras(dynsec_admin="dynsec-admin")) as b:
        live = {}
        for dev in ("dev-00001", "dev-00002", "dev-00003"):
            live[dev] = _ctx(p, dev).wrap_socket(socket.create_connection(("127.0.0.1", b.port)),
                                                 server_hostname="localhost")
            live[dev].sendall(connect_bytes(dev))
            assert live[dev].recv(4)[3] == 0
        # ~70 KB of names, over max_packet_size in one message: split (KICKS_PER_MESSAGE), the last one cut too
        seconds = b.disconnect(["dev-00001", *(f"gone-device-with-a-long-name-{i:05d}" for i in range(450)), "dev-00002"])
        assert seconds < 10
        for dev, expect_closed in (("dev-00001", True), ("dev-00002", True), ("dev-00003", False)):
            live[dev].settimeout(2)
            live[dev].sendall(b"\xc0\x00")
            try:
                got = live[dev].recv(2)
            except (ConnectionError, ssl.SSLError):
                got = b""
            assert (got == b"") is expect_closed, dev
            live[dev].close()
        assert mqtt_connect(b.port, _ctx(p, "dev-00001"), "dev-00001") == "connack 0"  # not kept out: the CRL must
        assert mqtt_connect(b.port, _ctx(p, "dev-00004"), "someone-else") == "connack 0"  # client id not bound
        assert "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so" in b.files.config.read_text()


@needs_binary
def test_a_device_issued_after_the_start_gets_its_models_acl_line(make_pki: Callable[..., Pki]) -> None:
    """Mosquitto binds the model level with one ACL section per device: one issued while it runs can read but not
    publish until the ACL is written again (`broker run` does when the inventory changes)."""
    p = make_pki()
    p.issue(1, prefix="dev")
    with start_mosquitto(p.root, BrokerOptions(port=0)) as b:
        assert not b.reload_acl()  # nothing new: no SIGHUP
        (late,) = p.issue(1, prefix="late", model="thermometer")
        conn = connected(b.port, device_context(p, late.id), late.id)
        assert conn.subscribe(f"fleet/+/+/{late.id}/#") == [1]
        topic = f"fleet/ward-1/thermometer/{late.id}/telemetry"
        assert not conn.echo(topic, b"before")
        assert b.reload_acl()
        assert conn.echo(topic, b"after")
        conn.close()


def test_a_killed_runs_runtime_directory_is_swept_at_the_next_start(tmp_path: Path) -> None:
    """Each Mosquitto's private directory holds a copy of the server key; a SIGKILLed orchestrator never removes
    its own. The next broker removes those whose owner is gone, and nothing else."""
    never_a_pid = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids stay below it
    stale, live, unknown = (tmp_path / f"{mosq.RUNTIME_PREFIX}{n}" for n in ("stale", "live", "unknown"))
    for d in (stale, live, unknown):
        d.mkdir()
        (d / "server-key.pem").write_text("key")
    (stale / mosq.OWNER_FILE).write_text(str(never_a_pid))
    (live / mosq.OWNER_FILE).write_text(str(os.getpid()))
    assert mosq.sweep_stale_runtime_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and unknown.is_dir()
