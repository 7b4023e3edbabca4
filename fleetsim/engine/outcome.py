"""Why a connection attempt failed, in a small fixed vocabulary; pure, so it is tested without a network.

The phase an error happened in matters as much as the error: in TLS 1.3 the client finishes its handshake before
the broker has judged the client certificate, so a rejection shows up at the first read (waiting for CONNACK)
as an alert or a bare EOF, not as a handshake error (field notes).
"""

from __future__ import annotations

import errno
import ssl
from enum import StrEnum


class Phase(StrEnum):
    IDENTITY = "identity"  # reading and loading the device's own certificate and key
    TCP = "tcp"
    TLS = "tls"
    MQTT = "mqtt"  # CONNECT sent, waiting for CONNACK
    CONNECTED = "connected"  # after CONNACK: a later loss is not a failed attempt


class Failure(StrEnum):
    TCP_REFUSED = "tcp_refused"
    TCP_TIMEOUT = "tcp_timeout"
    TCP_ERROR = "tcp_error"
    SERVER_UNTRUSTED = "server_untrusted"
    SERVER_NAME_MISMATCH = "server_name_mismatch"
    ALERT_REVOKED = "alert_revoked"
    ALERT_UNKNOWN_CA = "alert_unknown_ca"
    ALERT_EXPIRED = "alert_expired"
    ALERT_BAD_CERTIFICATE = "alert_bad_certificate"
    ALERT_CERTIFICATE_REQUIRED = "alert_certificate_required"
    ALERT_OTHER = "alert_other"
    REJECTED_AFTER_HANDSHAKE = "rejected_after_handshake"
    CONNACK_NOT_AUTHORIZED = "connack_not_authorized"
    CONNACK_BAD_CLIENT_ID = "connack_bad_client_id"
    CONNACK_REFUSED_OTHER = "connack_refused_other"
    CONNACK_TIMEOUT = "connack_timeout"
    TLS_TIMEOUT = "tls_timeout"
    RESET = "reset"
    CLIENT_KEY_MISMATCH = "client_key_mismatch"
    CLIENT_KEY_REJECTED = "client_key_rejected"  # our own OpenSSL refuses the key (weak-key fault)
    CLIENT_IDENTITY = "client_identity"  # the device's own certificate or key is missing, unreadable or corrupt
    CLIENT_ERROR = "client_error"  # any other local problem building the identity


