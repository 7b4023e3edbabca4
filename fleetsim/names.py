"""Names fleetsim accepts in more than one place, each defined once: TLS versions, HOST:PORT, ids.

Scenario files, the command line, the PKI, the brokers and the engine all check these; one definition keeps a
name that one of them accepts from failing in another.
"""

from __future__ import annotations

import re
import ssl

# TLS versions by name: "1.2" and "1.3" pin one, "any" allows both (1.2 up to the newest).
TLS_PINNED: dict[str, ssl.TLSVersion] = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
TLS_VERSIONS: tuple[str, ...] = (*TLS_PINNED, "any")
# What both brokers offer. TLS 1.2: ECDHE/DHE with AES-GCM, ChaCha20 or AES-CBC over SHA-2, never SHA-1 (no
# CBC-SHA1 suite such as AES128-SHA), no anonymous or null suites; this is Python 3.11's own default for ssl, set
# explicitly so the embedded broker and Mosquitto's `ciphers` cannot drift apart. TLS 1.3: OpenSSL 3.0's default
# suites, which Python's ssl uses (it cannot set them) and Mosquitto gets as `ciphers_tls1.3`.
TLS12_CIPHERS = "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

# Device ids, prefixes, lots, sites: they become file names, MQTT client ids and topic levels, and URI SANs.
# 1-64 characters, letters, digits, '.', '_', '-', not starting with a punctuation mark. \Z, not $: no newline.
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
NAME_HINT = ("use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it becomes part of file "
             "names, MQTT client ids and topics, and certificates)")

_HOSTPORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})")


def is_name(value: object) -> bool:
    """A device id, id prefix, lot, site, model or sweep name as every part of fleetsim accepts it (ID_RE)."""
    return isinstance(value, str) and ID_RE.match(value) is not None


def tls_range(name: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """(minimum, maximum) of a TLS version name; KeyError for an unknown one."""
    if name == "any":
        return ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED
    return TLS_PINNED[name], TLS_PINNED[name]


def split_hostport(target: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``[v6]:PORT`` with a port in 1..65535; None for anything else."""
    m = _HOSTPORT.fullmatch(target)
    if not m:
        return None
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    return (host, port) if 1 <= port <= 65535 else None
