"""An interrupted `fleetsim pki issue` leaves no identity files the inventory does not know (hole 7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from fleetsim.pki import Pki, journal

CLI = [sys.executable, "-c", "from fleetsim.cli import main; main()"]


def files(pki: Pki) -> set[str]:
    return {p.name for p in pki.layout.devices.iterdir() if p.name != journal.PENDING}


def known(pki: Pki) -> set[str]:
    inv = json.loads(pki.layout.inventory.read_text())
    return {f"{d['id']}{s}" for d in inv["devices"] for s in (".pem", ".key")}


def issue_and_stop(pki: Pki, sig: int) -> subprocess.CompletedProcess[str]:
    """Start a big issue, let it write a few hundred files, then signal its whole process group (Ctrl-C does)."""
    proc = subprocess.Popen([*CLI, "pki", "issue", str(pki.root), "--count", "20000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(os.listdir(pki.layout.devices)) < 400 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "it finished before it could be interrupted"
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_removes_the_partial_batch_and_says_so(make_pki: Callable[..., Pki]) -> None:
    pki = make_pki()
    pki.issue(2)
    before = files(pki)
    result = issue_and_stop(pki, signal.SIGINT)
    assert result.returncode == 130
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted: no identity was issued" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert files(pki) == before == known(pki)


def test_a_killed_issue_is_cleaned_up_by_the_next_change(make_pki: Callable[..., Pki]) -> None:
    pki = make_pki()
    result = issue_and_stop(pki, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    assert len(files(pki)) >= 400 and (pki.layout.devices / journal.PENDING).exists()
    issued = Pki.open(pki.root).issue(3)
    assert [d.id for d in issued] == ["dev-00001", "dev-00002", "dev-00003"]
    assert files(pki) == known(pki) and len(known(pki)) == 6
    assert not (pki.layout.devices / journal.PENDING).exists()


def test_reenrolment_files_take_their_place_only_with_the_inventory(make_pki: Callable[..., Pki],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki()
    dev, = (d.id for d in pki.issue(1))
    old_cert = pki.layout.device_cert(dev).read_bytes()

    def fail_to_save() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pki, "_save", fail_to_save)
    with pytest.raises(KeyboardInterrupt):
        pki.reenroll([dev])
    assert pki.layout.device_cert(dev).read_bytes() == old_cert  # the old identity still in place
    assert files(pki) == {f"{dev}.pem", f"{dev}.key"}
    monkeypatch.undo()
    new, = Pki.open(pki.root).reenroll([dev])
    assert pki.layout.device_cert(dev).read_bytes() != old_cert
    assert files(pki) == {f"{dev}.pem", f"{dev}.key"} and new.generation == 2


def test_recover_adopts_staged_files_the_saved_inventory_names(make_pki: Callable[..., Pki]) -> None:
    """A kill between saving the inventory and renaming the staged files: the next run finishes the job."""
    pki = make_pki()
    dev, = (d.id for d in pki.issue(1))
    lay = pki.layout
    pki.reenroll([dev])  # files now in place; stage them again as if the renames had not happened
    for suffix in journal.SUFFIXES:
        os.replace(lay.devices / f"{dev}{suffix}", lay.devices / journal.staged_name(f"{dev}{suffix}"))
    (lay.devices / journal.PENDING).write_text(json.dumps({"pid": 1, "staged": True, "ids": [dev]}))
    assert journal.recover(lay, Pki.open(pki.root).inventory) == 2
    assert files(pki) == {f"{dev}.pem", f"{dev}.key"}
