"""fleetsim rehearse against real brokers: 100 devices, a lot of 20 revoked once the fleet is steady, enforced by
each strategy, re-enrolled; exactly the revoked are refused, the healthy never are, and every figure is read from
the rows of the run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from fleetsim.broker.embedded.broker import start_embedded
from fleetsim.broker.handle import BrokerOptions
from fleetsim.pki import Pki
from fleetsim.rehearsal.drive import Rehearsal
from fleetsim.results.shape import Summary
from fleetsim.runner.orchestrate import run_scenario
from fleetsim.scenario import parse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
FLEETSIM = [sys.executable, "-m", "fleetsim"]


def toml(target: str, *, strategy: str = "", reenroll: str = "2", duration: float = 12, revocation: str = "") -> str:
    return f"""
name = "rehearse-{target}"
seed = 9
duration = {duration}
connect_timeout = 5
[broker]
target = "{target}"
[mqtt]
qos_telemetry = 1
clean_session = false
[arrival]
pattern = "linear"
rate = 200
[reconnect]
initial = 0.2
cap = 0.5
[[fleet]]
model = "infusion-pump"
count = 20
lot = "leaked"
[[fleet]]
model = "heart-rate-monitor"
count = 80
lot = "fine"
[revocation]
{revocation or 'lot = "leaked"'}
{'' if 'steady' in revocation else 'steady = "connected"'}
steady_timeout = 8
reenroll_after = {reenroll}
{f'strategy = "{strategy}"' if strategy else ""}
"""


def rehearse(tmp_path: Path, text: str) -> tuple[Path, Summary]:
    return run_scenario(parse(text, "rehearse.toml"), pki=tmp_path / "pki", out_dir=tmp_path / "out")


def rows(run_dir: Path, name: str) -> dict[str, list[Any]]:
    return pq.read_table(run_dir / f"{name}.parquet").to_pydict()


def assert_steps_in_order(r: dict[str, Any], sessions: dict[str, list[Any]], t0: float, revoked: set[str]) -> None:
    """Nothing the CRL causes comes before the CRL is on disk: read from the session rows (worker clocks) and the
    summary's steps (the orchestrator's), so an origin or clock off between them shows."""
    written = r["crl_written_after_s"]
    assert written <= r["enforcement_step_after_s"] and written <= r["first_revoked_refused_after_s"]
    assert written <= r["last_revoked_session_gone_after_s"]
    decided = r["decided_at_s"]
    ends = [e - t0 - decided for d, s, e in zip(sessions["device_id"], sessions["start"], sessions["end"], strict=True)
            if d in revoked and s - t0 <= decided < e - t0]
    assert len(ends) == r["revoked_live_at_decision"] and min(ends) >= written - 0.001, (min(ends), written)


def test_embedded_reload_refuses_exactly_the_revoked_and_takes_them_back_renewed(tmp_path: Path) -> None:
    run_dir, s = rehearse(tmp_path, toml("embedded"))
    r = s["revocation"]
    revoke = next(e for e in s["events"] if e["action"] == "revoke")
    assert r["revoked"] == 20 and r["strategy"] == "reload" and revoke["steady"] == "100 of 100 connected"
    a = rows(run_dir, "attempts")
    t0 = s["t0"]
    start = np.asarray(a["start"]) - t0
    leaked = np.asarray([d.startswith("leaked-") for d in a["device_id"]])
    ok = np.asarray(a["outcome"]) == "connected"
    events = json.loads((run_dir / "events.json").read_text())  # with the devices and serials each step acted on
    reenrolled = {d for e in events if e["action"] == "reenroll" for d in e["device_ids"]}
    revoked_serials = next(e["serials"] for e in events if e["action"] == "revoke")
    presented = np.isin(np.asarray(a["serial"], dtype=object), revoked_serials)  # the certificate it sent
    while_revoked = presented & (start >= revoke["enforced_at_s"])
    assert while_revoked.sum() > 0 and not ok[while_revoked].any()  # every attempt with a revoked one refused
    assert set(np.asarray(a["failure"], dtype=object)[while_revoked]) <= {"alert_revoked", "rejected_after_handshake"}
    assert ok[~leaked].all()  # the healthy fleet never noticed
    assert set(np.asarray(a["device_id"], dtype=object)[ok & leaked & ~presented]) == reenrolled  # back, renewed
    assert r["false_accepts"] == 0 and r["false_rejects"] == 0 and r["healthy_messages_lost"] == 0
    assert r["revoked_live_at_decision"] == 20 and r["revoked_still_connected_at_end"] == 0
    assert 0 < r["last_revoked_session_gone_after_s"] < 2 and r["first_revoked_refused_after_s"] > 0
    assert r["reenrolled_back"] == 20 and r["all_back_after_s"] is not None and r["fleet_back_after_s"] is not None
    revoked = set(next(e["device_ids"] for e in events if e["action"] == "revoke"))
    assert_steps_in_order(r, rows(run_dir, "sessions"), t0, revoked)
    pki = Pki.open(tmp_path / "pki")
    renewed = [pki.device(d) for d in reenrolled]
    assert all(d.status == "valid" and d.generation == 2 for d in renewed)
    series = rows(run_dir, "series")
    assert max(series["connected_revoked"]) == 20 and series["connected_healthy"][-1] == 80
    assert sum(series["refused_alert_revoked"]) == r["refused_by"].get("alert_revoked", 0)


@pytest.mark.parametrize("strategy", ["poll", "reload"])
def test_the_revoke_step_writes_the_crl_and_only_the_strategy_enforces_it(make_pki: Callable[..., Pki],
                                                                          strategy: str) -> None:
    """The step timed as "CRL written" must not also make the broker enforce it (a registered broker is told of
    every CRL a plain revoke writes): else the revoked sessions end inside it, and `poll` never polls."""
    pki = make_pki()
    fleet = {d.id: (d.lot, d.model) for d in pki.issue(3, lot="leaked", model="infusion-pump")}
    sc = parse(toml("embedded", strategy=strategy, revocation='lot = "leaked"\nsteady = 1'), "r.toml")
    with start_embedded(pki.root, BrokerOptions(port=0)) as broker, \
            start_embedded(pki.root, BrokerOptions(port=0)) as bystander:  # another broker registered on the PKI
        before = broker.stats()["crl"]["number"]
        record, = Rehearsal(sc, pki, broker, fleet).fire_due(1.0, {"connected": 3})
        assert record["crl_number"] == before + 1
        after = before if strategy == "poll" else before + 1  # reload: told after its step, as by a plain revoke
        assert broker.stats()["crl"]["number"] == after and bystander.stats()["crl"]["number"] == after


@pytest.mark.mosquitto
@pytest.mark.parametrize("strategy", ["sighup", "none", "restart", "kick"])
def test_each_mosquitto_strategy_is_measured_for_what_it_does(tmp_path: Path, strategy: str) -> None:
    reenroll = "2" if strategy == "restart" else "false"  # Mosquitto's kept sessions would never come back
    _, s = rehearse(tmp_path, toml("mosquitto", strategy=strategy, reenroll=reenroll, duration=9))
    r = s["revocation"]
    assert r["strategy"] == strategy and r["revoked"] == 20 and r["false_accepts"] == 0
    if strategy in ("sighup", "none"):  # Mosquitto never cuts live sessions: they stay, reported not hidden
        assert r["revoked_still_connected_at_end"] == 20 and r["last_revoked_session_gone_after_s"] is None
        assert r["false_rejects"] == 0 and r["revoked_refused_attempts"] == 0
    elif strategy == "kick":  # the dynamic-security plugin cuts exactly the revoked, by name
        assert r["revoked_still_connected_at_end"] == 0 and r["last_revoked_session_gone_after_s"] < 3
        assert r["false_rejects"] == 0 and r["collateral_drops"] == 0 and r["revoked_refused_attempts"] > 0
    else:  # a restart cuts everyone: the healthy drops are its collateral, the revoked are refused on return
        assert r["revoked_still_connected_at_end"] == 0 and r["collateral_drops"] == 80 and r["false_rejects"] == 0
        assert r["revoked_refused_attempts"] > 0 and r["reenrolled_back"] == 20
        assert r["healthy_messages_lost"] == 0


@pytest.mark.parametrize("revocation, strategy, says", [
    ('devices = []', "", "revocation.devices: must be a non-empty list"),
    ('lot = "nowhere"', "", "revocation.lot: no [[fleet]] group has lot 'nowhere'"),
    ('lot = "leaked"\nsteady = 99', "", "revocation.steady: 99 s is not within the duration"),
    ('lot = "leaked"', "sighup", "revocation.strategy: the embedded broker cannot do 'sighup'"),
    ('devices = ["leaked-infusion-pump-00099"]', "", "names devices the fleet does not have"),
])
def test_bad_rehearsals_are_one_line(tmp_path: Path, revocation: str, strategy: str, says: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(toml("embedded", strategy=strategy, revocation=revocation))
    r = subprocess.run([*FLEETSIM, "rehearse", str(path), "--pki", str(tmp_path / "pki"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_scenario_without_revocation_is_not_a_rehearsal(tmp_path: Path) -> None:
    r = subprocess.run([*FLEETSIM, "rehearse", "scenarios/ward.toml"], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 2 and "no [revocation] section" in r.stderr


def test_a_rehearsal_gets_its_timeline_and_steps_in_the_html_report(tmp_path: Path) -> None:
    run_dir, _ = rehearse(tmp_path, toml("embedded", duration=8))
    page = tmp_path / "r.html"
    r = subprocess.run([*FLEETSIM, "report", str(run_dir), "--html", str(page)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "<h2>Revocation rehearsal</h2>" in text and "first revoked device refused" in text
    assert text.count("data:image/png;base64,") >= 5  # the run's figures and the rehearsal's timeline
