"""`fleetsim run` end to end: PKI, a real broker on loopback, worker processes, results on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fleetsim.results.shape import Summary
from fleetsim.runner.orchestrate import run_scenario
from fleetsim.scenario import parse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
FLEETSIM = [sys.executable, "-m", "fleetsim"]

# What a device sees for each fault, per broker. Mosquitto never compares the CN with the client id (its ACL
# keeps an imposter to its own topics instead), so a cn-mismatch device connects there.
EXPECTED = {
    "embedded": {
        "expired": "alert_expired", "not-yet-valid": "alert_bad_certificate", "unknown-ca": "alert_unknown_ca",
        "revoked": "alert_revoked", "cn-mismatch": "connack_not_authorized", "wrong-key": "client_key_mismatch",
        "weak-key": "client_key_rejected",
    },
    "mosquitto": {
        "expired": "alert_expired", "not-yet-valid": "alert_bad_certificate", "unknown-ca": "alert_unknown_ca",
        "revoked": "alert_revoked", "cn-mismatch": "connected", "wrong-key": "client_key_mismatch",
        "weak-key": "client_key_rejected",
    },
}


def fleet_toml(target: str, *, devices: int = 60, duration: float = 5, extra: str = "") -> str:
    half = devices // 2
    return f"""
name = "small-{target}"
seed = 3
duration = {duration}
connect_timeout = 5
workers = 2
[broker]
target = "{target}"
tls_version = "1.2"
[mqtt]
qos_telemetry = 1
[arrival]
pattern = "linear"
rate = 100
[[fleet]]
model = "heart-rate-monitor"
count = {half}
lot = "ward-a"
[[fleet]]
model = "pulse-oximeter"
count = {devices - half}
lot = "ward-b"
{extra}
"""


def run(tmp_path: Path, toml: str) -> tuple[Path, Summary]:
    return run_scenario(parse(toml, "test.toml"), pki=tmp_path / "pki", out_dir=tmp_path / "out")


@pytest.mark.parametrize("target", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def test_small_fleet_connects_publishes_and_accounts_for_every_message(tmp_path: Path, target: str) -> None:
    run_dir, summary = run(tmp_path, fleet_toml(target))
    assert summary["fleet"]["connected_at_end"] == 60 and summary["outcomes"] == {"connected": 60}
    m = summary["messages"]["qos1plus"]
    assert m["published"] >= 40 and m["lost"] == 0 and m["acknowledged"] == m["published"]
    attempts = pq.read_table(run_dir / "attempts.parquet").to_pydict()
    for setup, wait, tcp, tls, mqtt, total in zip(attempts["setup_ms"], attempts["wait_ms"], attempts["tcp_ms"],
                                                  attempts["tls_ms"], attempts["mqtt_ms"], attempts["total_ms"],
                                                  strict=True):
        assert setup + wait + tcp + tls + mqtt == pytest.approx(total, abs=1e-6)
    for name in ("scenario.toml", "meta.json", "summary.json", "series.parquet", "sessions.parquet",
                 "devices.parquet", "events.json", "broker.json"):
        assert (run_dir / name).is_file(), name
    assert summary["broker"]["cpu_seconds"] > 0


@pytest.mark.parametrize("target", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def test_each_injected_fault_lands_in_its_class(tmp_path: Path, target: str) -> None:
    faults = "\n".join(f"{k.replace('-', '_')} = 0.05" for k in EXPECTED[target])
    run_dir, _ = run(tmp_path, fleet_toml(target, devices=40, duration=4, extra=f"[faults]\n{faults}\n"
                                          "[reconnect]\nmax_attempts = 1\n"))
    attempts = pq.read_table(run_dir / "attempts.parquet").to_pydict()
    seen: dict[str, Counter] = {}
    for device, outcome, failure in zip(attempts["device_id"], attempts["outcome"], attempts["failure"],
                                        strict=True):
        kind = next((k for k in EXPECTED[target] if device.startswith(f"fault-{k}-") or
                     (k == "weak-key" and device.startswith("fault-weak-key")) or
                     (k == "revoked" and device.startswith("revoked-"))), None)
        if kind:
            seen.setdefault(kind, Counter())[failure or outcome] += 1
    for kind, expected in EXPECTED[target].items():
        assert kind in seen, f"no {kind} device ran"
        assert set(seen[kind]) == {expected}, f"{kind}: {seen[kind]}"


@pytest.mark.mosquitto
def test_broker_restart_is_survived_without_losing_qos1(tmp_path: Path) -> None:
    extra = """
