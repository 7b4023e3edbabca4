"""Who may CONNECT to the embedded broker: identity binding, revocation at CONNECT, optional passwords.

Identity comes from the certificate by ``cert_rules``; the rule here binds the client id to it.

The broker reads each connection's first packet itself and refuses (CONNACK 5, "not authorized") before
amqtt sees it: amqtt deletes or takes over the session named by the client id BEFORE it asks its auth
plugins, so an imposter let through to amqtt could end the real device's session. The auth plugin
(``plugins``) asks the same gate again as a second line. Pure: no amqtt, no I/O but the password file,
so the simulator can write password files without loading the broker.

Identity is bound from the NEW connection's own TLS object, never from ``session.ssl_object``: on a
reconnect with a persistent session amqtt keeps the previous connection's TLS object in the session.
The connection's facts travel to the auth plugin in a context variable set by the task that hands the
connection to amqtt (asyncio copies the context into the tasks amqtt's plugin manager starts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from fleetsim.broker.embedded.cert_rules import Identity
from fleetsim.broker.embedded.mqtt_wire import Connect
from fleetsim.broker.topic_rules import EVERYTHING, Grant
from fleetsim.errors import BrokerError
from fleetsim.pki.layout import write_file

NOT_AUTHORIZED = 5  # MQTT 3.1.1 CONNACK return codes
BAD_USERNAME_PASSWORD = 4
MTLS, PLAIN = "default", "plain"  # listener names (amqtt requires one named "default")


@dataclass(frozen=True)
class Peer:
    """What the broker knows about one connection before MQTT starts."""

    listener: str  # MTLS or PLAIN
    identity: Identity | None = None  # what the certificate allows, when cert_rules accepted it
    refusal: str | None = None  # why cert_rules refused the certificate
    address: str = "?"
    grant: Grant = EVERYTHING  # its topics (topic_rules); the certificate-less baselines are not confined

    @property
    def name(self) -> str:
        """Who this is, for the log."""
        return self.identity.name if self.identity else (self.refusal or "no certificate")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # rejection reason for stats and the log
    code: int = NOT_AUTHORIZED  # the CONNACK return code that refuses it


ACCEPT = Verdict(True)


def admit(peer: Peer, connect: Connect, *, certificates: bool, revoked: AbstractSet[int],
          passwords: PasswordFile | None) -> Verdict:
    """The admission rule. On the certificate listener (``certificates``): the certificate passed cert_rules,
    its serial is not on the current CRL (a resumed TLS session skipped the handshake's check), and the client id
    is the one it names. A will may only go to a topic the identity may publish on. Then the password, when a
    password file is configured."""
    if peer.listener == MTLS and certificates:
        if peer.identity is None:
            return Verdict(False, peer.refusal or "no certificate identity")
        if peer.identity.serial in revoked:
            return Verdict(False, "revoked at connect")
        if connect.client_id != peer.identity.name:
            return Verdict(False, "client id mismatch")
    if connect.will_topic is not None and not peer.grant.may_publish(connect.will_topic):
        return Verdict(False, "will topic not authorized")  # amqtt publishes a will without asking any plugin
    if passwords is not None and not passwords.check(connect.username, connect.password):
        return Verdict(False, "bad username or password", BAD_USERNAME_PASSWORD)
    return ACCEPT


def connack(return_code: int) -> bytes:
    """A CONNACK refusing (or accepting) without a session present: 5 = not authorized, 4 = bad password."""
    return bytes((0x20, 0x02, 0x00, return_code))


@dataclass
class PasswordFile:
    """Mosquitto's password file format (mosquitto_passwd), so one file serves both broker kinds.

    ``user:$7$<iterations>$<salt b64>$<pbkdf2-sha512 b64>`` (Mosquitto 2) or ``user:$6$<salt b64>$<sha512 b64>``.
    """

    path: Path
    users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PasswordFile:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise BrokerError(f"cannot read password file {path}: {exc.strerror or exc}",
                              "create it with `mosquitto_passwd -c FILE USER`") from None
        users = {}
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            user, sep, hashed = line.strip().partition(":")
            if not sep or not hashed.startswith(("$6$", "$7$")):
                raise BrokerError(f"{path}:{number} is not a mosquitto_passwd line",
                                  "hash passwords with `mosquitto_passwd -U FILE`")
            users[user] = hashed
        return cls(path, users)

    def check(self, user: str | None, password: bytes | None) -> bool:
        hashed = self.users.get(user or "")
        if hashed is None or password is None:
            return False
        return verify_mosquitto_hash(hashed, password)


def mosquitto_hash(password: bytes, *, iterations: int = 101) -> str:
    """A Mosquitto 2 ``$7$`` hash (PBKDF2-SHA512, 12-byte salt), as mosquitto_passwd writes it."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: Iterable[str], password: bytes) -> None:
    """One password for every user: the password-auth baseline of the overhead comparisons. Written 0600."""
    lines = "".join(f"{user}:{mosquitto_hash(password)}\n" for user in users)
    write_file(path, lines.encode(), private=True)


def verify_mosquitto_hash(hashed: str, password: bytes) -> bool:
    parts = hashed.split("$")
    try:
        if parts[1] == "7" and len(parts) == 5:
            iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
            computed = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
        elif parts[1] == "6" and len(parts) == 4:
            salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            computed = hashlib.sha512(password + salt).digest()
        else:
            return False
    except (ValueError, IndexError):
        return False
    return hmac.compare_digest(computed, digest)
