"""The shipped scenarios share one PKI: every one runs after every other on it, in any order.

One id is one physical device, so it keeps one key type and model whichever scenario names it (see
fleetsim.runner.provision). The fast check derives every id each shipped scenario (and each cell of a shipped
sweep) would issue from the files alone; the slow one runs them all, scaled down, through the CLI on one PKI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim import scenario
from fleetsim.runner import provision
from fleetsim.sweep import matrix

ROOT = Path(__file__).parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))
SWEEPS = sorted((ROOT / "scenarios" / "sweeps").glob("*.toml"))
CLASH = "where this scenario wants"


def _claims(pki: str, runs: list[tuple[str, scenario.Scenario]]) -> dict[str, dict[str, tuple[str, dict]]]:
    """For one PKI: each id any of ``runs`` would issue -> (the first run naming it, what it wants there);
    fails on the first id two runs want as different devices."""
    seen: dict[str, tuple[str, dict]] = {}
    for name, sc in runs:
        slots = provision.plan(sc)
        for device_id, slot in zip(provision.device_ids(slots), slots, strict=True):
            want = provision.wants(slot)
            first, had = seen.setdefault(device_id, (name, want))
            clash = {k for k in want if provision.ANY not in (want[k], had[k]) and want[k] != had[k]}
            assert not clash, f"{pki}: {device_id} is {had} in {first} and {want} in {name}"
    return {pki: seen}


def test_no_id_is_two_devices_across_the_shipped_scenarios() -> None:
    """Every scenarios/*.toml runs on the default ./pki; each sweep's cells share that sweep's PKIs
    (results/<sweep>/pki/crl-N): no id may be wanted with two key types or models on one PKI."""
    seen = _claims("./pki", [(p.name, scenario.load(p)) for p in SCENARIOS])
    assert any(i.startswith("pumps-") for i in seen["./pki"])  # the lot once issued both as RSA and as ECDSA
    for path in SWEEPS:
        s = matrix.load(path)
        for crl_size in {c.settings["crl_size"] for c in s.cells}:
            cells = [c for c in s.cells if c.settings["crl_size"] == crl_size]
            _claims(f"{path.name} crl-{crl_size}",
                    [(f"{c.name}/{what}", sc) for c in cells
                     for what, sc in zip(("burst", "steady"), matrix.cell_scenarios(s, c), strict=True)])


DEVICES, DURATION, REHEARSAL_DURATION = "16", "2", "9"  # a rehearsal needs its steps: steady, revoke, re-enrol
# what each scenario exits with by design; none expected to fail the run at this scale
EXIT = {p.name: 0 for p in SCENARIOS}


def _order() -> list[Path]:
    """The README's order first (the demo, then the revocations that once clashed with it), the rest after, and
    the demo again last: every scenario meets the PKI as the others left it (revoked and re-enrolled lots too)."""
    first = [ROOT / "scenarios" / n for n in ("ward.toml", "rehearsal.toml", "revocation-drill.toml")]
    return [*first, *(p for p in SCENARIOS if p not in first), first[0]]


@pytest.mark.slow
@pytest.mark.mosquitto
@pytest.mark.timeout(600)
def test_every_shipped_scenario_runs_after_every_other_on_one_pki(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    for path in _order():
        rehearsal = "[revocation]" in path.read_text()
        args = ["rehearse" if rehearsal else "run", str(path), "--pki", str(tmp_path / "pki"),
                "--out", str(tmp_path / "results"), "--devices", DEVICES,
                "--duration", REHEARSAL_DURATION if rehearsal else DURATION]
        r = subprocess.run([sys.executable, "-m", "fleetsim", *args], capture_output=True, text=True, timeout=180,
                           env=env, cwd=tmp_path)
        assert CLASH not in r.stderr + r.stdout, (path.name, r.stderr)
        assert r.returncode == EXIT[path.name], (path.name, r.returncode, r.stderr[-2000:])