[mqtt]
clean_session = false
qos_telemetry = 1
[reconnect]
initial = 0.2
cap = 1
[[events]]
at = 3
action = "restart-broker"
"""
    toml = fleet_toml("mosquitto", devices=30, duration=8).replace("[mqtt]\nqos_telemetry = 1\n", "") + extra
    _, summary = run(tmp_path, toml)
    assert [e["action"] for e in summary["events"]] == ["restart-broker"]
    assert summary["attempts"] > 30, "devices reconnected after the restart"
    assert summary["fleet"]["connected_at_end"] == 30
    assert summary["messages"]["qos1plus"]["lost"] == 0


def test_ctrl_c_ends_the_run_cleanly_and_writes_results(tmp_path: Path) -> None:
    scenario = tmp_path / "long.toml"
    scenario.write_text(fleet_toml("embedded", devices=20, duration=60))
    proc = subprocess.Popen([*FLEETSIM, "run", str(scenario), "--pki", str(tmp_path / "pki"),
                             "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a CI shell may ignore it
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "out").glob("*/scenario.toml")):
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err + out
    (run_dir,) = (tmp_path / "out").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "Ctrl-C" in summary["interrupted"]
    assert summary["fleet"]["ever_connected"] == 20 and summary["wall_s"] < 30


def test_bad_scenario_is_one_line_and_report_reads_a_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nduration = -1\n[[fleet]]\nmodel = "toaster"\ncount = 1\n')
    r = subprocess.run([*FLEETSIM, "run", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.toml" in r.stderr
    r = subprocess.run([*FLEETSIM, "report", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "summary.json" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("target", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
@pytest.mark.parametrize("auth", ["none", "password", "tls", "mtls"])
def test_every_auth_mode_connects_for_the_overhead_comparison(tmp_path: Path, target: str, auth: str) -> None:
    toml = fleet_toml(target, devices=10, duration=2).replace('tls_version = "1.2"', f'auth = "{auth}"')
    _, summary = run(tmp_path, toml)
    assert summary["outcomes"] == {"connected": 10}
    tls = summary["phases_ms"]["tls"]
    assert (tls["n"] == 0) == (auth == "none")  # plain TCP has no TLS phase


def test_revocation_drill_drops_refuses_then_readmits_the_batch(tmp_path: Path) -> None:
    extra = """
[reconnect]
initial = 0.2
cap = 0.5
[[events]]
at = 2
action = "revoke"
lot = "ward-a"
[[events]]
at = 4
action = "reenroll"
"""
    run_dir, summary = run(tmp_path, fleet_toml("embedded", devices=20, duration=7, extra=extra))
    revoke, reenroll = summary["events"]
    assert revoke["devices"] == 10 and reenroll["devices"] == 10
    attempts = pq.read_table(run_dir / "attempts.parquet").to_pydict()
    by_device: dict[str, list[str]] = {}
    for device, outcome, failure in zip(attempts["device_id"], attempts["outcome"], attempts["failure"],
                                        strict=True):
        by_device.setdefault(device, []).append(failure or outcome)
    batch = [d for d in by_device if d.startswith("ward-a-")]
    others = [d for d in by_device if d.startswith("ward-b-")]
    assert len(batch) == 10 and len(others) == 10
    for d in batch:  # dropped at the revocation, refused while revoked, back after re-enrolment
        seq = by_device[d]
        assert seq[0] == "connected" and "alert_revoked" in seq and seq[-1] == "connected", seq
    for d in others:  # the healthy part of the fleet never noticed
        assert by_device[d] == ["connected"]
    assert summary["messages"]["qos1plus"]["lost"] == 0


@pytest.mark.mosquitto
def test_a_broker_that_dies_mid_run_ends_cleanly_with_results(tmp_path: Path) -> None:
    import threading

    import psutil

    def kill_broker() -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            brokers = [p for p in psutil.Process().children(recursive=True) if p.name() == "mosquitto"]
            if brokers:
                time.sleep(2.5)
                for p in brokers:
                    p.kill()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_broker, daemon=True)
    killer.start()
    run_dir, summary = run(tmp_path, fleet_toml("mosquitto", devices=20, duration=6,
                                                extra="[reconnect]\ninitial = 0.2\ncap = 0.5\n"))
    killer.join()
    assert summary["fleet"]["ever_connected"] == 20
    assert summary["outcomes"].get("tcp_refused", 0) > 0  # they kept trying, with backoff, and said why
    assert (run_dir / "attempts.parquet").is_file() and (run_dir / "summary.json").is_file()


def test_a_fleet_too_big_for_the_open_files_limit_is_one_line(tmp_path: Path) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard > 40_000:
        pytest.skip("this machine's open-files limit fits any fleet on one worker")
    r = subprocess.run([*FLEETSIM, "run", "scenarios/ward.toml", "--devices", "45000", "--workers", "1",
                        "--pki", str(tmp_path / "pki")], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "open files" in r.stderr and "--workers" in r.stderr and len(r.stderr.strip().splitlines()) == 1
