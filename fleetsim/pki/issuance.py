"""Issuing device identities in bulk: picklable jobs that worker processes sign, and the one writer of their files.

Workers only sign and serialise; the parent process alone creates the files, as each job comes back. Creating a
file takes its directory's lock in the kernel, and a process waiting for it spins: with every worker writing into
devices/, a fifth of all CPU time went to ``rwsem_spin_on_owner`` (perf, 2 cores, ext4). One writer never waits,
and the workers sign meanwhile."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleetsim.pki import certs, keys
from fleetsim.pki.inventory import Device, Fault
from fleetsim.pki.journal import staged_name
from fleetsim.pki.keys import KeyType
from fleetsim.pki.layout import Layout, write_file


@dataclass(frozen=True)
class Signed:
    """A job's identities as a worker returns them: their serials, and each one's key PEM and leaf PEM back to
    back in one buffer, so the pipe carries one copy instead of a pickled object per file. The rest of a Device,
    and the issuer's PEM that completes each chain, are the same for the whole job."""

    serials: list[int]
    pems: bytes
    ends: list[int]  # where each PEM in ``pems`` ends: key, leaf, key, leaf, ...

    def pairs(self) -> Iterator[tuple[memoryview, memoryview]]:
        """(key PEM, leaf PEM) per identity, in order, without copying."""
        view, start, ends = memoryview(self.pems), 0, iter(self.ends)
        for key_end, leaf_end in zip(ends, ends, strict=True):
            yield view[start:key_end], view[key_end:leaf_end]
            start = leaf_end


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
    now: dt.datetime  # one clock reading for every job of a batch: workers and the parent agree on validity
    fault: Fault | None = None
    generation: int = 1
    role: str = certs.DEVICE

    @property
    def actual_key_type(self) -> KeyType:
        return KeyType.RSA_1024 if self.fault is Fault.WEAK_KEY else self.key_type

    def validity(self) -> tuple[dt.datetime, dt.datetime]:
        now = self.now
        if self.fault is Fault.EXPIRED:
            return now - dt.timedelta(days=self.days + 1), now - dt.timedelta(days=1)
        if self.fault is Fault.NOT_YET_VALID:
            return now + dt.timedelta(days=30), now + dt.timedelta(days=30 + self.days)
        return now - certs.CLOCK_SKEW, now + dt.timedelta(days=self.days)

    def devices(self, serials: Iterable[int]) -> list[Device]:
        """The inventory records for ``ids``, given their certificates' serials in the same order."""
        not_before, not_after = self.validity()
        return Device.batch(self.ids, serials, model=self.model, lot=self.lot, key_type=self.actual_key_type.value,
                            not_before=not_before, not_after=not_after, fault=self.fault, generation=self.generation,
                            role=self.role)


def imposter_name(device_id: str) -> str:
    """The name a cn-mismatch certificate carries instead of its device's client id."""
    return f"{device_id}-imposter"


def _new_signer(job: IssueJob) -> certs.DeviceSigner:
    issuer = certs.Issuer(x509.load_pem_x509_certificate(job.issuer_cert_pem), keys.from_pem(job.issuer_key_pem))
    return certs.DeviceSigner(issuer, org=job.org, trust_domain=job.trust_domain, crl_url=job.crl_url)


_worker_signer: tuple[IssueJob, certs.DeviceSigner] | None = None


def sign(job: IssueJob) -> Signed:
    """Keys and certificates for every id in ``job``, serialised, in order; no I/O. The pool's entry point: a
    worker signs many small jobs for one CA, so it loads the CA once (the pool, and the key, die with the batch)."""
    global _worker_signer
    if _worker_signer is None or not _same_ca(_worker_signer[0], job):
        _worker_signer = (job, _new_signer(job))
    return _sign(job, _worker_signer[1])


def _same_ca(a: IssueJob, b: IssueJob) -> bool:
    return (a.issuer_cert_pem, a.issuer_key_pem, a.org, a.trust_domain, a.crl_url) == \
        (b.issuer_cert_pem, b.issuer_key_pem, b.org, b.trust_domain, b.crl_url)


def _sign(job: IssueJob, signer: certs.DeviceSigner) -> Signed:
    key_type = job.actual_key_type
    not_before, not_after = job.validity()
    imposter, wrong_key = job.fault is Fault.CN_MISMATCH, job.fault is Fault.WRONG_KEY
    pem, to_pem, generate, model, role = Encoding.PEM, keys.to_pem, keys.generate, job.model, job.role
    serials: list[int] = []
    parts: list[bytes] = []
    ends: list[int] = []
    end = 0
    for device_id in job.ids:
        key = generate(key_type)
        cert = signer.sign(key, imposter_name(device_id) if imposter else device_id, model, not_before, not_after,
                           role)
        key_pem, leaf_pem = to_pem(generate(key_type) if wrong_key else key), cert.public_bytes(pem)
        serials.append(cert.serial_number)
        parts += (key_pem, leaf_pem)
        end += len(key_pem)
        ends.append(end)
        end += len(leaf_pem)
        ends.append(end)
    return Signed(serials, b"".join(parts), ends)


class DeviceFiles:
    """Writes device files relative to one open directory. New ids get a plain exclusive create (no temp file,
    no rename: nobody reads them before the inventory names them; fleetsim.pki.journal lists them meanwhile); a
    file already there is replaced atomically instead. Re-enrolments (``replace``) write staged names, renamed
    into place once the inventory names the new serials (journal.pending)."""

    def __init__(self, layout: Layout, *, replace: bool) -> None:
        self.layout = layout
        self.replace = replace
        layout.devices.mkdir(parents=True, exist_ok=True)
        self.dir_fd = os.open(layout.devices, os.O_RDONLY | os.O_DIRECTORY)

    def __enter__(self) -> DeviceFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.dir_fd)

    def write_all(self, job: IssueJob, signed: Signed) -> None:
        """``<id>.key`` (0600) and ``<id>.pem`` (leaf + issuer) for each identity of ``job``."""
        write, issuer = self.write, job.issuer_cert_pem
        for device_id, (key_pem, leaf_pem) in zip(job.ids, signed.pairs(), strict=True):
            write(f"{device_id}.key", (key_pem,), 0o600)
            write(f"{device_id}.pem", (leaf_pem, issuer), 0o644)

    def write(self, name: str, parts: Sequence[bytes | memoryview], mode: int) -> None:
        if not self.replace:
            try:
                fd = os.open(name, _NEW_FILE, mode, dir_fd=self.dir_fd)
            except FileExistsError:
                pass
            else:
                try:
                    if os.writev(fd, parts) != sum(len(p) for p in parts):
                        raise OSError(f"short write to {self.layout.devices / name}")
                finally:
                    os.close(fd)
                return
        target = staged_name(name) if self.replace else name
        write_file(self.layout.devices / target, b"".join(parts), private=mode == 0o600)


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def run(job: IssueJob) -> list[Device]:
    """Issue every id in ``job`` in this process, writing ``<id>.pem`` (leaf + issuer) and ``<id>.key`` (0600)."""
    signed = _sign(job, _new_signer(job))
    with DeviceFiles(Layout(job.root), replace=job.generation > 1) as files:
        files.write_all(job, signed)
    return job.devices(signed.serials)