class DeviceError(Exception):
    """A failure on the device's own side, found before anything is sent to the broker; carries its class."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure


class Drop(StrEnum):
    """Why a connection that CONNACK had accepted ended."""

    BROKER_CLOSED = "broker_closed"  # the broker closed it (clean TLS close or EOF), e.g. a revoked session cut
    RESET = "reset"  # reset or broken pipe
    KEEPALIVE = "keepalive"  # no answer to PINGREQ within 1.5 keepalives: the device gave up on the broker
    CHURN = "churn"  # the scenario's churn: the device dropped the connection itself
    STOP = "stop"  # still connected when the run ended
    REVOKED = "revoked"  # set by the orchestrator: ended after an event revoked the device's certificate
    ERROR = "error"  # any other error on the connection


# OpenSSL reason names (ssl.SSLError.reason) of alerts the broker sends -> class.
_ALERTS: dict[str, Failure] = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": Failure.ALERT_REVOKED,
    "TLSV1_ALERT_UNKNOWN_CA": Failure.ALERT_UNKNOWN_CA,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": Failure.ALERT_EXPIRED,
    "SSLV3_ALERT_BAD_CERTIFICATE": Failure.ALERT_BAD_CERTIFICATE,
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": Failure.ALERT_BAD_CERTIFICATE,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": Failure.ALERT_CERTIFICATE_REQUIRED,
}
_KEY_MISMATCH = {"KEY_VALUES_MISMATCH"}
_KEY_REJECTED = {"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"}
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_IP_MISMATCH = 64  # X509_V_ERR_IP_ADDRESS_MISMATCH

# MQTT 3.1.1 CONNACK return codes and MQTT 5 reason codes -> class.
_CONNACK: dict[int, Failure] = {
    2: Failure.CONNACK_BAD_CLIENT_ID,  # 3.1.1 identifier rejected
    4: Failure.CONNACK_NOT_AUTHORIZED,  # 3.1.1 bad user name or password
    5: Failure.CONNACK_NOT_AUTHORIZED,  # 3.1.1 not authorized
    0x85: Failure.CONNACK_BAD_CLIENT_ID,  # 5: client identifier not valid
    0x86: Failure.CONNACK_NOT_AUTHORIZED,  # 5: bad user name or password
    0x87: Failure.CONNACK_NOT_AUTHORIZED,  # 5: not authorized
    0x8C: Failure.CONNACK_NOT_AUTHORIZED,  # 5: bad authentication method
}


def classify_connack(code: int) -> Failure | None:
    """None when the broker accepted the connection."""
    if code == 0:
        return None
    return _CONNACK.get(code, Failure.CONNACK_REFUSED_OTHER)


def _timeout(phase: Phase) -> Failure:
    return {Phase.TCP: Failure.TCP_TIMEOUT, Phase.TLS: Failure.TLS_TIMEOUT}.get(phase, Failure.CONNACK_TIMEOUT)


def _ssl_failure(exc: ssl.SSLError, phase: Phase) -> Failure:
    reason = getattr(exc, "reason", None) or ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", 0)
        return Failure.SERVER_NAME_MISMATCH if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH) \
            else Failure.SERVER_UNTRUSTED
    if reason in _ALERTS:
        return _ALERTS[reason]
    if reason in _KEY_MISMATCH:
        return Failure.CLIENT_KEY_MISMATCH
    if reason in _KEY_REJECTED:
        return Failure.CLIENT_KEY_REJECTED
    if getattr(exc, "library", None) == "PEM":  # our own certificate or key file does not decode
        return Failure.CLIENT_IDENTITY
    if "ALERT" in reason:
        return Failure.ALERT_OTHER
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Failure.REJECTED_AFTER_HANDSHAKE if phase is Phase.MQTT else Failure.RESET
    if phase is Phase.IDENTITY:
        return Failure.CLIENT_ERROR
    return Failure.ALERT_OTHER if phase is Phase.TLS else Failure.RESET


def classify(exc: BaseException | None, phase: Phase) -> Failure:
    """Class of an attempt that ended with ``exc`` (None: the peer closed cleanly, EOF) during ``phase``."""
    if isinstance(exc, DeviceError):
        return exc.failure
    if exc is None or isinstance(exc, EOFError):
        return Failure.REJECTED_AFTER_HANDSHAKE if phase is Phase.MQTT else Failure.RESET
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError and socket.timeout are TimeoutError
        return _timeout(phase)
    if isinstance(exc, ssl.SSLError):
        return _ssl_failure(exc, phase)
    if phase is Phase.IDENTITY:
        return Failure.CLIENT_ERROR
    if isinstance(exc, ConnectionRefusedError):
        return Failure.TCP_REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Failure.REJECTED_AFTER_HANDSHAKE if phase is Phase.MQTT else Failure.RESET
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return _timeout(phase)
    if phase is Phase.TCP:
        return Failure.TCP_ERROR
    return Failure.RESET


def drop_cause(exc: BaseException | None) -> Drop:
    """Why an established connection ended, from the error that ended it (None: closed without an error)."""
    if exc is None or isinstance(exc, EOFError | ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return Drop.BROKER_CLOSED
    if isinstance(exc, TimeoutError):
        return Drop.KEEPALIVE
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Drop.RESET
    if isinstance(exc, ssl.SSLError):
        return Drop.BROKER_CLOSED if "ALERT" in (getattr(exc, "reason", None) or "") else Drop.ERROR
    return Drop.ERROR


def describe(exc: BaseException | None) -> str:
    """One short line for the attempt's detail column."""
    if exc is None:
        return "connection closed by peer"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"server certificate: {exc.verify_message}"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
