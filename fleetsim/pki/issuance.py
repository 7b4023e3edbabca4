"""Issuing device identities in bulk: a picklable job a worker process runs, writing its own files."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleetsim.pki import certs, keys
from fleetsim.pki.inventory import Device, Fault
from fleetsim.pki.keys import KeyType
from fleetsim.pki.layout import Layout, write_file


@dataclass(frozen=True)
class IssueJob:
    """Everything a worker needs to issue ``ids``; bytes, not objects, so it pickles cheaply."""

    root: Path
    issuer_cert_pem: bytes
    issuer_key_pem: bytes
    org: str
    trust_domain: str
    crl_url: str | None
    ids: tuple[str, ...]
    model: str
    lot: str
    key_type: KeyType
    days: int
    fault: Fault | None = None
    generation: int = 1


def _validity(fault: Fault | None, days: int, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    if fault is Fault.EXPIRED:
        return now - dt.timedelta(days=days + 1), now - dt.timedelta(days=1)
    if fault is Fault.NOT_YET_VALID:
        return now + dt.timedelta(days=30), now + dt.timedelta(days=30 + days)
    return now - certs.CLOCK_SKEW, now + dt.timedelta(days=days)


def imposter_name(device_id: str) -> str:
    """The name a cn-mismatch certificate carries instead of its device's client id."""
    return f"{device_id}-imposter"


class _DeviceFiles:
    """Writes device files relative to one open directory. New ids get a plain exclusive create (no temp file,
    no rename: nobody reads them before the inventory names them); a file already there, i.e. a re-enrolment or
    a leftover of an interrupted run, is replaced atomically instead."""

    def __init__(self, layout: Layout, *, replace: bool) -> None:
        self.layout = layout
        self.replace = replace
        layout.devices.mkdir(parents=True, exist_ok=True)
        self.dir_fd = os.open(layout.devices, os.O_RDONLY | os.O_DIRECTORY)

    def write(self, name: str, data: bytes, *, private: bool) -> None:
        if not self.replace:
            try:
                fd = os.open(name, _NEW_FILE, 0o600 if private else 0o644, dir_fd=self.dir_fd)
            except FileExistsError:
                pass
            else:
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(f"short write to {self.layout.devices / name}")
                finally:
                    os.close(fd)
                return
        write_file(self.layout.devices / name, data, private=private)

    def close(self) -> None:
        os.close(self.dir_fd)


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def run(job: IssueJob) -> list[Device]:
    """Issue every id in ``job``, writing ``<id>.pem`` (leaf + issuer) and ``<id>.key`` (0600)."""
    issuer = certs.Issuer(x509.load_pem_x509_certificate(job.issuer_cert_pem), keys.from_pem(job.issuer_key_pem))
    signer = certs.DeviceSigner(issuer, org=job.org, trust_domain=job.trust_domain, crl_url=job.crl_url)
    key_type = KeyType.RSA_1024 if job.fault is Fault.WEAK_KEY else job.key_type
    not_before, not_after = _validity(job.fault, job.days, certs.utcnow())
    files = _DeviceFiles(Layout(job.root), replace=job.generation > 1)
    out = []
    try:
        for device_id in job.ids:
            key = keys.generate(key_type)
            name = imposter_name(device_id) if job.fault is Fault.CN_MISMATCH else device_id
            cert = signer.sign(key, name, job.model, not_before, not_after)
            written_key = keys.generate(key_type) if job.fault is Fault.WRONG_KEY else key
            files.write(f"{device_id}.key", keys.to_pem(written_key), private=True)
            files.write(f"{device_id}.pem", cert.public_bytes(Encoding.PEM) + job.issuer_cert_pem, private=False)
            out.append(Device(
                id=device_id, serial=cert.serial_number, model=job.model, lot=job.lot, key_type=key_type.value,
                not_before=not_before, not_after=not_after, fault=job.fault, generation=job.generation,
            ))
    finally:
        files.close()
    return out
