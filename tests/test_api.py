"""The Python API a notebook uses, through `import fleetsim as fs` only: from a fresh interpreter, and from inside
a running asyncio loop (as in Jupyter), against a real embedded broker with a PKI made at test time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fleetsim as fs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCRIPT = """
import asyncio, socket, sys
import fleetsim as fs

pki = fs.Pki.init(sys.argv[1] + "/pki")
scenario = fs.Scenario(name="api", fleet=[fs.Group("pulse-oximeter", 12, lot="ward")], duration=3,
                       arrival=fs.Arrival("linear", 50), mqtt={"qos_telemetry": 1})
seen = []

def go():
    with fs.start_broker("embedded", pki) as broker:
        run = fs.run(scenario, pki=pki, broker=broker, out=sys.argv[1] + "/results", progress=seen.append,
                     fail_on=["connected<100%", "p50.total<0.001ms"])
        device = run.attempts.column("device_id")[0].as_py()
        ctx = pki.client_context(device)                      # a client of one's own
        with socket.create_connection((broker.host, broker.port), timeout=5) as raw, \\
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            cid = device.encode()
            body = b"\\x00\\x04MQTT\\x04\\x02\\x00\\x3c" + len(cid).to_bytes(2, "big") + cid
            tls.sendall(bytes([0x10, len(body)]) + body)
            assert tls.recv(4) == b"\\x20\\x02\\x00\\x00", "CONNACK accepted"
    return run

async def main():
    return go()  # called straight from a coroutine, the loop running in this very thread, as in Jupyter

run = go() if sys.argv[2] == "plain" else asyncio.run(main())
s = run.summary
assert s.fleet.connected_at_end == 12 and s.outcomes == {"connected": 12}, dict(s)
assert s.phases["tls"].p99 > 0 and s.phases["total"].p99_9 >= s.phases["total"].p50
assert run.attempts.num_rows == 12 and run.series.num_rows >= 3 and run.sessions.num_rows == 12
assert [v.rule for v in s.thresholds] == ["connected<100%", "p50.total<0.001ms"]  # judged as `run --fail-on`
assert [v["rule"] for v in run.breached] == [] and list(run.figures()) == ["timeline", "phases", "failures", "machine"]
again = fs.load_run(run.dir)
assert again.summary.raw == s.raw and again.scenario == scenario.replace(source=again.scenario.source)
assert seen and isinstance(seen[-1], fs.Progress) and seen[-1].devices == 12
print("ok", s.messages.qos1plus.published)
"""


@pytest.mark.parametrize("where", ["plain", "loop"])
def test_a_notebook_runs_a_fleet_with_the_public_api(tmp_path: Path, where: str) -> None:
    script = tmp_path / "nb.py"
    script.write_text(textwrap.dedent(SCRIPT))
    r = subprocess.run([sys.executable, str(script), str(tmp_path), where], capture_output=True, text=True,
                       timeout=150)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr[-3000:]


def test_scenarios_built_in_python_have_file_defaults_and_api_words_in_errors() -> None:
    s = fs.Scenario(fleet=[fs.Group("thermometer", 5)])  # a list, as users write it (type-checked)
    assert s.duration == 60 and s.broker.target == "embedded" and s.devices == 5
    assert fs.parse_scenario(s.to_toml(), "x.toml") == s
    with pytest.raises(fs.FleetsimError, match=r"fleet: no device groups; pass fleet=\[Group"):
        fs.Scenario()
    with pytest.raises(fs.FleetsimError, match="broker: must be a table, got 5; pass broker="):
        fs.Scenario(fleet=[fs.Group("thermometer", 1)], broker=5)  # type: ignore[arg-type]
    with pytest.raises(fs.FleetsimError, match=r"fleet\[0\].count: must be a positive integer"):
        fs.Scenario(fleet=[fs.Group("thermometer", 0)])
    assert s.replace(duration=5).duration == 5


def test_bad_input_to_the_api_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(fs.FleetsimError, match=r"no summary\.json"):
        fs.load_run(tmp_path)
    with pytest.raises(fs.FleetsimError, match="METRIC OP VALUE"):  # before anything runs
        fs.run(tmp_path / "never-read.toml", fail_on=["p50.total"])
    with pytest.raises(fs.FleetsimError, match="unknown broker kind"):
        fs.start_broker("rabbit", tmp_path)
    pki = fs.Pki.init(tmp_path / "pki")
    with pytest.raises(fs.FleetsimError, match="options: host, port"):
        fs.start_broker("embedded", pki, colour="blue")
    with pytest.raises(fs.FleetsimError, match="no device 'nobody'"):
        pki.client_context("nobody")
