"""Figures a user can trust, end to end with real brokers: each headline figure of a run is recomputed here from
the raw rows it came from (attempts.parquet, sessions.parquet, series.parquet), and every failure is blamed on
the side that caused it."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.mosquitto.broker import free_port
from fleetsim.pki import Pki
from fleetsim.results.shape import Summary
from fleetsim.runner import provision
from fleetsim.runner.orchestrate import run_scenario
from fleetsim.scenario import parse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
FLEETSIM = [sys.executable, "-m", "fleetsim"]
ROOT = Path(__file__).parent.parent
TARGETS = ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]


def scenario_toml(target: str, *, devices: int, duration: float, pattern: str = "linear", rate: float = 200,
                  workers: int = 2, max_attempts: int = 0, extra: str = "") -> str:
    return f"""
name = "figures"
seed = 11
duration = {duration}
connect_timeout = 20
workers = {workers}
[broker]
target = "{target}"
[mqtt]
qos_telemetry = 1
keepalive = 120
[arrival]
pattern = "{pattern}"
rate = {rate}
[reconnect]
initial = 0.2
cap = 1
max_attempts = {max_attempts}
[[fleet]]
model = "ecg-patch"
count = {devices}
lot = "fig"
{extra}
"""


def run(tmp_path: Path, toml: str, pki: Path | None = None) -> tuple[Path, Summary]:
    return run_scenario(parse(toml, "figures.toml"), pki=pki or tmp_path / "pki", out_dir=tmp_path / "out")


def table(run_dir: Path, name: str) -> dict[str, list[Any]]:
    return pq.read_table(run_dir / f"{name}.parquet").to_pydict()


def fleetsim(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEETSIM, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("target", TARGETS)
def test_a_burst_that_loads_the_loop_is_figured_from_its_rows(tmp_path: Path, target: str) -> None:
    run_dir, s = run(tmp_path, scenario_toml(target, devices=700, duration=8, pattern="burst", workers=1))
    a, sessions, series = table(run_dir, "attempts"), table(run_dir, "sessions"), table(run_dir, "series")
    t0 = s["t0"]
    start = np.asarray(a["start"]) - t0
    end = start + np.asarray(a["total_ms"]) / 1000
    ok = np.asarray(a["outcome"]) == "connected"
    assert ok.sum() == 700 == s["fleet"]["ever_connected"]
    # per-second connects are CONNACK times binned, whatever the loop was doing when it counted them
    n = len(series["second"])

    def binned(t: np.ndarray) -> list[int]:  # an event a hair before t0 (a timer firing early) is second 0's
        return np.bincount(np.clip(np.floor(t), 0, None).astype(int), minlength=n)[:n].tolist()

    assert series["connects"] == binned(end[ok])
    assert series["attempts"] == binned(start)
    # the headline rate is the storm's: first attempt to the last first CONNACK
    up = s["fleet_up"]
    assert up["devices"] == 700
    assert up["span_s"] == pytest.approx(end[ok].max() - start.min(), abs=1e-3)
    assert up["rate_per_s"] == pytest.approx(700 / (end[ok].max() - start.min()), rel=1e-3)
    assert s["connect_rate"]["mean_per_s"] == pytest.approx(700 / s["duration_s"], rel=1e-3)
    assert s["connect_rate"]["peak_per_s"] == max(series["connects"])
    # the connected count never falls in the last second: the run's stop is not a drop
    full = [c for c, cov in zip(series["connected"], series["covered_s"], strict=True) if cov > 0]
    assert full[-1] == 700 == s["fleet"]["connected_at_end"] == s["fleet"]["peak_connected"]
    assert sessions["cause"] == ["stop"] * 700 and s["drops"] == {"stop": 700}
    # phases are contiguous, the simulator's own queue booked apart
    parts = sum(np.asarray(a[c], dtype=float) for c in ("setup_ms", "wait_ms", "tcp_ms", "tls_ms", "mqtt_ms"))
    assert np.allclose(parts, a["total_ms"], atol=1e-6)
    # at most 96 attempts in flight to a broker on this machine, under its listen backlog (100): no SYN dropped
    assert max(a["tcp_ms"]) < 900
    sim = s["simulator"]
    assert sim["admission"]["cap"] == [96] and 32 <= sim["admission"]["peak_in_flight"][0] <= 96
    # an admitted attempt is inside its row's [start, start + total]: the rows bound the peak from above
    edges = sorted([(t, 1) for t in start] + [(t, -1) for t in end])
    assert sim["admission"]["peak_in_flight"][0] <= max(np.cumsum([d for _, d in edges]))
    assert sim["admission"]["peak_waiting"] > 700 // 2  # a burst: most devices waited for admission
    assert sim["set_up_before_t0"] == {"devices": 700, "of": 700}  # the lead was sized from this machine's speed
    lag = sim["loop_lag_ms"]
    assert lag["n"] > 100 and lag["max"] is not None and lag["p99"] is not None and lag["max"] >= lag["p99"] >= 0
    assert len(series["loop_lag_ms_max"]) == n and max(series["sim_cpu_max"]) > 0.2
    q1 = s["messages"]["qos1plus"]
    assert q1["published"] == sum(series["published"]) and q1["acknowledged"] == sum(series["acked"])
    assert q1["lost"] == 0
    b = s["broker"]
    assert b["available"] and b["cpu_ms_per_handshake"] > 0 and b["handshakes_in_storm"] == 700
    # the machine's busy share over the storm, from its raw samples between the first and last inside the window
    machine = json.loads((run_dir / "machine.json").read_text())
    inside = [x for x in machine["cpu_samples"] if start.min() <= x["t"] <= end[ok].max()]
    busy = s["machine"]["busy_in_storm"]
    if len(inside) >= 2:
        share = (inside[-1]["busy_s"] - inside[0]["busy_s"]) / ((inside[-1]["t"] - inside[0]["t"]) * machine["cores"])
        assert busy == {"share": pytest.approx(share, abs=1e-3), "from_s": inside[0]["t"], "to_s": inside[-1]["t"],
                        "cores": machine["cores"]}
        assert 0 < busy["share"] <= 1.0
    else:
        assert busy is None


@pytest.mark.parametrize("target", TARGETS)
def test_broker_counters_and_cpu_add_up_across_a_restart(tmp_path: Path, target: str) -> None:
    extra = '[[events]]\nat = 2.5\naction = "restart-broker"\n'
    run_dir, s = run(tmp_path, scenario_toml(target, devices=40, duration=7, extra=extra))
    broker = json.loads((run_dir / "broker.json").read_text())
    b = s["broker"]
    connected = s["outcomes"]["connected"]
    assert connected >= 80  # every device twice: before and after the restart
    assert b["accepted"] >= connected  # both processes' counters, not only the new one's
    if target == "embedded":
        assert len(broker["processes"]) == 2 and b["accepted"] == sum(p["accepted"] for p in broker["processes"])
        for key in ("qos0_discarded", "slow_consumers_dropped", "subscriptions_refused"):  # a healthy fleet: none
            assert b[key] == broker[key] == 0
        assert b["cpu_seconds"] == pytest.approx(sum(p["cpu_seconds"] for p in broker["processes"]), abs=0.05)
    samples = broker["cpu_samples"]
    assert samples and samples[-1]["cpu_seconds"] == pytest.approx(b["cpu_seconds"], abs=0.1)
    assert all(x["cpu_seconds"] <= y["cpu_seconds"] + 1e-9 for x, y in itertools.pairwise(samples))
    (restart,) = s["events"]
    assert restart["connected_before"] == 40 and restart["recovered_after_s"] is not None
    assert s["drops"].get("broker_closed", 0) + s["drops"].get("reset", 0) == 40


def test_a_device_that_cannot_load_its_identity_never_reaches_the_broker(tmp_path: Path) -> None:
    toml = scenario_toml("embedded", devices=12, duration=3, max_attempts=2)
    sc = parse(toml, "figures.toml")
    pki = Pki.init(tmp_path / "pki")
    fleet = provision.provision(pki, provision.plan(sc))
    broken_key, missing_cert = fleet[0].device_id, fleet[1].device_id
    armour = b"PRIVATE" + b" KEY-----"  # spelled apart: no key-looking block is committed
    pki.layout.device_key(broken_key).write_bytes(b"-----BEGIN " + armour + b"\n!!not base64!!\n-----END " + armour)
    pki.layout.device_cert(missing_cert).unlink()
    (tmp_path / "s.toml").write_text(toml)
    r = fleetsim("run", str(tmp_path / "s.toml"), "--pki", str(pki.root), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr  # the rest of the fleet connected
    assert "Traceback" not in r.stdout + r.stderr
    warnings = [ln for ln in r.stdout.splitlines() if ln.startswith("warning:") and "own identity" in ln]
    assert len(warnings) == 1 and "2 devices" in warnings[0]
    (run_dir,) = (tmp_path / "out").iterdir()
    a = table(run_dir, "attempts")
    rows = {d: (f, detail) for d, f, detail in zip(a["device_id"], a["failure"], a["detail"], strict=True)}
    assert rows[broken_key][0] == "client_identity" and f"{broken_key}.key" in rows[broken_key][1]
    assert rows[missing_cert][0] == "client_identity" and f"{missing_cert}.pem" in rows[missing_cert][1]
    assert "No such file" in rows[missing_cert][1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["identity_problems"]["devices"] == 2
    assert summary["broker"]["rejected_total"] == 0  # the broker never saw them: no aborted handshakes
    assert summary["fleet"]["states"]["gave_up"] == 2 and summary["fleet"]["connected_at_end"] == 10


def test_a_broker_that_is_down_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    r = fleetsim("run", "scenarios/ward.toml", "--broker", f"127.0.0.1:{port}", "--pki", str(tmp_path / "pki"),
                 "--out", str(tmp_path / "out"), timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and f"nothing listens at 127.0.0.1:{port}" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_in_which_nothing_can_connect_stops_early_and_says_why(tmp_path: Path) -> None:
    from fleetsim.broker.embedded.process import start_embedded

    theirs = Pki.init(tmp_path / "their-pki")
    with start_embedded(theirs.root, BrokerOptions(port=0)) as broker:
        toml = scenario_toml(f"127.0.0.1:{broker.port}", devices=30, duration=60, rate=50)
        (tmp_path / "s.toml").write_text(toml)
        r = fleetsim("run", str(tmp_path / "s.toml"), "--pki", str(tmp_path / "our-pki"), "--out",
                     str(tmp_path / "out"), timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "server_untrusted" in errors[0] and "--pki" in errors[0]
    (run_dir,) = (tmp_path / "out").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "no device could connect" in summary["stopped_early"] and summary["duration_s"] < 15
    assert summary["outcomes"] == {"server_untrusted": summary["attempts"]}


def test_fail_on_rules_set_the_exit_code_and_are_named(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(scenario_toml("embedded", devices=10, duration=2))
    common = (str(tmp_path / "s.toml"), "--pki", str(tmp_path / "pki"), "--out", str(tmp_path / "out"))
    ok = fleetsim("run", *common, "--fail-on", "connected<100%", "--fail-on", "lost>0")
    assert ok.returncode == 0, ok.stderr
    bad = fleetsim("run", *common, "--fail-on", "connected<100%,p50.total>0.001ms")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")] == [
        next(ln for ln in bad.stderr.splitlines() if "p50.total>0.001ms breached" in ln)]
    assert "BREACHED" in bad.stdout
    wrong = fleetsim("run", *common, "--fail-on", "p50.total")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "METRIC OP VALUE" in wrong.stderr


@pytest.mark.parametrize("toml, says", [
    ('name = "x"\nduraton = 5\n[[fleet]]\nmodel = "thermometer"\ncount = 1\n', "in [top level]"),
    ('name = "x"\n[arrival]\npatern = "burst"\n[[fleet]]\nmodel = "thermometer"\ncount = 1\n', "in [arrival]"),
    ('name = "x"\n', "add at least one [[fleet]] table"),
    ('name = "x"\n[broker]\ntarget = "10.1.2.3:8883"\n[[fleet]]\nmodel = "thermometer"\ncount = 1\n',
     "set allow_remote = true in [broker]"),
])
def test_messages_keep_their_brackets(tmp_path: Path, toml: str, says: str) -> None:
    where = tmp_path / "odd [dir]"
    where.mkdir()
    (where / "s[1].toml").write_text(toml)
    r = fleetsim("run", str(where / "s[1].toml"), "--pki", str(tmp_path / "pki"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert says in r.stderr and "odd [dir]/s[1].toml" in r.stderr


def test_the_small_things_a_new_user_trips_over(tmp_path: Path) -> None:
    for bare in ((), ("pki",), ("broker",)):
        r = fleetsim(*bare)
        assert r.returncode == 0 and "Usage" in r.stdout and "error" not in r.stderr, bare
    Pki.init(tmp_path / "pki").issue(3, workers=1)
    piped = subprocess.run(f"{sys.executable} -m fleetsim pki list {tmp_path / 'pki'} --json | head -1",
                           shell=True, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert json.loads(piped.stdout)["id"] == "dev-00001" and piped.stderr == ""
    (tmp_path / "not-pki").mkdir()
    (tmp_path / "not-pki" / "notes.txt").write_text("mine")
    r = fleetsim("run", "scenarios/ward.toml", "--pki", str(tmp_path / "not-pki"))
    assert r.returncode == 2 and "is not a fleetsim PKI" in r.stderr and r.stderr.count("\n") == 1


def test_progress_reaches_a_log_without_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(scenario_toml("embedded", devices=5, duration=12, rate=5))
    r = fleetsim("run", str(tmp_path / "s.toml"), "--pki", str(tmp_path / "pki"), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "/12 s" in ln and "connected" in ln]
    assert len(lines) >= 1
