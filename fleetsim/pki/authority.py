"""A fleet-scale certificate authority on disk: root, issuing CA, broker certificate, devices, CRL."""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing
import os
import random
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleetsim.errors import PkiError
from fleetsim.names import NAME_HINT, is_name
from fleetsim.pki import certs, crl_policy, issuance, journal, keys, notify
from fleetsim.pki.inventory import REASONS, Device, Fault, Inventory, RevokedSerial
from fleetsim.pki.keys import KeyType
from fleetsim.pki.layout import Layout, locked, write_file

PARALLEL_THRESHOLD = 256  # below this, a process pool costs more than it saves
CHUNK = 128  # identities per pool job: writing starts early, and the backlog left when signing ends is short


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def _fault(text: Fault | str | None) -> Fault | None:
    try:
        return Fault(text) if text else None
    except ValueError:
        raise PkiError(f"unknown fault {text!r}", f"choose one of: {', '.join(f.value for f in Fault)}") from None


def _check_name(what: str, value: str) -> None:
    """Ids, lots and models become file names, MQTT client ids and topic levels, and certificate fields: the one
    rule scenarios apply too (fleetsim.names), so the PKI never holds a name a scenario refuses."""
    if not is_name(value):
        raise PkiError(f"bad {what} {value!r}", NAME_HINT)


def _check_crl_url(url: str | None) -> None:
    if url is not None and urlsplit(url).scheme not in ("file", "http"):
        raise PkiError(f"bad CRL URL {url!r}", "give a file: or http: URL (CRLs are fetched without TLS)")


def _key_type(text: str | KeyType) -> KeyType:
    try:
        return text if isinstance(text, KeyType) else KeyType.parse(text)
    except ValueError as exc:
        raise PkiError(str(exc)) from None


