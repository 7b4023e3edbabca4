"""``fleetsim pki``: create a fleet's PKI, issue, revoke and re-enrol device identities, list them.

Every bad input ends as one ``FleetsimError`` line, printed by ``fleetsim.cli.main``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from cryptography import x509
from rich.console import Console
from rich.table import Table

from fleetsim import words
from fleetsim.cli.console import PIPED_WIDTH
from fleetsim.errors import PkiError
from fleetsim.pki import REASONS, Fault, KeyType, Pki
from fleetsim.pki.certs import ROLES

F = TypeVar("F", bound=Callable[..., Any])
out = Console(highlight=False, soft_wrap=True, markup=False)  # paths stay whole when piped, brackets too

STATUSES = ("valid", "revoked")
TABLE_LIMIT = 100  # rows a table shows when --limit is not given; --json lists everything


class Interrupted(PkiError):
    """Ctrl-C: said in one line (typer would exit 130 silently), exit code 130 as for any interrupted command."""

    exit_code = 130


app = typer.Typer(help="Create and manage a fleet's PKI: CAs, broker and device identities, CRL.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _os_errors(fn: F) -> F:
    """A file system refusal (permissions, full disk) is the user's to fix: say so in one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # a closed reader of our output is not a file problem (see cli.main)
            raise
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise PkiError(f"cannot write or read{where}: {exc.strerror or exc}",
                           "check the path and its permissions") from None

    return wrapper  # type: ignore[return-value]


def _choice(value: str | None, choices: list[str], what: str) -> None:
    if value is not None and value not in choices:
        raise PkiError(f"unknown {what} {value!r}", f"choose one of: {', '.join(choices)}")


def _key_types() -> list[str]:
    return [k.value for k in KeyType if k is not KeyType.RSA_1024]


DirArg = typer.Argument(..., metavar="DIR", help="The PKI directory.", show_default=False)


@app.command()
@_os_errors
def init(
    directory: Path = DirArg,
    org: str = typer.Option("fleetsim", "--org", help="Organisation in every subject name."),
    trust_domain: str = typer.Option("fleetsim.local", "--trust-domain", help="SPIFFE trust domain of device URIs."),
    server_name: list[str] = typer.Option([], "--server-name", help="Extra broker SAN (DNS name or IP); repeatable."),
    crl_url: str | None = typer.Option(None, "--crl-url", help="CRL distribution point (file: or http:); "
                                       "default: file: URL of DIR/crl.pem."),
    ca_key_type: str = typer.Option("ecdsa-p256", "--ca-key-type", help=f"One of {', '.join(_key_types())}."),
    server_key_type: str | None = typer.Option(None, "--server-key-type", help="Default: the CA key type."),
) -> None:
    """Create root CA, issuing CA, rogue CA, broker certificate and an empty CRL in a new DIR."""
    pki = Pki.init(directory, org=org, trust_domain=trust_domain, server_names=server_name, crl_url=crl_url,
                   ca_key_type=ca_key_type, server_key_type=server_key_type)
    out.print(f"created PKI in {pki.root} (trust domain {pki.inventory.trust_domain}, CRL {pki.inventory.crl_url})")
    out.print(f"  broker: --cafile {pki.layout.ca_chain} --cert {pki.layout.server_cert} "
              f"--key {pki.layout.server_key} --crlfile {pki.layout.crl}")


@app.command()
@_os_errors
def issue(
    directory: Path = DirArg,
    count: int = typer.Option(..., "--count", "-n", help="How many new device identities."),
    prefix: str = typer.Option("dev", "--prefix", help="Ids are PREFIX-00001, ... after the highest issued."),
    model: str = typer.Option("generic", "--model", help="Device model (subject OU)."),
    lot: str = typer.Option("lot-1", "--lot", help="Manufacturing lot, for revoking by lot."),
    key_type: str = typer.Option("ecdsa-p256", "--key-type", help=f"One of {', '.join(_key_types())}."),
    days: int = typer.Option(365, "--days", help="Validity in days."),
    fault: str | None = typer.Option(None, "--fault", help=f"Break them on purpose: {', '.join(Fault)}."),
    workers: int | None = typer.Option(None, "--workers", help="Processes (default: all cores)."),
) -> None:
    """Issue COUNT new device identities; existing files are not touched."""
    pki = Pki.open(directory)
    t0 = time.perf_counter()
    try:
        devices = pki.issue(count, prefix=prefix, model=model, lot=lot, key_type=key_type, days=days, fault=fault,
                            workers=workers)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: no identity was issued and its partial files were removed",
                          "run the same command again") from None
    elapsed = time.perf_counter() - t0
    label = f" with fault {fault}" if fault else ""
    out.print(f"issued {words.count(len(devices), devices[0].key_type + ' identity')}{label} "
              f"({devices[0].id} .. {devices[-1].id}) in {elapsed:.2f} s: {len(devices) / elapsed:,.0f}/s")


@app.command()
@_os_errors
def monitor(
    directory: Path = DirArg,
    name: str = typer.Argument("monitor", help="Its client id, CN and SPIFFE name."),
    days: int = typer.Option(365, "--days", help="Validity in days."),
) -> None:
    """Issue a monitor identity: it may subscribe to every topic (a dashboard, a test's subscriber), publish none."""
    identity = Pki.open(directory).issue_monitor(name, days=days)
    out.print(f"issued monitor {identity.id}: devices/{identity.id}.pem and .key "
              f"(subscribes to any topic on the embedded broker and Mosquitto; publishes none)")


