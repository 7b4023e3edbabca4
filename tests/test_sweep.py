"""fleetsim sweep: the matrix and each cell's figures (pure), and a small real sweep that resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim.errors import ScenarioError
from fleetsim.sweep import matrix
from fleetsim.sweep.run_cells import read_sweep, run_sweep

pytestmark = pytest.mark.integration  # each cell runs a broker and a fleet

TINY = """
name = "tiny"
[fleet]
model = "thermometer"
[measure]
burst_devices = 12
steady_devices = 6
steady_rate = 10
steady_duration = 2
[[cells]]
auth = "mtls"
[[cells]]
auth = "none"
crl_size = 50
"""


def test_a_matrix_crosses_or_varies_one_setting_at_a_time() -> None:
    crossed = matrix.parse('[matrix]\nauth = ["mtls", "tls"]\nbroker = ["embedded", "mosquitto"]\n', "x.toml")
    assert len(crossed.cells) == 4 and {c.settings["broker"] for c in crossed.cells} == {"embedded", "mosquitto"}
    one = matrix.parse('[matrix]\nmode = "one-at-a-time"\nauth = ["mtls", "tls", "none"]\n'
                      'key_type = ["ecdsa-p256", "ed25519"]\ncrl_size = [0, 1000]\n'
                      '[[cells]]\nauth = "tls"\n', "x.toml")
    names = [c.name for c in one.cells]
    assert len(names) == 5 and len(set(names)) == 5  # baseline + 2 auth + 1 key type + 1 CRL; the listed one is a duplicate
    assert one.cells[0].settings == matrix.DEFAULTS
    assert {c.settings["crl_size"] for c in one.cells} == {0, 1000}


@pytest.mark.parametrize("text, says", [
    ("[matrix]\nauth = [\"mtls\", \"kerberos\"]\n", "auth: unknown value 'kerberos'"),
    ("[matrix]\ncolour = [1]\n", "unknown setting 'colour'"),
    ("[matrix]\ncrl_size = [-1]\n", "crl_size: -1 is not a whole number"),
    ("name = \"x\"\n", "no cells"),
    ("[measure]\nburst_devices = 0\n[[cells]]\nauth = \"mtls\"\n", "measure.burst_devices"),
    ("[fleet]\nmodel = \"toaster\"\n[[cells]]\nauth = \"mtls\"\n", "fleet[0].model: unknown value 'toaster'"),
])
def test_a_broken_sweep_file_is_one_line(text: str, says: str) -> None:
    with pytest.raises(ScenarioError) as e:
        matrix.parse(text, "s.toml")
    assert says in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("s.toml")


def test_each_cell_runs_its_settings_as_a_burst_and_at_a_steady_rate() -> None:
    s = matrix.parse(TINY, "tiny.toml")
    burst, steady = matrix.cell_scenarios(s, s.cells[1])
    assert burst.devices == 12 and burst.arrival.pattern == "burst" and burst.broker.auth == "none"
    assert steady.devices == 6 and steady.arrival.rate == 10 and steady.fleet[0].lot == "sweep-ecdsa-p256"
    resumed = matrix.cell_scenarios(s, matrix.Cell("r", {**matrix.DEFAULTS, "session_resumption": True}))[1]
    assert resumed.broker.session_resumption and resumed.churn.rate > 0  # devices drop once, to resume


def test_openssl_speed_output_is_read_per_key_type() -> None:
    text = """                  sign    verify    sign/s verify/s
rsa 2048 bits 0.000344s 0.000019s   2905.0  53374.0
 256 bits ecdsa (nistp256)   0.0000s   0.0001s  45056.0  15023.0
 253 bits EdDSA (Ed25519)   0.0000s   0.0001s  21472.0   7947.0
                              op      op/s
 253 bits ecdh (X25519)   0.0000s  29024.0
"""
    assert matrix.parse_openssl_speed(text) == {
        "rsa-2048": {"sign_per_s": 2905.0, "verify_per_s": 53374.0},
        "ecdsa-p256": {"sign_per_s": 45056.0, "verify_per_s": 15023.0},
        "ed25519": {"sign_per_s": 21472.0, "verify_per_s": 7947.0},
        "x25519": {"exchange_per_s": 29024.0},
    }


@pytest.mark.timeout(400)
def test_a_small_sweep_runs_every_cell_once_and_resumes(tmp_path: Path) -> None:
    definition = matrix.parse(TINY, "tiny.toml")
    sweep_dir = run_sweep(definition, out=tmp_path)
    index = read_sweep(sweep_dir)
    assert index["complete"] and [c["settings"]["auth"] for c in index["cells"]] == ["mtls", "none"]
    mtls, plain = (c["figures"] for c in index["cells"])
    assert mtls["connects_per_s"] > 0 and mtls["broker_cpu_ms_per_handshake"] > 0
    assert mtls["latency_ms"]["tls"]["n"] == 6 and plain["latency_ms"]["tls"]["n"] == 0  # plain TCP: no TLS
    assert mtls["handshake_bytes_sent"] > 500 and mtls["handshake_bytes_received"] > 1000  # chains, measured
    assert mtls["device_tls_cpu_ms"] > 0 and "handshake_bytes_sent" not in plain
    assert index["crypto_floor"]["key_types"]["ecdsa-p256"]["sign_per_s"] > 0
    assert index["cross_check"][0]["s_time_connections_per_s"] > 0
    crl = sweep_dir / "pki" / "crl-50" / "crl.pem"
    assert crl.is_file() and (sweep_dir / index["cells"][1]["burst"] / "summary.json").is_file()
    runs = {c["name"]: sorted(p.name for p in (sweep_dir / c["dir"] / "runs").iterdir()) for c in index["cells"]}
    (sweep_dir / index["cells"][1]["dir"] / "cell.json").unlink()  # as if the sweep was interrupted there
    run_sweep(definition, out=tmp_path)
    again = {c["name"]: sorted(p.name for p in (sweep_dir / c["dir"] / "runs").iterdir())
             for c in read_sweep(sweep_dir)["cells"]}
    first, second = (c["name"] for c in index["cells"])
    assert again[first] == runs[first]  # kept, not redone
    assert again[second] != runs[second] and len(again[second]) == 2  # redone whole


def test_the_cli_says_what_is_wrong_with_a_sweep_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad [1].toml"
    bad.write_text("[matrix]\nauth = [\"kerberos\"]\n")
    r = subprocess.run([sys.executable, "-m", "fleetsim", "sweep", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad [1].toml: auth: unknown value" in r.stderr


def test_a_sweep_measured_otherwise_is_never_resumed_into_the_same_directory(tmp_path: Path) -> None:
    """A smaller try (fs.run_sweep(..., measure=...), the notebook's MEASURE) or an edited [measure] would mix
    cells measured two ways in one table: one line, nothing run."""
    import fleetsim as fs
    from fleetsim.errors import FleetsimError

    definition = matrix.parse(TINY, "tiny.toml")
    assert definition.with_measure(burst_devices=4).measure.burst_devices == 4
    with pytest.raises(ScenarioError, match=r"measure\.burst_devices"):
        definition.with_measure(burst_devices=0)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "sweep.json").write_text(json.dumps({"measure": vars(definition.measure), "cells": []}))
    with pytest.raises(FleetsimError, match=r"measured otherwise \(burst_devices 12 -> 4\)") as e:
        fs.run_sweep(definition, out=tmp_path, measure={"burst_devices": 4})
    assert "another out directory" in str(e.value) and not (tmp_path / "tiny" / "cells").exists()
