"""The embedded broker, for real: TLS with required client certificates on 127.0.0.1, certificates issued
at test time, devices played by Python's ssl, paho-mqtt and mosquitto_pub/mosquitto_sub."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fleetsim.broker.embedded import tls_context
from fleetsim.broker.embedded.auth import verify_mosquitto_hash
from fleetsim.broker.embedded.broker import EmbeddedBroker, EmbeddedProcess, start_embedded
from fleetsim.broker.embedded.mqtt_wire import Violation, parse_connect
from fleetsim.broker.handle import BrokerOptions
from fleetsim.errors import BrokerError
from fleetsim.pki import Layout, Pki

needs_mosquitto_clients = pytest.mark.skipif(shutil.which("mosquitto_pub") is None,
                                             reason="mosquitto-clients not installed")


# --- device side helpers ------------------------------------------------------------------------------------
def connect_packet(client_id: str, *, clean: bool = True, user: str | None = None, password: str | None = None) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c"
    for text in (client_id, user, password):
        if text is not None:
            body += len(text.encode()).to_bytes(2, "big") + text.encode()
    return bytes([0x10, len(body)]) + body


def device_context(pki: Pki, device_id: str | None, *, tls: str = "any") -> ssl.SSLContext:
    layout = Layout(pki.root)
    ctx = ssl.create_default_context(cafile=layout.ca_chain)
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if device_id is not None:
        ctx.load_cert_chain(layout.device_cert(device_id), layout.device_key(device_id))
    return ctx


def attempt(port: int, ctx: ssl.SSLContext, client_id: str, **connect: object) -> str:
    """One device connection: 'connack N' or the TLS error the device saw (handshake or first read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(connect_packet(client_id, **connect))  # type: ignore[arg-type]
                data = tls.recv(4)
        except ssl.SSLError as exc:
            return str(exc)
        except ConnectionError as exc:
            return f"connection error {exc}"
    return f"connack {data[3]}" if len(data) == 4 else "eof"


class LiveSession:
    """An open TLS + MQTT session held by a plain socket; `alive()` tells whether the broker still keeps it."""

    def __init__(self, port: int, ctx: ssl.SSLContext, client_id: str, *, clean: bool = True) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.sock.sendall(connect_packet(client_id, clean=clean))
        assert self.sock.recv(4) == b"\x20\x02\x00\x00"

    def alive(self) -> bool:
        try:
            self.sock.sendall(b"\xc0\x00")  # PINGREQ
            seen = b""
            while b"\xd0\x00" not in seen:  # other packets (e.g. retained PUBLISHes) may come first
                chunk = self.sock.recv(4096)
                if not chunk:
                    return False
                seen += chunk
            return True
        except (OSError, ssl.SSLError):
            return False

    def close(self) -> None:
        self.sock.close()


def mosquitto_args(pki: Pki, port: int, device_id: str | None, client_id: str | None = None) -> list[str]:
    layout = Layout(pki.root)
    args = ["-h", "127.0.0.1", "-p", str(port), "--cafile", str(layout.ca_chain)]
    if device_id is not None:
        args += ["--cert", str(layout.device_cert(device_id)), "--key", str(layout.device_key(device_id)),
                 "-i", client_id or device_id]
    return args


def mosquitto_pub(pki: Pki, port: int, device_id: str | None, client_id: str | None = None,
                  *extra: str) -> subprocess.CompletedProcess[str]:
    topic = f"fleet/site-1/generic/{device_id}/telemetry"  # a device's own topic
    cmd = ["mosquitto_pub", *mosquitto_args(pki, port, device_id, client_id), "-t", topic, "-m", "hi", "-d", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10)


def paho_client(pki: Pki, device_id: str, client_id: str | None = None) -> mqtt.Client:
    layout = Layout(pki.root)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or device_id)
    client.tls_set(ca_certs=str(layout.ca_chain), certfile=str(layout.device_cert(device_id)),
                   keyfile=str(layout.device_key(device_id)))
    return client


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[EmbeddedProcess]:
    """The embedded broker in its own process over the shared (read-only) PKI."""
    with start_embedded(pki.root, BrokerOptions(port=0)) as handle:
        yield handle


# --- pure logic ---------------------------------------------------------------------------------------------
def test_the_broker_takes_the_trust_domain_from_its_pki(pki: Pki, tmp_path: Path) -> None:
    assert tls_context.trust_domain(pki.layout) == pki.inventory.trust_domain
    assert tls_context.trust_domain(Layout(tmp_path)) is None  # no inventory: any trust domain


