"""Broker isolation: the broker fleetsim starts on a core of its own, the workers on the others."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetsim.errors import FleetsimError
from fleetsim.runner import placement
from fleetsim.runner.orchestrate import broker_cores_here, run_scenario
from fleetsim.scenario import parse

TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")


def test_split_gives_the_broker_the_last_core() -> None:
    p = placement.split([3, 0, 2, 1])
    assert p.broker == {3} and p.workers == {0, 1, 2}
    assert p.describe() == "broker on core 3, workers on 0,1,2"
    assert p.as_dict() == {"broker_cores": [3], "worker_cores": [0, 1, 2]}
    assert placement.Placement().as_dict() == {"broker_cores": [], "worker_cores": []}
    with pytest.raises(FleetsimError, match="needs at least two cores, this process may use 1"):
        placement.split([5])


def test_the_workers_leave_a_broker_on_this_machine_its_cores() -> None:
    assert placement.default_workers(2, 1) == 1
    assert placement.default_workers(8, 3) == 5
    assert placement.default_workers(4, 0) == 4  # the broker runs elsewhere
    assert placement.default_workers(1, 1) == 1 and placement.default_workers(2, 4) == 1  # never none


def test_which_brokers_take_cores_here() -> None:
    def scenario(broker: str) -> Any:
        return parse(f"[broker]\n{broker}\n[[fleet]]\nmodel = \"thermometer\"\ncount = 1\n")

    assert broker_cores_here(scenario('target = "mosquitto"'), None) == 1
    assert broker_cores_here(scenario('target = "mosquitto"\nprocesses = 3'), None) == 3
    assert broker_cores_here(scenario('target = "127.0.0.1:8883"'), None) == 1
    assert broker_cores_here(scenario('target = "10.0.0.1:8883"\nallow_remote = true'), None) == 0


@TWO_CORES
@pytest.mark.integration
def test_on_cores_is_inherited_by_what_starts_inside_and_undone_after() -> None:
    before = os.sched_getaffinity(0)
    last = max(before)
    with placement.on_cores({last}):
        child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True, check=True).stdout
    assert child.strip() == f"[{last}]"
    assert os.sched_getaffinity(0) == before


@TWO_CORES
@pytest.mark.timeout(120)
@pytest.mark.integration
def test_an_isolated_run_keeps_broker_and_workers_apart_across_a_restart(tmp_path: Path) -> None:
    scenario = parse("""
name = "isolated"
duration = 5
connect_timeout = 5
[broker]
isolate = true
[reconnect]
initial = 0.2
cap = 1
[[fleet]]
model = "heart-rate-monitor"
count = 20
[[events]]
at = 2
action = "restart-broker"
""", "isolated.toml")
    cores = placement.split(os.sched_getaffinity(0))
    seen: dict[int, tuple[str, frozenset[int]]] = {}
    done = threading.Event()

    def watch() -> None:  # every process the run starts, and the cores it may use
        while not done.wait(0.05):
            for p in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):  # gone between the listing and the question
                    if cmdline := p.cmdline():  # a zombie (the broker a restart stopped) has none: keep what it was
                        seen[p.pid] = (" ".join([p.name(), *cmdline]), frozenset(p.cpu_affinity()))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run_dir, summary = run_scenario(scenario, pki=tmp_path / "pki", out_dir=tmp_path / "out")
    finally:
        done.set()
        watcher.join()
    assert summary["fleet"]["ever_connected"] == 20 and [e["action"] for e in summary["events"]] == ["restart-broker"]
    workers = {pid: c for pid, (name, c) in seen.items() if name.startswith("fsim-shard")}
    brokers = {pid: c for pid, (name, c) in seen.items() if "fleetsim.broker.embedded.child" in name}
    assert len(workers) == len(cores.workers) and set(workers.values()) == {cores.workers}
    assert len(brokers) >= 2, "the broker and its restart"
    assert set(brokers.values()) == {cores.broker}
    meta = (run_dir / "meta.json").read_text()
    assert '"broker_cores": [' in meta and '"worker_cores": [' in meta
