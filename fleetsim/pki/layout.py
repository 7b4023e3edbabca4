"""Where a PKI's files live. This layout is documented: users point brokers at it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEVICE_CERT_SUFFIX, DEVICE_KEY_SUFFIX = ".pem", ".key"  # under devices/, named by device id


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def root_ca(self) -> Path:
        return self.root / "root-ca.pem"

    @property
    def issuing_ca(self) -> Path:
        return self.root / "issuing-ca.pem"

    @property
    def ca_chain(self) -> Path:
        """Issuing + root: what a broker trusts for client certificates."""
        return self.root / "ca-chain.pem"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.json"

    @property
    def private(self) -> Path:
        return self.root / "private"

    @property
    def root_key(self) -> Path:
        return self.private / "root-ca.key"

    @property
    def issuing_key(self) -> Path:
        return self.private / "issuing-ca.key"

    @property
    def rogue_ca(self) -> Path:
        """A CA nobody trusts, signing the unknown-ca fault identities."""
        return self.root / "rogue" / "ca.pem"

    @property
    def rogue_key(self) -> Path:
        return self.private / "rogue-ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server" / "cert.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server" / "key.pem"

    @property
    def brokers_dir(self) -> Path:
        """Where running brokers register to be told of a new CRL (fleetsim.pki.notify)."""
        return self.root / "run" / "brokers"

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    def device_cert(self, device_id: str) -> Path:
        """Leaf + issuing CA, so a device presents its whole chain."""
        return self.devices / f"{device_id}{DEVICE_CERT_SUFFIX}"

    def device_key(self, device_id: str) -> Path:
        return self.devices / f"{device_id}{DEVICE_KEY_SUFFIX}"

    def is_pki(self) -> bool:
        return self.inventory.is_file() and self.issuing_key.is_file()


def crl_floor(layout: Layout) -> int:
    """The highest CRL number the PKI's inventory says it issued (0 if unknown): a crl.pem below it is old.

    Read from the file, not through the Pki: a broker judges the CRL it is given without opening the PKI."""
    try:
        value = json.loads(layout.inventory.read_bytes()).get("crl_number", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically (a reader never sees half a file); private files are 0600 from their first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """Serialise changes to one PKI across processes."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".lock", "a") as f:  # "a": taking the lock changes no mtime
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