def test_connect_parsing_and_mosquitto_hashes() -> None:
    connect = parse_connect(connect_packet("dev-7", user="u", password="p")[2:])
    assert (connect.client_id, connect.username, connect.password) == ("dev-7", "u", b"p")
    with pytest.raises(Violation):
        parse_connect(b"\x00\x04MQ")
    line = "$7$101$b84v8OsJCRVni5uc$xYJKV+Rz6cJOmixb8V1Exzee7ujjnq+H3lqjtcE1pez7wQj6XwdwrQqjwFJNxxxias9Z2/qtvUx3uMYdOAMu1A=="
    assert verify_mosquitto_hash(line, b"s3cret") and not verify_mosquitto_hash(line, b"wrong")


# --- accepted devices -----------------------------------------------------------------------------------------
@needs_mosquitto_clients
def test_valid_device_publishes_paho_and_mosquitto(pki: Pki, broker: EmbeddedProcess) -> None:
    """Devices publish on their own topics (mosquitto_pub, paho); the monitor identity reads them all."""
    received: list[bytes] = []
    got = threading.Event()
    watcher = paho_client(pki, "monitor")
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(bytes(msg.payload))
        got.set()

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe("fleet/#", qos=1)

    watcher.on_message = on_message
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.on_connect = on_connect
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    device = paho_client(pki, "dev-00001")
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    retained = "fleet/site-1/generic/dev-00001/telemetry"
    try:
        assert subscribed.wait(5)
        result = mosquitto_pub(pki, broker.port, "dev-00002")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "received CONNACK (0)" in result.stdout
        assert got.wait(5) and received == [b"hi"]
        # paho, as a device, publishes a retained message on its own topic; mosquitto_sub, the monitor, reads it
        device.publish(retained, b"vitals", qos=1, retain=True).wait_for_publish(5)
        out = subprocess.run(["mosquitto_sub", *mosquitto_args(pki, broker.port, "monitor"), "-t", "fleet/#",
                              "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "vitals", out.stderr
        device.publish(retained, b"", qos=1, retain=True).wait_for_publish(5)  # clear it
    finally:
        for client in (watcher, device):
            client.loop_stop()
            client.disconnect()
    stats = broker.stats()
    assert stats["authorized"] >= 4 and stats["handshake_ms"]["count"] >= 4 and stats["cpu_seconds"] > 0


def test_a_device_is_confined_to_its_own_topics_and_the_monitor_reads_all(pki: Pki, broker: EmbeddedProcess) -> None:
    from mqtt_raw import connected

    device = connected(broker.port, device_context(pki, "dev-00003"), "dev-00003")
    monitor = connected(broker.port, device_context(pki, "monitor"), "monitor")
    assert device.subscribe("#", "fleet/+/+/dev-00003/#") == [0x80, 1]
    assert monitor.subscribe("#", "$SYS/#", "fleet/+/+/+/alarm") == [1, 1, 1]
    assert device.publish("fleet/site-1/generic/dev-00003/alarm", b"spo2 low")
    assert monitor.receives(b"spo2 low")
    before = broker.stats()["rejected"].get("publish not authorized", 0)
    monitor.publish("fleet/site-1/generic/dev-00003/alarm", b"forged by the monitor")
    assert not device.receives(b"forged by the monitor", timeout=0.5)
    assert broker.stats()["rejected"]["publish not authorized"] == before + 1
    device.close()
    monitor.close()


# --- refused devices: the device reads the reason -------------------------------------------------------------
@pytest.mark.parametrize(("device", "device_sees", "broker_says"), [
    (None, "certificate required", "peer did not return a certificate"),
    ("unknown-ca-00001", "unknown ca", "self-signed certificate in certificate chain"),
    ("expired-00001", "certificate expired", "certificate has expired"),
    ("not-yet-valid-00001", "bad certificate", "certificate is not yet valid"),
])
def test_refused_device_sees_alert(pki: Pki, broker: EmbeddedProcess, device: str | None, device_sees: str,
                                   broker_says: str) -> None:
    before = broker.stats()["rejected"].get(broker_says, 0)
    seen = attempt(broker.port, device_context(pki, device), device or "anonymous")
    assert device_sees in seen
    assert wait_for(lambda: broker.stats()["rejected"].get(broker_says, 0) == before + 1)


@needs_mosquitto_clients
def test_mosquitto_pub_sees_alert_reason(pki: Pki, broker: EmbeddedProcess) -> None:
    no_cert = mosquitto_pub(pki, broker.port, None, None, "-i", "anon")
    assert "certificate required" in no_cert.stdout + no_cert.stderr
    expired = mosquitto_pub(pki, broker.port, "expired-00001")
    assert "certificate expired" in expired.stdout + expired.stderr and expired.returncode != 0


def test_wrong_key_fails_on_the_device(pki: Pki, broker: EmbeddedProcess) -> None:
    """Key and certificate do not match: the device cannot even load its identity (classified device-side)."""
    with pytest.raises(ssl.SSLError, match=r"KEY_VALUES_MISMATCH|key values mismatch"):
        device_context(pki, "wrong-key-00001")
    if shutil.which("mosquitto_pub"):
        result = mosquitto_pub(pki, broker.port, "wrong-key-00001")
        assert result.returncode != 0 and "key values mismatch" in result.stdout + result.stderr


@needs_mosquitto_clients
def test_client_id_must_match_certificate(pki: Pki, broker: EmbeddedProcess) -> None:
    # the cn-mismatch device's certificate names "<id>-imposter"
    assert attempt(broker.port, device_context(pki, "cn-mismatch-00001"), "cn-mismatch-00001") == "connack 5"
    result = mosquitto_pub(pki, broker.port, "cn-mismatch-00001")
    assert result.returncode == 5 and "CONNACK (5)" in result.stdout
    client = paho_client(pki, "dev-00004", client_id="dev-00005")  # a valid device claiming another's id
    codes: list[object] = []
    done = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        codes.append(rc)
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert done.wait(5)
        assert str(codes[0]) == "Not authorized"
    finally:
        client.loop_stop()
    assert broker.stats()["rejected"]["client id mismatch"] >= 3


def test_identity_bound_from_new_connection_not_stored_session(pki: Pki, broker: EmbeddedProcess) -> None:
    """A persistent session keeps the old TLS object in amqtt: an imposter must still be refused, and must
    not disturb the real device's live session."""
    owner = LiveSession(broker.port, device_context(pki, "dev-00006"), "dev-00006", clean=False)
    try:
        imposter = device_context(pki, "dev-00007")
        assert attempt(broker.port, imposter, "dev-00006", clean=False) == "connack 5"
        assert attempt(broker.port, imposter, "dev-00006", clean=True) == "connack 5"
        assert owner.alive()
    finally:
        owner.close()
    time.sleep(0.1)
    assert attempt(broker.port, device_context(pki, "dev-00007"), "dev-00006", clean=False) == "connack 5"
    assert attempt(broker.port, device_context(pki, "dev-00006"), "dev-00006", clean=False) == "connack 0"


# --- revocation while the broker runs ------------------------------------------------------------------------
@needs_mosquitto_clients
def test_revocation_applies_within_a_second_and_drops_live_session(make_pki: Callable[..., Pki]) -> None:
    pki = make_pki()
    victim, bystander = (d.id for d in pki.issue(2, prefix="rv"))
    with start_embedded(pki.root, BrokerOptions(port=0)) as handle:
        live_victim = LiveSession(handle.port, device_context(pki, victim), victim)
        live_bystander = LiveSession(handle.port, device_context(pki, bystander), bystander)
        pki.revoke(device_ids=[victim])
        revoked_at = time.monotonic()
        assert wait_for(lambda: "certificate revoked" in attempt(handle.port, device_context(pki, victim), victim), 1.0)
        assert time.monotonic() - revoked_at < 1.0
        assert wait_for(lambda: not live_victim.alive(), 1.0)
        assert live_bystander.alive()
        assert attempt(handle.port, device_context(pki, bystander), bystander) == "connack 0"
        result = mosquitto_pub(pki, handle.port, victim)
        assert "certificate revoked" in result.stdout + result.stderr
        stats = handle.stats()
        assert stats["dropped_revoked"] >= 1 and stats["rejected"]["certificate revoked"] >= 2
        assert stats["crl"]["revoked_serials"] == 1 and stats["current_connections"] >= 1
        live_victim.close()
        live_bystander.close()


def test_revoked_over_tls12_and_keep_revoked(make_pki: Callable[..., Pki]) -> None:
    """TLS 1.2: the alert arrives during the handshake. --keep-revoked leaves live sessions alone."""
    pki = make_pki()
    victim, = (d.id for d in pki.issue(1, prefix="k"))
    with start_embedded(pki.root, BrokerOptions(port=0, tls_version="1.2", drop_revoked=False)) as handle:
        live = LiveSession(handle.port, device_context(pki, victim), victim)
        pki.revoke(device_ids=[victim])
        handle.reload_crl()
        assert "certificate revoked" in attempt(handle.port, device_context(pki, victim, tls="1.2"), victim)
        assert live.alive()
        live.close()


# --- in-process API, stats endpoint, restart, passwords, plain listener --------------------------------------
def test_async_api_and_stats_endpoint(pki: Pki, tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("alice:$7$101$b84v8OsJCRVni5uc$xYJKV+Rz6cJOmixb8V1Exzee7ujjnq+H3lqjtcE1pez7wQj6Xw"
                         "dwrQqjwFJNxxxias9Z2/qtvUx3uMYdOAMu1A==\n")

    async def scenario() -> dict[str, object]:
        options = BrokerOptions(port=0, password_file=passwords, plain_port=0)
        async with EmbeddedBroker(pki.root, options, stats_port=0) as b:
            assert b.port and b.plain_port and b.stats_port
            loop = asyncio.get_running_loop()
            ctx = device_context(pki, "dev-00008")
            ok = await loop.run_in_executor(None, lambda: attempt(b.port, ctx, "dev-00008", user="alice",
                                                                   password="s3cret"))
            bad = await loop.run_in_executor(None, lambda: attempt(b.port, ctx, "dev-00008", user="alice",
                                                                    password="nope"))
            plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", b.plain_port)
            plain_writer.write(connect_packet("anyone", user="alice", password="s3cret"))
            plain = await plain_reader.readexactly(4)
            plain_writer.close()
            b.reload_crl()
            url = f"http://127.0.0.1:{b.stats_port}/stats"
            http = await loop.run_in_executor(None, lambda: json.load(urllib.request.urlopen(url, timeout=5)))
            return {"ok": ok, "bad": bad, "plain": plain, "http": http, "api": b.stats()}

    out = asyncio.run(scenario())
    assert out["ok"] == "connack 0" and out["bad"] == "connack 4" and out["plain"] == b"\x20\x02\x00\x00"
    http = out["http"]
    assert isinstance(http, dict)
    assert http["rejected"]["bad username or password"] == 1 and http["crl"]["reloads"] == 1
    assert http["kind"] == "embedded" and http["accepted"] >= 2


def test_restart_comes_back_on_same_port(pki: Pki) -> None:
    with start_embedded(pki.root, BrokerOptions(port=0)) as handle:
        port = handle.port
        handle.restart()
        assert handle.port == port
        assert attempt(port, device_context(pki, "dev-00001"), "dev-00001") == "connack 0"
        assert handle.stats()["restarts"] == 1
    handle.stop()  # twice is fine


# --- bad configuration: one clear line ------------------------------------------------------------------------
def _one_line_error(pki_dir: Path, options: BrokerOptions) -> str:
    with pytest.raises(BrokerError) as info:
        start_embedded(pki_dir, options).stop()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_bad_configuration_is_one_line(pki: Pki, make_pki: Callable[..., Pki], tmp_path: Path) -> None:
    assert "does not exist" in _one_line_error(tmp_path / "missing", BrokerOptions(port=0))
    (tmp_path / "empty").mkdir()
    assert "not a fleetsim PKI" in _one_line_error(tmp_path / "empty", BrokerOptions(port=0))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert "in use" in _one_line_error(pki.root, BrokerOptions(port=busy.getsockname()[1]))
    broken = make_pki()
    Layout(broken.root).server_key.write_text("not a key\n")
    assert "unreadable" in _one_line_error(broken.root, BrokerOptions(port=0))


def test_cli_run_prints_where_it_listens(pki: Pki, tmp_path: Path) -> None:
    settings = tmp_path / "broker.toml"
    settings.write_text("max_packet_size = 4096\nconnect_timeout_s = 2.5\nport = 8883\n")
    proc = subprocess.Popen([sys.executable, "-c", "from fleetsim.cli import main; main()", "broker", "run",
                             str(pki.root), "--port", "0", "--config", str(settings)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on mqtts://127.0.0.1:" in line and "/stats" in line
        port = int(line.split("mqtts://127.0.0.1:")[1].split(" ")[0])
        assert attempt(port, device_context(pki, "dev-00002"), "dev-00002") == "connack 0"
        stats_port = int(line.split("/stats")[0].rsplit(":", 1)[1])
        stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats", timeout=5))
        assert (stats["max_packet_size"], stats["connect_timeout_s"]) == (4096, 2.5)  # the file's; --port won
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_spawning_the_broker_does_not_load_amqtt(pki: Pki) -> None:
    """The child's entry point imports the broker, never the reverse: the simulator stays free of amqtt."""
    code = ("import sys\nfrom fleetsim.broker.launch import start_broker\nfrom fleetsim.broker.handle import BrokerOptions\n"
            "import fleetsim.runner.orchestrate\n"
            f"h = start_broker('embedded', {str(pki.root)!r}, BrokerOptions(port=0))\n"
            "h.stop()\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'amqtt'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