@app.command()
@_os_errors
def revoke(
    directory: Path = DirArg,
    device: list[str] = typer.Option([], "--device", "-d", help="Device id; repeatable."),
    lot: str | None = typer.Option(None, "--lot", help="Revoke every device of this lot."),
    fraction: float | None = typer.Option(None, "--fraction", help="Revoke this fraction of valid devices."),
    seed: int | None = typer.Option(None, "--seed", help="Makes --fraction reproducible."),
    reason: str = typer.Option("keyCompromise", "--reason", help=f"One of {', '.join(REASONS)}."),
) -> None:
    """Revoke devices and rewrite the CRL."""
    pki = Pki.open(directory)
    revoked = pki.revoke(device_ids=device, lot=lot, fraction=fraction, seed=seed, reason=reason)
    inv = pki.inventory
    out.print(f"revoked {words.count(len(revoked), 'device')} ({reason}); CRL #{inv.crl_number} lists "
              f"{words.count(len(inv.revoked), 'serial')}: {pki.layout.crl}")
    _report_brokers(pki)


def _report_brokers(pki: Pki) -> None:
    """Which local brokers already enforce the new CRL (fleetsim.pki.notify), and what holds for the others."""
    for n in pki.notified:
        if n.error is None:
            out.print(f"  enforced by the embedded broker pid {n.pid} (CRL #{n.crl_number}) {n.ms:.1f} ms after "
                      f"it was written")
        elif n.stale:
            out.print(f"  removed a stale broker registration (pid {n.pid}, {n.url}): {n.error}")
        else:
            out.print(f"  broker pid {n.pid} did not confirm ({n.error}); it polls crl.pem every 0.2 s")
    if not pki.notified:
        out.print("  no local embedded broker registered: a running one applies it within 0.2 s; Mosquitto "
                  "only after SIGHUP (see brokers/README.md)")


@app.command()
@_os_errors
def reenroll(
    directory: Path = DirArg,
    device: list[str] = typer.Option([], "--device", "-d", help="Device id; repeatable."),
    lot: str | None = typer.Option(None, "--lot", help="Re-enrol every device of this lot."),
    key_type: str | None = typer.Option(None, "--key-type", help="Default: each device's current key type."),
    days: int = typer.Option(365, "--days", help="Validity in days."),
) -> None:
    """Give devices a new key and certificate under the same id; old serials stay on the CRL."""
    pki = Pki.open(directory)
    ids = list(device)
    if lot is not None:
        in_lot = [d.id for d in pki.devices(lot=lot)]
        if not in_lot:
            raise PkiError(f"no device in lot {lot!r}", "see `fleetsim pki list`")
        ids += in_lot
    if not ids:
        raise PkiError("nothing to re-enrol", "name devices with --device or a --lot")
    devices = pki.reenroll(list(dict.fromkeys(ids)), key_type=key_type, days=days)
    out.print(f"re-enrolled {words.count(len(devices), 'device')} with new keys and serials")


@app.command()
@_os_errors
def crl(
    directory: Path = DirArg,
    renew: bool = typer.Option(False, "--renew", help="Only if it is past half its validity (for a supervisor's timer)."),
    days: float = typer.Option(7.0, "--days", min=0.001, help="Validity of the new CRL in days."),
) -> None:
    """Rewrite the CRL (higher number, later thisUpdate) and show it; local embedded brokers enforce it at once."""
    pki = Pki.open(directory)
    valid_for = dt.timedelta(days=days)
    if renew and not pki.renew_crl(valid_for=valid_for):
        out.print(f"{pki.layout.crl}: not due for renewal yet")
        return
    path = pki.write_crl(valid_for=valid_for) if not renew else pki.layout.crl
    try:
        parsed = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise PkiError(f"corrupt CRL {path} ({exc})", "rewrite it with `fleetsim pki crl`") from None
    number = parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    out.print(f"{path}: number {number}, thisUpdate {parsed.last_update_utc.isoformat()}, "
              f"nextUpdate {parsed.next_update_utc.isoformat() if parsed.next_update_utc else '-'}, "
              f"{words.count(len(parsed), 'revoked serial')}")
    _report_brokers(pki)


@app.command("list")
@_os_errors
def list_(
    directory: Path = DirArg,
    status: str | None = typer.Option(None, "--status", help="valid or revoked."),
    lot: str | None = typer.Option(None, "--lot"),
    model: str | None = typer.Option(None, "--model"),
    fault: str | None = typer.Option(None, "--fault", help=f"none, {', '.join(Fault)}."),
    role: str | None = typer.Option(None, "--role", help="device or monitor (default: both)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    limit: int | None = typer.Option(None, "--limit", help=f"At most this many (table default {TABLE_LIMIT})."),
) -> None:
    """The inventory: a table, or JSON lines for scripts."""
    _choice(status, list(STATUSES), "status")
    _choice(fault, ["none", *Fault], "fault")
    _choice(role, list(ROLES), "role")
    if limit is not None and limit < 0:
        raise PkiError(f"limit must not be negative, not {limit}")
    devices = Pki.open(directory).devices(status=status, lot=lot, model=model, fault=fault, role=role)
    if as_json:
        for d in devices[:limit]:
            typer.echo(json.dumps(d.to_json()))
        return
    shown = devices[: TABLE_LIMIT if limit is None else limit]
    table = Table("id", "serial", "model", "lot", "key", "not after", "fault", "status", "gen", "role")
    for d in shown:
        table.add_row(d.id, format(d.serial, "x")[:16], d.model, d.lot, d.key_type, d.not_after.date().isoformat(),
                      d.fault.value if d.fault else "", d.status, str(d.generation), d.role)
    wide = out if out.is_terminal else Console(highlight=False, width=PIPED_WIDTH, markup=False)  # piped: whole ids
    wide.print(table)
    more = f" (showing {len(shown):,}; --limit or --json for more)" if len(shown) < len(devices) else ""
    out.print(f"{words.count(len(devices), 'device')}{more}")
