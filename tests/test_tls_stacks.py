"""The two TLS stacks (fleetsim.tls) in real mutual-TLS handshakes on 127.0.0.1, with certificates from fleetsim's
PKI: each stack's client against each stack's server, classical and post-quantum, the negotiated group and the bytes
on the wire read from both sides; revoked and wrong-CA devices refused by both servers, verification never off."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleetsim.engine.connect import wire_bytes
from fleetsim.engine.outcome import Failure, Phase, classify
from fleetsim.errors import TlsStackError
from fleetsim.pki import Pki
from fleetsim.tls import UNKNOWN, ClientContext, ClientTls, Facts, ServerContext, Settings, stack

MakePki = Callable[..., Pki]
TIMEOUT = 10.0
PING_RECORD = 5 + 4 + 1 + 16  # "ping" in a TLS 1.3 record: header, data, content type, AEAD tag


@dataclass
class ServerSide:
    facts: Facts | None = None
    error: BaseException | None = None
    peer_der: bytes | None = None
    rx: int = 0  # bytes the server read from the wire during the handshake
    tx: int = 0  # bytes it sent in its handshake flight (to its Finished)
    tickets: int = 0  # bytes it sent once the client's Finished came: session tickets
    echoed: bytes = b""


@dataclass
class Outcome:
    server: ServerSide
    client: Facts | None = None
    client_error: BaseException | None = None
    wire: tuple[int, int] | None = None  # the client's kernel counts: (sent, received) after the handshake
    session: Any = None
    reply: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


def _serve_one(listener: socket.socket, sctx: ServerContext, out: ServerSide) -> None:
    """Accept one connection and drive the server's TLS over memory buffers, as the broker front does; echo one
    message after the handshake."""
    sock, _ = listener.accept()
    sock.settimeout(TIMEOUT)
    tls = sctx.accept()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                raise EOFError("client closed during the handshake")
            out.rx += len(data)
            tls.feed(data)
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            sent = tls.take()
            if done:
                out.tickets += len(sent)
            else:
                out.tx += len(sent)
            sock.sendall(sent)
            if done:
                break
        out.facts, out.peer_der = tls.facts(), tls.peer_certificate_der()
        while not out.echoed:  # the message may have come with the client's Finished
            try:
                out.echoed = tls.read(1024)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return
                tls.feed(data)
        tls.write(out.echoed)
        sock.sendall(tls.take())
        sock.recv(1)  # until the client closes: its session ticket has arrived by then
    except (ssl.SSLError, EOFError, OSError) as exc:
        out.error = exc
        with contextlib.suppress(OSError):
            sock.sendall(tls.take())  # the alert; then linger, as the broker front does, so the client reads it
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    finally:
        sock.close()


def _wait(sock: ClientTls, write: bool) -> None:
    readable, writable, _ = select.select([] if write else [sock], [sock] if write else [], [], TIMEOUT)
    if not readable and not writable:
        raise TimeoutError


def _client_session(tls: ClientTls, result: Outcome) -> None:
    """Handshake without blocking (as the engine does), then one message and its echo."""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            _wait(tls, False)
        except ssl.SSLWantWriteError:
            _wait(tls, True)
    result.client, result.wire = tls.facts(), wire_bytes(tls)  # type: ignore[arg-type]
    tls.send(b"ping")
    while True:
        try:
            data = tls.recv(1024)
        except ssl.SSLWantReadError:
            _wait(tls, False)
            continue
        if not data:
            raise EOFError("the server closed the connection")
        result.reply = data
        result.session = tls.resumable_session()
        return


def handshake(pki: Pki, server_stack: str, client_stack: str, device: str, *, server: Settings = Settings(),
              client: Settings = Settings(), hostname: str = "localhost", session: Any = None,
              sctx: ServerContext | None = None, cctx: ClientContext | None = None) -> Outcome:
    layout = pki.layout
    if sctx is None:
        sctx = stack(server_stack).server(layout.server_cert, layout.server_key, server,
                                          ca_pem=layout.ca_chain.read_bytes(), crl_pem=layout.crl.read_bytes())
    if cctx is None:
        cert_pem, key_pem = pki.identity(device)
        cctx = stack(client_stack).client(layout.ca_chain.read_bytes(), client, cert_pem, key_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    result = Outcome(ServerSide())
    thread = threading.Thread(target=_serve_one, args=(listener, sctx, result.server), daemon=True)
    thread.start()
    sock = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the engine's: a flight leaves at once
    sock.setblocking(False)
    tls = cctx.connect(sock, hostname, session)
    try:
        _client_session(tls, result)
    except (ssl.SSLError, EOFError, OSError) as exc:
        result.client_error = exc
    finally:
        tls.close()
        thread.join(TIMEOUT)
        listener.close()
    return result


CELLS = [  # server stack, client stack, CA and device key type, client groups, the group both must report
    ("system", "system", "ecdsa-p256", (), None),
    ("system", "bundled", "ecdsa-p256", ("X25519",), "X25519"),
    ("bundled", "system", "ecdsa-p256", (), "X25519"),  # OpenSSL 3.0's first offer
    ("bundled", "bundled", "ecdsa-p256", ("X25519",), "X25519"),
    ("bundled", "bundled", "ecdsa-p256", (), "X25519MLKEM768"),  # the bundled OpenSSL's default
    ("bundled", "bundled", "ml-dsa-44", ("X25519MLKEM768",), "X25519MLKEM768"),
    ("bundled", "bundled", "ml-dsa-65", ("X25519MLKEM768",), "X25519MLKEM768"),
]


@pytest.mark.parametrize(("server_stack", "client_stack", "key_type", "groups", "group"), CELLS)
def test_mutual_tls_between_the_stacks(make_pki: MakePki, server_stack: str, client_stack: str, key_type: str,
                                       groups: tuple[str, ...], group: str | None) -> None:
    pki = make_pki(ca_key_type=key_type)
    (dev,) = pki.issue(1, key_type=key_type)
    r = handshake(pki, server_stack, client_stack, dev.id, client=Settings(tls_version="1.3", groups=groups))
    assert r.client_error is None and r.server.error is None, (r.client_error, r.server.error)
    assert r.reply == r.server.echoed == b"ping"
    assert r.client is not None and r.server.facts is not None
    assert r.client.version == r.server.facts.version == "TLSv1.3"
    assert r.client.cipher == r.server.facts.cipher
    # each side reports the group it negotiated, or says it cannot (Python's ssl)
    for side, name in ((r.client, client_stack), (r.server.facts, server_stack)):
        assert side.group.lower() == (group or UNKNOWN).lower() if name == "bundled" else side.group == UNKNOWN
    assert r.server.peer_der == _x(pki.layout.device_cert(dev.id).read_bytes())
    # the bytes on the wire: the kernel's count at the client is what the server read and wrote
    assert r.wire is not None
    sent, received = r.wire
    assert sent in (r.server.rx, r.server.rx - PING_RECORD)  # the ping may have come with the client's Finished
    assert r.server.tx <= received <= r.server.tx + r.server.tickets  # tickets may have come in already
    print(f"\n{server_stack}<-{client_stack} {key_type} {r.client.group}/{r.server.facts.group}: "
          f"client sent {sent:,} B, received {received:,} B (+{r.server.tickets} B after its Finished)")


def _x(pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificates(pem)[0].public_bytes(Encoding.DER)


def test_the_server_sees_the_devices_own_certificate(make_pki: MakePki) -> None:
    pki = make_pki(ca_key_type="ml-dsa-65")
    (dev,) = pki.issue(1, key_type="ml-dsa-65")
    r = handshake(pki, "bundled", "bundled", dev.id)
    assert r.server.peer_der == _x(pki.layout.device_cert(dev.id).read_bytes())
    assert r.server.facts is not None and r.server.facts.group == "X25519MLKEM768"


@pytest.mark.parametrize("server_stack", ["system", "bundled"])
@pytest.mark.parametrize("client_stack", ["system", "bundled"])
def test_revoked_and_wrong_ca_devices_are_refused(make_pki: MakePki, server_stack: str, client_stack: str) -> None:
    pki = make_pki()
    pki.issue(2)
    (rogue,) = pki.issue(1, fault="unknown-ca", lot="rogue")
    pki.revoke(device_ids=["dev-00001"])
    ok = handshake(pki, server_stack, client_stack, "dev-00002")
    assert ok.client_error is None and ok.server.error is None
    for device, reasons, failure in (("dev-00001", {"certificate revoked"}, Failure.ALERT_REVOKED),
                                     (rogue.id, {"self-signed certificate in certificate chain"},
                                      Failure.ALERT_UNKNOWN_CA)):
        r = handshake(pki, server_stack, client_stack, device)
        assert isinstance(r.server.error, ssl.SSLCertVerificationError), r.server.error
        assert r.server.error.verify_message in reasons
        # TLS 1.3: the device's handshake ends before the broker judges its certificate; it reads the alert next,
        # named alike on both stacks (OpenSSL 4's reason texts mapped to Python's names)
        assert isinstance(r.client_error, ssl.SSLError), r.client_error
        assert classify(r.client_error, Phase.MQTT) is failure


def test_a_revoked_ml_dsa_device_is_refused_by_the_bundled_server(make_pki: MakePki) -> None:
    pki = make_pki(ca_key_type="ml-dsa-65")
    pki.issue(2, key_type="ml-dsa-65")
    pki.revoke(device_ids=["dev-00001"])
    assert handshake(pki, "bundled", "bundled", "dev-00002").server.error is None
    r = handshake(pki, "bundled", "bundled", "dev-00001")
    assert isinstance(r.server.error, ssl.SSLCertVerificationError)
    assert r.server.error.verify_message == "certificate revoked"
    assert isinstance(r.client_error, ssl.SSLError) and classify(r.client_error, Phase.MQTT) is Failure.ALERT_REVOKED


@pytest.mark.parametrize("server_stack", ["system", "bundled"])
def test_the_bundled_client_checks_the_brokers_name_in_the_handshake(make_pki: MakePki, server_stack: str) -> None:
    pki = make_pki()
    (dev,) = pki.issue(1)
    r = handshake(pki, server_stack, "bundled", dev.id, hostname="broker.elsewhere.test")
    assert isinstance(r.client_error, ssl.SSLCertVerificationError), r.client_error
    assert r.client_error.verify_code == 62 and "mismatch" in r.client_error.verify_message.lower()
    assert classify(r.client_error, Phase.TLS) is Failure.SERVER_NAME_MISMATCH


def test_a_device_offering_only_ml_kem_meets_a_system_broker_it_cannot_agree_with(make_pki: MakePki) -> None:
    pki = make_pki()
    (dev,) = pki.issue(1)
    r = handshake(pki, "system", "bundled", dev.id, client=Settings(groups=("X25519MLKEM768",)))
    assert isinstance(r.client_error, ssl.SSLError) and isinstance(r.server.error, ssl.SSLError)
    assert "HANDSHAKE_FAILURE" in r.client_error.reason or "NO_SHARED" in r.client_error.reason, r.client_error


@pytest.mark.parametrize("server_stack", ["system", "bundled"])
@pytest.mark.parametrize("tickets", [True, False])
def test_resumption_follows_the_servers_tickets(make_pki: MakePki, server_stack: str, tickets: bool) -> None:
    pki = make_pki()
    (dev,) = pki.issue(1)
    layout = pki.layout
    settings = Settings(tls_version="1.3", tickets=tickets)
    sctx = stack(server_stack).server(layout.server_cert, layout.server_key, settings,
                                      ca_pem=layout.ca_chain.read_bytes(), crl_pem=layout.crl.read_bytes())
    client_stack = server_stack
    cert_pem, key_pem = pki.identity(dev.id)
    cctx = stack(client_stack).client(layout.ca_chain.read_bytes(), settings, cert_pem, key_pem)
    first = handshake(pki, server_stack, client_stack, dev.id, sctx=sctx, cctx=cctx)
    assert first.client is not None and not first.client.resumed
    assert (first.session is not None) == tickets or client_stack == "bundled"
    second = handshake(pki, server_stack, client_stack, dev.id, sctx=sctx, cctx=cctx, session=first.session)
    assert second.client is not None and second.server.facts is not None
    assert second.client.resumed == second.server.facts.resumed == tickets


def test_the_system_stack_refuses_what_its_openssl_lacks_in_one_line(make_pki: MakePki) -> None:
    system = stack("system")
    with pytest.raises(TlsStackError, match="cannot choose key-exchange groups") as info:
        system.check(Settings(groups=("X25519MLKEM768",)))
    assert "\n" not in str(info.value) and "bundled" in str(info.value)
    with pytest.raises(TlsStackError, match="has no ML-DSA: it cannot present or verify ml-dsa-65"):
        system.check(Settings(), ["ecdsa-p256", "ml-dsa-65"])
    with pytest.raises(TlsStackError, match="does not know the group list 'X25519:NOPE'"):
        stack("bundled").check(Settings(groups=("X25519", "NOPE")))
    with pytest.raises(TlsStackError, match="unknown TLS stack 'openssl'"):
        stack("openssl")
    assert stack("bundled").openssl_version.startswith("OpenSSL ") and stack("system").openssl_version == \
        ssl.OPENSSL_VERSION
