"""Failure classification is pure: each class from a made-up exception, no network."""

from __future__ import annotations

import ssl

import pytest

from fleetsim.engine.outcome import Failure, Phase, classify, classify_connack, describe


def ssl_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    exc = cls(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason  # what OpenSSL sets on real errors
    return exc


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(("reason", "expected"), [
    ("SSLV3_ALERT_CERTIFICATE_REVOKED", Failure.ALERT_REVOKED),
    ("TLSV1_ALERT_UNKNOWN_CA", Failure.ALERT_UNKNOWN_CA),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", Failure.ALERT_EXPIRED),
    ("SSLV3_ALERT_BAD_CERTIFICATE", Failure.ALERT_BAD_CERTIFICATE),
    ("TLSV13_ALERT_CERTIFICATE_REQUIRED", Failure.ALERT_CERTIFICATE_REQUIRED),
    ("TLSV1_ALERT_PROTOCOL_VERSION", Failure.ALERT_OTHER),
    ("SSLV3_ALERT_HANDSHAKE_FAILURE", Failure.ALERT_OTHER),
])
@pytest.mark.parametrize("phase", [Phase.TLS, Phase.MQTT])  # TLS 1.2 in the handshake, 1.3 at the first read
def test_alerts_classified_in_either_phase(reason: str, expected: Failure, phase: Phase) -> None:
    assert classify(ssl_error(reason), phase) is expected


def test_server_verification() -> None:
    assert classify(verify_error(62, "Hostname mismatch"), Phase.TLS) is Failure.SERVER_NAME_MISMATCH
    assert classify(verify_error(64, "IP address mismatch"), Phase.TLS) is Failure.SERVER_NAME_MISMATCH
    untrusted = verify_error(20, "unable to get local issuer certificate")
    assert classify(untrusted, Phase.TLS) is Failure.SERVER_UNTRUSTED
    assert "unable to get local issuer" in describe(untrusted)


def test_client_side_identity_failures() -> None:
    assert classify(ssl_error("KEY_VALUES_MISMATCH"), Phase.IDENTITY) is Failure.CLIENT_KEY_MISMATCH
    assert classify(ssl_error("EE_KEY_TOO_SMALL"), Phase.IDENTITY) is Failure.CLIENT_KEY_REJECTED
    assert classify(FileNotFoundError(2, "no such file"), Phase.IDENTITY) is Failure.CLIENT_ERROR


@pytest.mark.parametrize(("exc", "phase", "expected"), [
    (ConnectionRefusedError(111, "refused"), Phase.TCP, Failure.TCP_REFUSED),
    (TimeoutError(), Phase.TCP, Failure.TCP_TIMEOUT),
    (OSError(113, "no route to host"), Phase.TCP, Failure.TCP_ERROR),
    (TimeoutError(), Phase.TLS, Failure.TLS_TIMEOUT),
    (TimeoutError(), Phase.MQTT, Failure.CONNACK_TIMEOUT),
    (ConnectionResetError(104, "reset"), Phase.TLS, Failure.RESET),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Phase.TLS, Failure.RESET),
    (ConnectionResetError(104, "reset"), Phase.MQTT, Failure.REJECTED_AFTER_HANDSHAKE),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Phase.MQTT, Failure.REJECTED_AFTER_HANDSHAKE),
    (EOFError("closed"), Phase.MQTT, Failure.REJECTED_AFTER_HANDSHAKE),
    (None, Phase.MQTT, Failure.REJECTED_AFTER_HANDSHAKE),
    (ConnectionResetError(104, "reset"), Phase.CONNECTED, Failure.RESET),
])
def test_transport_failures(exc: BaseException | None, phase: Phase, expected: Failure) -> None:
    assert classify(exc, phase) is expected


@pytest.mark.parametrize(("code", "expected"), [
    (0, None),
    (2, Failure.CONNACK_BAD_CLIENT_ID), (0x85, Failure.CONNACK_BAD_CLIENT_ID),
    (4, Failure.CONNACK_NOT_AUTHORIZED), (5, Failure.CONNACK_NOT_AUTHORIZED), (0x87, Failure.CONNACK_NOT_AUTHORIZED),
    (3, Failure.CONNACK_REFUSED_OTHER), (0x88, Failure.CONNACK_REFUSED_OTHER),
])
def test_connack(code: int, expected: Failure | None) -> None:
    assert classify_connack(code) is expected


def test_describe_is_one_short_line() -> None:
    assert describe(None) == "connection closed by peer"
    assert len(describe(OSError("x" * 500))) <= 200
