"""Identity files written before the inventory names them: a journal, so an interrupted batch leaves no orphans.

New identities are written under their final names (an exclusive create each: nobody reads them before the
inventory lists them, and a rename per file would cost bulk issuance several percent). So before a batch writes
anything, its ids go into ``DIR/devices/.pending.json``; once the inventory is saved the journal goes. A batch
that fails or is interrupted (Ctrl-C) removes its files at once; after a kill, the next change to the PKI (under
its lock) removes the files of every journaled id the inventory does not list. Files nobody journaled are never
touched.

Re-enrolment replaces files in use, so its files are written under staged names (``.<id>.pem.staged``) and
renamed into place once the inventory names the new serials; after a kill, a staged certificate whose serial the
inventory has is adopted, any other staged file removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography import x509

from fleetsim.pki.inventory import Inventory
from fleetsim.pki.layout import Layout, write_file

PENDING = ".pending.json"
SUFFIXES = (".pem", ".key")


def staged_name(name: str) -> str:
    return f".{name}.staged"


def _journal(layout: Layout) -> Path:
    return layout.devices / PENDING


@contextlib.contextmanager
def pending(layout: Layout, ids: Sequence[str], *, staged: bool) -> Iterator[None]:
    """Journal ``ids`` around writing their files and saving the inventory that names them (the body)."""
    write_file(_journal(layout), json.dumps({"pid": os.getpid(), "staged": staged, "ids": list(ids)}).encode())
    try:
        yield
    except BaseException:
        _discard(layout, ids, staged=staged)
        _journal(layout).unlink(missing_ok=True)
        raise
    if staged:
        for device_id in ids:
            _adopt(layout, device_id)
    _journal(layout).unlink(missing_ok=True)


def recover(layout: Layout, inventory: Inventory) -> int:
    """After a killed batch: remove the files of journaled ids the inventory does not name, adopt staged files
    whose serial it does. Call under the PKI's lock. Returns how many files it removed or adopted."""
    try:
        entry = json.loads(_journal(layout).read_bytes())
        ids, staged = [str(i) for i in entry["ids"]], bool(entry["staged"])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError):
        _journal(layout).unlink(missing_ok=True)  # half-written: its batch never wrote a file
        return 0
    done = 0
    for device_id in ids:
        device = inventory.devices.get(device_id)
        if staged:
            if device is not None and _staged_serial(layout, device_id) == device.serial:
                done += _adopt(layout, device_id)
            else:
                done += _discard(layout, [device_id], staged=True)
        elif device is None:
            done += _discard(layout, [device_id], staged=False)
    _journal(layout).unlink(missing_ok=True)
    return done


def _staged_serial(layout: Layout, device_id: str) -> int | None:
    try:
        pem = (layout.devices / staged_name(f"{device_id}.pem")).read_bytes()
        return x509.load_pem_x509_certificate(pem).serial_number
    except (OSError, ValueError):
        return None


def _adopt(layout: Layout, device_id: str) -> int:
    moved = 0
    for suffix in SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            os.replace(layout.devices / staged_name(device_id + suffix), layout.devices / (device_id + suffix))
            moved += 1
    return moved


def _discard(layout: Layout, ids: Sequence[str], *, staged: bool) -> int:
    removed = 0
    for device_id in ids:
        for suffix in SUFFIXES:
            name = staged_name(device_id + suffix) if staged else device_id + suffix
            with contextlib.suppress(FileNotFoundError):
                (layout.devices / name).unlink()
                removed += 1
    return removed