def _check_positive(**values: int | None) -> None:
    """Counts the caller gave (None: the default) must be above zero."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise PkiError(f"{name} must be positive, not {value}")


Progress = Callable[[int], None]  # identities written so far


def _sign_in_pool(jobs: list[issuance.IssueJob], workers: int, progress: Progress | None) -> list[Device]:
    """Workers sign, this process writes each job's files as soon as it comes back (see issuance)."""
    ctx = multiprocessing.get_context("fork")
    devices: list[list[Device]] = [[] for _ in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool, \
            issuance.DeviceFiles(Layout(jobs[0].root), replace=jobs[0].generation > 1) as files:
        futures = {pool.submit(issuance.sign, job): n for n, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                n, signed = futures[future], future.result()
                files.write_all(jobs[n], signed)
                devices[n] = jobs[n].devices(signed.serials)
                if progress is not None:
                    progress(sum(len(b) for b in devices))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the batch has failed: do not sign the rest first
            raise
    return [d for batch in devices for d in batch]


class Pki:
    """One PKI directory. Create with :meth:`init`, open with :meth:`open`, either with :meth:`open_or_init`;
    every change is saved at once."""

    def __init__(self, root: Path, inventory: Inventory) -> None:
        self.layout = Layout(root)
        self.inventory = inventory
        self.notified: list[notify.Notified] = []  # the brokers that confirmed the last CRL this Pki wrote

    # -- creating and opening ------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        root: Path | str,
        *,
        org: str = "fleetsim",
        trust_domain: str = "fleetsim.local",
        server_names: Sequence[str] = (),
        crl_url: str | None = None,
        ca_key_type: str | KeyType = KeyType.ECDSA_P256,
        server_key_type: str | KeyType | None = None,
    ) -> Pki:
        """Create root CA, issuing CA, broker certificate and an empty CRL, all or nothing."""
        root = Path(root).absolute()
        if Layout(root).is_pki():
            raise PkiError(f"{root} is already a PKI", "issue devices into it, or pick a new directory")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise PkiError(f"{root} exists and is not empty", "pick a new or empty directory")
        ca_type = _key_type(ca_key_type)
        srv_type = _key_type(server_key_type or ca_type)
        _check_crl_url(crl_url)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            pki = cls._build(staging, org, trust_domain, list(server_names), crl_url or Layout(root).crl.as_uri(),
                             ca_type, srv_type)
            staging.chmod(0o755)  # keys stay 0600 in a 0700 private/; brokers running as another user read the rest
            if root.exists():
                root.rmdir()
            os.rename(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        pki.layout = Layout(root)
        return pki

    @classmethod
    def _build(cls, staging: Path, org: str, trust_domain: str, server_names: list[str], crl_url: str,
               ca_type: KeyType, srv_type: KeyType) -> Pki:
        layout = Layout(staging)
        layout.private.mkdir(mode=0o700)
        root_key = keys.generate(ca_type)
        root_cert = certs.root_ca(root_key, org)
        root_issuer = certs.Issuer(root_cert, root_key)
        ca_key = keys.generate(ca_type)
        ca_cert = certs.issuing_ca(ca_key, root_issuer, org)
        issuer = certs.Issuer(ca_cert, ca_key)
        rogue_key = keys.generate(ca_type)
        rogue_cert = certs.root_ca(rogue_key, f"{org} Rogue")
        srv_key = keys.generate(srv_type)
        srv_cert = certs.server(srv_key, issuer, org, server_names, crl_url=crl_url)

        write_file(layout.root_key, keys.to_pem(root_key), private=True)
        write_file(layout.issuing_key, keys.to_pem(ca_key), private=True)
        write_file(layout.rogue_key, keys.to_pem(rogue_key), private=True)
        write_file(layout.root_ca, _pem(root_cert))
        write_file(layout.issuing_ca, _pem(ca_cert))
        write_file(layout.ca_chain, _pem(ca_cert) + _pem(root_cert))
        write_file(layout.rogue_ca, _pem(rogue_cert))
        write_file(layout.server_key, keys.to_pem(srv_key), private=True)
        write_file(layout.server_cert, _pem(srv_cert) + _pem(ca_cert))
        layout.devices.mkdir()
        pki = cls(staging, Inventory(org=org, trust_domain=trust_domain, crl_url=crl_url))
        pki._write_crl(issuer)
        return pki

    @classmethod
    def open_or_init(cls, root: Path | str) -> Pki:
        """The PKI at ``root``, made there with :meth:`init`'s defaults first if ``root`` is new or empty: the one
        call a script needs whether or not ``make demo`` or a run has made ``pki/`` already (as the CLI's --pki)."""
        if Layout(Path(root)).is_pki():
            return cls.open(root)
        path = Path(root).absolute()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise PkiError(f"{path} is not a fleetsim PKI (no inventory.json or issuing CA key)",
                           "give a PKI directory, or a new or empty one to create it there")
        return cls.init(root)

    @classmethod
    def open(cls, root: Path | str) -> Pki:
        """Open an existing PKI, with a clear error if ``root`` is not one."""
        root = Path(root).absolute()
        layout = Layout(root)
        if not root.is_dir():
            raise PkiError(f"no PKI at {root}", f"create one with `fleetsim pki init {root}`")
        if not layout.is_pki():
            raise PkiError(f"{root} is not a fleetsim PKI (no inventory.json or issuing CA key)",
                           "create one with `fleetsim pki init DIR` in a new directory")
        try:
            inventory = Inventory.from_json(json.loads(layout.inventory.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise PkiError(f"{layout.inventory} is corrupt ({exc})", "restore it or create a new PKI") from None
        return cls(root, inventory)

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.layout.root

    def _issuer(self, cert_path: Path | None = None, key_path: Path | None = None) -> certs.Issuer:
        cert_path = cert_path or self.layout.issuing_ca
        key_path = key_path or self.layout.issuing_key
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = keys.from_pem(key_path.read_bytes())
        except FileNotFoundError as exc:
            raise PkiError(f"{exc.filename} is missing", "the PKI is incomplete; create a new one") from None
        except ValueError as exc:
            raise PkiError(f"corrupt PEM in {cert_path} or {key_path} ({exc})",
                           "restore it or create a new PKI") from None
        return certs.Issuer(cert, key)

    def devices(self, **filters: str | None) -> list[Device]:
        """Devices matching ``status``, ``lot``, ``model``, ``fault`` and ``role`` filters (see Inventory.select)."""
        return self.inventory.select(**filters)

    def device(self, device_id: str) -> Device:
        try:
            return self.inventory.devices[device_id]
        except KeyError:
            raise PkiError(f"no device {device_id!r} in {self.root}", "see `fleetsim pki list`") from None

    def client_context(self, device_id: str, *, tls_version: str = "any") -> ssl.SSLContext:
        """A client SSLContext that presents ``device_id``'s certificate chain and verifies the broker against
        this PKI (CERT_REQUIRED, hostname checked): for a client of your own, e.g. paho's ``tls_set_context``."""
        device = self.device(device_id)  # one clear line for an unknown id
        self.check_system_stack(device.key_type)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls_version == "1.3" else ssl.TLSVersion.TLSv1_2
        if tls_version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cafile=self.layout.ca_chain)
        ctx.load_cert_chain(self.layout.device_cert(device_id), self.layout.device_key(device_id))
        return ctx

    def post_quantum_cas(self) -> list[str]:
        """The CAs of this PKI (root, issuing) whose keys are ML-DSA, by file name: none for a classical PKI."""
        found = []
        for path in (self.layout.root_ca, self.layout.issuing_ca):
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue  # a missing or corrupt CA has its own error where it is used
            if keys.post_quantum(cert.public_key()):
                found.append(path.name)
        return found

    def check_system_stack(self, *key_types: str) -> None:
        """One clear line when Python's ssl (the system OpenSSL, 3.0 here: no ML-DSA) cannot use this PKI's CAs or
        the given device key types; the bundled stack (fleetsim.tls.bundled) can."""
        pq = [k for k in key_types if k in keys.POST_QUANTUM_NAMES]
        cas = self.post_quantum_cas()
        if not pq and not cas:
            return
        what = f"an ML-DSA CA ({', '.join(cas)})" if cas else f"{pq[0]} device keys"
        where = " (a PKI with an ML-DSA CA serves only the bundled stack: keep it in a directory of its own)" \
            if cas else ""
        raise PkiError(f"{self.root} has {what}, which Python's ssl ({ssl.OPENSSL_VERSION}) cannot use{where}",
                       "use the bundled TLS stack (fleetsim.tls, tls_stack = \"bundled\") or a classical key type")

    def identity(self, device_id: str) -> tuple[bytes, bytes]:
        """A device's certificate chain and key, as PEM bytes, read fresh (it may have been re-enrolled)."""
        return self.layout.device_cert(device_id).read_bytes(), self.layout.device_key(device_id).read_bytes()

    # -- changing ----------------------------------------------------------------------------------------
    def issue(
        self,
        count: int | None = None,
        *,
        ids: Sequence[str] | None = None,
        prefix: str = "dev",
        model: str = "generic",
        lot: str = "lot-1",
        key_type: str | KeyType = KeyType.ECDSA_P256,
        days: int = 365,
        fault: Fault | str | None = None,
        workers: int | None = None,
        progress: Progress | None = None,
    ) -> list[Device]:
        """Issue ``count`` new device identities (``<prefix>-NNNNN`` after the highest issued), or exactly the
        new ``ids`` given, in parallel; existing ones are not touched. ``progress`` hears how many are done."""
        if (count is None) == (ids is None):
            raise PkiError("give either a count or the ids to issue", "e.g. pki.issue(10) or pki.issue(ids=[...])")
        _check_positive(count=count if ids is None else len(ids) or None, days=days, workers=workers)
        for i in [prefix] if ids is None else ids:
            _check_name("device id prefix" if ids is None else "device id", i)
        _check_name("lot", lot)
        _check_name("model", model)
        kt = _key_type(key_type)
        flt = _fault(fault)
        with locked(self.layout):
            self._reload()
            wanted = self.inventory.next_ids(prefix, count or 0) if ids is None else list(ids)
            taken = [i for i in wanted if i in self.inventory.devices]
            if taken:
                raise PkiError(f"{self.root} already holds {taken[0]}" + (f" and {len(taken) - 1:,} more"
                                                                          if len(taken) > 1 else ""),
                               "issue other ids, or use the ones it holds")
            with journal.pending(self.layout, wanted, staged=False):  # interrupted: its files go, nothing issued
                issued = self._run_jobs(wanted, model=model, lot=lot, key_type=kt, days=days, fault=flt,
                                        workers=workers, progress=progress)
                for d in issued:
                    self.inventory.devices[d.id] = d
                self._save()
        return issued

    def issue_monitor(self, name: str = "monitor", *, days: int = 365,
                      key_type: str | KeyType = KeyType.ECDSA_P256) -> Device:
        """An identity that may subscribe to every topic and publish to none: a dashboard, a test's subscriber.

        Its certificate names it like a device's (CN = client id = ``name``) with the URI SAN
        ``spiffe://<trust-domain>/monitor/<name>``; the inventory lists it with role "monitor" (``pki.devices()``
        leaves it out; ``pki.devices(role="monitor")`` finds it). Files: ``devices/<name>.pem`` and ``.key``.
        """
        _check_positive(days=days)
        _check_name("device id", name)  # a monitor is named like a device
        kt = _key_type(key_type)
        with locked(self.layout):
            self._reload()
            if name in self.inventory.devices:
                raise PkiError(f"{name!r} is already an identity in {self.root}", "choose another name")
            with journal.pending(self.layout, [name], staged=False):
                monitor, = self._run_jobs([name], model="monitor", lot="monitors", key_type=kt, days=days,
                                          fault=None, workers=1, role=certs.MONITOR)
                self.inventory.devices[name] = monitor
                self._save()
        return monitor

    def _run_jobs(self, ids: list[str], *, workers: int | None, generation: int = 1,
                  progress: Progress | None = None, **spec: object) -> list[Device]:
        fault = spec.get("fault")
        if fault is Fault.UNKNOWN_CA:
            cert_path, key_path = self.layout.rogue_ca, self.layout.rogue_key
        else:
            cert_path, key_path = self.layout.issuing_ca, self.layout.issuing_key
        self._issuer(cert_path, key_path)  # fail early, with a clear line, on a corrupt CA
        workers = workers or os.cpu_count() or 1
        if len(ids) < PARALLEL_THRESHOLD:
            workers = 1
        size = min(CHUNK, math.ceil(len(ids) / workers))
        now, cert_pem, key_pem = certs.utcnow(), cert_path.read_bytes(), key_path.read_bytes()
        jobs = [
            issuance.IssueJob(
                root=self.root, issuer_cert_pem=cert_pem, issuer_key_pem=key_pem,
                org=self.inventory.org, trust_domain=self.inventory.trust_domain, crl_url=self.inventory.crl_url,
                ids=tuple(ids[i:i + size]), generation=generation, now=now, **spec,  # type: ignore[arg-type]
            )
            for i in range(0, len(ids), size)
        ]
        if workers == 1:
            done: list[Device] = []
            for job in jobs:
                done += issuance.run(job)
                if progress is not None:
                    progress(len(done))
            return done
        return _sign_in_pool(jobs, workers, progress)

    def revoke(
        self,
        *,
        device_ids: Iterable[str] = (),
        lot: str | None = None,
        fraction: float | None = None,
        seed: int | None = None,
        reason: str = "keyCompromise",
        notify_brokers: bool = True,
    ) -> list[Device]:
        """Revoke devices by id, by lot, or a reproducible random fraction; the CRL is rewritten at once and the
        registered brokers told (fleetsim.pki.notify), so it returns once they enforce it. ``notify_brokers=False``
        returns once the CRL is on disk: for a caller that makes its broker enforce it as a step of its own (a
        rehearsal times the two apart), then calls ``notify_brokers`` (or not: a registered broker polls)."""
        if reason not in REASONS:
            raise PkiError(f"unknown revocation reason {reason!r}", f"choose one of: {', '.join(REASONS)}")
        with locked(self.layout):
            self._reload()
            targets = self._targets(list(device_ids), lot, fraction, seed)
            now = certs.utcnow()
            revoked = [self.inventory.revoke(t, now, reason) for t in targets]
            self._write_crl(self._issuer(), notify_brokers=notify_brokers)
        return revoked

    def _targets(self, ids: list[str], lot: str | None, fraction: float | None, seed: int | None) -> list[str]:
        if not ids and lot is None and fraction is None:
            raise PkiError("nothing to revoke", "name devices with --device, a --lot, or a --fraction")
        unknown = [i for i in ids if i not in self.inventory.devices]
        if unknown:
            raise PkiError(f"unknown device(s): {', '.join(unknown[:5])}", "see `fleetsim pki list`")
        targets = list(ids)
        if lot is not None:
            in_lot = [d.id for d in self.inventory.select(lot=lot)]
            if not in_lot:
                raise PkiError(f"no device in lot {lot!r}", "see `fleetsim pki list`")
            targets += in_lot
        if fraction is not None:
            if not 0 < fraction <= 1:
                raise PkiError(f"fraction must be in (0, 1], not {fraction}")
            pool = sorted(d.id for d in self.inventory.select(status="valid"))
            targets += random.Random(seed).sample(pool, round(len(pool) * fraction))
        return list(dict.fromkeys(targets))

    def reenroll(self, device_ids: Iterable[str], *, key_type: str | KeyType | None = None,
                 days: int = 365, workers: int | None = None) -> list[Device]:
        """Give devices a new key and certificate under the same id; the old ones go on the CRL (superseded
        unless already revoked), so a stolen old key stays useless."""
        _check_positive(days=days, workers=workers)
        ids = list(device_ids)
        with locked(self.layout):
            self._reload()
            now = certs.utcnow()
            for i in ids:
                self.inventory.revoke(self.device(i).id, now, "superseded")
            groups: dict[tuple[str, str, str, int], list[str]] = {}
            for i in ids:
                d = self.device(i)
                kt = (_key_type(key_type) if key_type else KeyType(d.key_type)).value
                groups.setdefault((d.model, d.lot, kt, d.generation + 1), []).append(i)
            out: list[Device] = []
            with journal.pending(self.layout, ids, staged=True):  # new files take their place after the save
                for (model, lot, kt, gen), group in groups.items():
                    out += self._run_jobs(group, model=model, lot=lot, key_type=KeyType(kt), days=days,
                                          fault=None, workers=workers, generation=gen)
                for d in out:
                    self.inventory.devices[d.id] = d
                self._save()
            self._write_crl(self._issuer())  # the old serials on the CRL; brokers told
        return out

    def pad_crl(self, count: int, *, reason: str = "cessationOfOperation") -> None:
        """Put ``count`` earlier revocations on the CRL, of serials no device holds: what a CRL of that size costs
        brokers and handshakes can then be measured (the sweep's crl_size). Rewrites the CRL once."""
        _check_positive(count=count)
        with locked(self.layout):
            self._reload()
            now = certs.utcnow()
            rng = random.SystemRandom()
            self.inventory.revoked.extend(RevokedSerial(rng.getrandbits(159) | 1 << 158, "", now, reason)
                                          for _ in range(count))
            self._write_crl(self._issuer())

    def notify_brokers(self) -> list[notify.Notified]:
        """Tell the registered brokers of the CRL on disk (what every CRL write does, unless its caller asked to
        do it later: ``revoke(notify_brokers=False)``)."""
        self.notified = notify.notify(self.layout)
        return self.notified

    def write_crl(self, *, valid_for: dt.timedelta = certs.CRL_VALIDITY) -> Path:
        """(Re)write the CRL with a higher number and a strictly later thisUpdate; brokers are told (notify)."""
        with locked(self.layout):
            self._reload()
            self._write_crl(self._issuer(), valid_for=valid_for)
        return self.layout.crl

    def renew_crl(self, *, valid_for: dt.timedelta = certs.CRL_VALIDITY) -> bool:
        """Rewrite the CRL if it is past half its validity (or unreadable); True if it did. What a broker, or
        its supervisor running `fleetsim pki crl --renew`, calls so the CRL never reaches its nextUpdate."""
        with locked(self.layout):
            self._reload()
            issuer = self._issuer()
            try:
                facts = crl_policy.read_crl(self.layout.crl.read_bytes(), issuer.cert)
            except (OSError, ValueError):
                facts = None
            if facts is not None and facts.issuer_ok and not crl_policy.renewal_due(facts, certs.utcnow()):
                return False
            self._write_crl(issuer, valid_for=valid_for)
        return True

    def _write_crl(self, issuer: certs.Issuer, *, valid_for: dt.timedelta = certs.CRL_VALIDITY,
                   notify_brokers: bool = True) -> None:
        inv = self._after_crl_on_disk(self.inventory, issuer)
        this_update = inv.next_crl_time(certs.utcnow())
        wait = (this_update - dt.datetime.now(dt.UTC)).total_seconds()
        if wait > 0:  # more CRLs in a burst than the backdating leaves room for
            time.sleep(wait)
        entries = [certs.Revocation(r.serial, r.when, REASONS[r.reason]) for r in inv.revoked]
        crl = certs.crl(issuer, entries, number=inv.crl_number + 1, this_update=this_update, valid_for=valid_for)
        write_file(self.layout.crl, crl.public_bytes(Encoding.PEM))
        self.inventory = replace(inv, crl_number=inv.crl_number + 1, crl_this_update=this_update)
        self._save()
        self.notified = self.notify_brokers() if notify_brokers else []

    def _after_crl_on_disk(self, inv: Inventory, issuer: certs.Issuer) -> Inventory:
        """The inventory's CRL counters, raised past the CRL on disk if that one is ahead (written by hand or by
        another tool): a broker refuses a new CRL that reuses a number or time it has seen."""
        try:
            facts = crl_policy.read_crl(self.layout.crl.read_bytes(), issuer.cert)
        except (OSError, ValueError):
            return inv
        if not facts.issuer_ok or facts.number is None or facts.number <= inv.crl_number:
            return inv
        last = max(facts.this_update, inv.crl_this_update) if inv.crl_this_update else facts.this_update
        return replace(inv, crl_number=facts.number, crl_this_update=last)

    def _reload(self) -> None:
        """The inventory as on disk, and a killed batch's files cleaned up (journal); under the lock."""
        self.inventory = Pki.open(self.root).inventory
        journal.recover(self.layout, self.inventory)

    def _save(self) -> None:
        # No indent: indenting 10,000 devices costs more than the rest of saving them.
        write_file(self.layout.inventory, self.inventory.dumps().encode())
