"""Past one process: shards on a Dask LocalCluster (the same run as local processes; a worker lost mid-run), a
pool of brokers, and devices spread over several source addresses; real brokers on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from fleetsim.runner.orchestrate import run_scenario
from fleetsim.scenario import load, parse

pytest.importorskip("distributed", reason="pip install -e '.[cluster]'")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ROOT = Path(__file__).parent.parent


def test_a_local_cluster_run_is_the_same_run_as_local_processes(tmp_path: Path) -> None:
    ward = load(ROOT / "scenarios" / "ward.toml").with_overrides(devices=60, duration=8)
    _, local = run_scenario(ward, pki=tmp_path / "pki", out_dir=tmp_path / "local")
    run_dir, dask = run_scenario(ward, pki=tmp_path / "pki", out_dir=tmp_path / "dask", cluster="local:2")
    for key in ("devices", "attempts", "outcomes"):
        assert dask[key] == local[key], key
    assert dask["fleet"]["connected_at_end"] == local["fleet"]["connected_at_end"] == 60
    assert dask["messages"]["qos1plus"]["lost"] == 0
    meta = json.loads((run_dir / "meta.json").read_text())  # written once, at the end: the skews measured at start
    assert meta["executor"] == "dask" and meta["clock_skew_ms"] and meta["started_utc"]
    ids = sorted(pq.read_table(run_dir / "devices.parquet").column("device_id").to_pylist())
    assert ids == sorted(pq.read_table(next((tmp_path / "local").iterdir()) / "devices.parquet")
                         .column("device_id").to_pylist())


def _holds_devices(process: psutil.Process, at_least: int = 5) -> bool:
    """The process holds ``at_least`` established connections to one port: a shard's devices at its broker (Dask's
    own links go to a scheduler and a nanny, one each)."""
    try:
        ports = Counter(c.raddr.port for c in process.net_connections("tcp")
                        if c.status == psutil.CONN_ESTABLISHED and c.raddr)
    except psutil.Error:
        return False
    return bool(ports) and max(ports.values()) >= at_least


def _kill_one_dask_worker(after: float, killed: list[int]) -> None:
    """Kill a Dask worker process once its shard's devices are connected (mid-run, whatever the start-up took)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        workers = [p for p in psutil.Process().children(recursive=True)
                   if "dask" in " ".join(p.cmdline()).lower() or "spawn_main" in " ".join(p.cmdline())]
        busy = [p for p in workers if _holds_devices(p)]
        if busy:
            time.sleep(after)
            busy[0].kill()
            killed.append(busy[0].pid)
            return
        time.sleep(0.1)


def test_a_worker_lost_mid_run_costs_its_devices_only(tmp_path: Path) -> None:
    toml = """
name = "lost"
seed = 2
duration = 10
workers = 2
[mqtt]
qos_telemetry = 1
[arrival]
rate = 50
[[fleet]]
model = "ecg-patch"
count = 20
"""
    killed: list[int] = []
    killer = threading.Thread(target=_kill_one_dask_worker, args=(1.0, killed), daemon=True)
    killer.start()
    run_dir, s = run_scenario(parse(toml, "lost.toml"), pki=tmp_path / "pki", out_dir=tmp_path / "out",
                              cluster="local:2")
    killer.join()
    assert killed, "no Dask worker process was found to kill"
    lost = s["lost_with_worker"]
    assert lost["devices"] == 10 and len(lost["shards"]) == 1
    kept = set(pq.read_table(run_dir / "devices.parquet").column("device_id").to_pylist())
    assert len(kept) == 10 and not kept & set(lost["device_ids"])  # the other worker's rows are all there
    assert s["fleet"]["connected_at_end"] == 10 and any("lost with their worker" in w for w in s["warnings"])


def _fleet(target: str, extra: str = "", broker_extra: str = "") -> str:
    return f"""
name = "spread"
seed = 4
duration = 4
workers = 2
{extra}
[broker]
target = "{target}"
{broker_extra}
[arrival]
rate = 100
[[fleet]]
model = "thermometer"
count = 40
"""


@pytest.mark.parametrize("target", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def test_a_pool_of_two_brokers_shares_the_fleet(tmp_path: Path, target: str) -> None:
    run_dir, s = run_scenario(parse(_fleet(target, broker_extra="processes = 2"), "pool.toml"),
                              pki=tmp_path / "pki", out_dir=tmp_path / "out")
    assert s["fleet"]["connected_at_end"] == 40
    members: list[dict[str, Any]] = s["broker"]["members"]
    assert len(members) == 2 and members[1]["port"] == members[0]["port"] + 1
    assert [m["accepted"] for m in members] == [20, 20] and s["broker"]["accepted"] == 40
    assert (run_dir / "broker.log").is_file() or target == "mosquitto"


@pytest.mark.mosquitto
def test_devices_connect_from_the_source_addresses_they_are_given(tmp_path: Path) -> None:
    toml = _fleet("mosquitto", extra='source_addresses = ["127.0.0.2", "127.0.0.3"]')
    run_dir, s = run_scenario(parse(toml, "src.toml"), pki=tmp_path / "pki", out_dir=tmp_path / "out")
    assert s["fleet"]["connected_at_end"] == 40
    log = (run_dir / "broker.log").read_text()
    seen = {src: log.count(f"New client connected from {src}:") for src in ("127.0.0.1", "127.0.0.2", "127.0.0.3")}
    assert seen["127.0.0.2"] == 20 and seen["127.0.0.3"] == 20 and seen["127.0.0.1"] == 0
