"""Issue 23 item 2: how long a run's processes live. `fleetsim run` (the CLI, a real process) is signalled
mid-run as `timeout`, CI, systemd or a crash would: SIGTERM ends it as Ctrl-C does, and no worker or broker it
started outlives it, nor the run's planned end plus a grace."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleetsim.lifecycle import GRACE_S

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
FLEETSIM = [sys.executable, "-m", "fleetsim"]
HAVE_MOSQUITTO = os.access("/usr/sbin/mosquitto", os.X_OK)


def scenario(tmp_path: Path, *, target: str = "embedded", devices: int = 20, duration: float = 60,
             workers: int = 2, extra: str = "") -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f"""
name = "lifecycle"
seed = 5
duration = {duration}
connect_timeout = 5
workers = {workers}
[broker]
target = "{target}"
tls_version = "1.2"
[mqtt]
qos_telemetry = 1
[arrival]
pattern = "linear"
rate = 400
[[fleet]]
model = "pulse-oximeter"
count = {devices}
lot = "lifecycle"
{extra}
""")
    return path


class Run:
    """`fleetsim run` as a user starts it from a shell (its own process group, so only it gets our signals).
    Its output goes to files, not pipes: an orphaned worker holding a pipe would keep a reader waiting."""

    def __init__(self, tmp_path: Path, toml: Path, *args: str, command: str = "run") -> None:
        self.out = tmp_path / "out"
        self.stdout, self.stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen([*FLEETSIM, command, str(toml), "--pki", str(tmp_path / "pki"), "--out",
                                          str(self.out), *args], stdout=out, stderr=err, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        self.seen: list[psutil.Process] = []

    def line(self, prefix: str, timeout: float = 60) -> str:
        """The first line of its output starting with ``prefix``, once it is there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [ln for ln in self.stdout.read_text().splitlines() if ln.startswith(prefix)]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no line {prefix!r} in {self.stdout.read_text()}")

    def workers(self) -> list[psutil.Process]:
        return [c for c in self._children() if c.name().startswith("fsim-shard")]

    def _children(self) -> list[psutil.Process]:
        try:
            return self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def under_way(self, settle: float = 2.0, timeout: float = 60) -> list[psutil.Process]:
        """Once the workers run (and ``settle`` s more): every process the run started, workers and broker."""
        deadline = time.monotonic() + timeout
        while not self.workers():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.end()
            time.sleep(0.1)
        time.sleep(settle)
        self.seen = self._children()
        return self.seen

    def end(self, timeout: float = 60) -> tuple[str, str]:
        self.proc.wait(timeout=timeout)
        return self.stdout.read_text(), self.stderr.read_text()

    def summary(self) -> dict:
        (run_dir,) = self.out.iterdir()
        return json.loads((run_dir / "summary.json").read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """The runs a test starts; any of their processes left at its end are killed."""
    started: list[Run] = []
    yield started
    for r in started:
        r.kill()
        gone_within(r.seen, 0)


def gone_within(procs: list[psutil.Process], seconds: float) -> list[str]:
    """The processes still alive after ``seconds`` (name and pid), none if all ended."""
    _, alive = psutil.wait_procs(procs, timeout=seconds) if procs else ([], [])
    left = []
    for p in alive:  # named, then killed: none is left behind for the next test
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.name()} ({p.pid})")
                p.kill()
    return left


def listening(proc: psutil.Process) -> list[int]:
    return [c.laddr.port for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, scenario(tmp_path), "--metrics-port", "0")
    runs.append(run)
    port = int(run.line("metrics: ").split("127.0.0.1:")[1].split("/")[0])
    children = run.under_way()
    assert {p.pid: listening(p) for p in run.workers()} == {p.pid: [] for p in run.workers()}, \
        "a worker holds a listening socket of the orchestrator (the metrics port)"
    run.proc.send_signal(signal.SIGTERM)
    out, err = run.end()
    assert run.proc.returncode == 143, err
    assert "Traceback" not in out + err and "error: terminated" in err
    summary = run.summary()
    assert summary["interrupted"] == "terminated (SIGTERM)" and summary["fleet"]["ever_connected"] == 20
    (run_dir,) = run.out.iterdir()
    assert all((run_dir / f"{name}.parquet").is_file() for name in ("attempts", "sessions", "devices", "series"))
    assert gone_within(children, 2.0) == []
    with socket.socket() as s:  # free at once: no worker kept a copy
        s.bind(("127.0.0.1", port))


def test_a_second_signal_ends_the_run_at_once(tmp_path: Path, runs: list[Run]) -> None:
    """Workers that cannot answer (stopped here) would keep the first signal's collection waiting for 20 s."""
    run = Run(tmp_path, scenario(tmp_path))
    runs.append(run)
    children = run.under_way()
    for w in run.workers():
        w.suspend()
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert run.proc.poll() is None, "the first signal waits for the workers' results"
    second = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    _, err = run.end()
    assert run.proc.returncode == 143 and time.monotonic() - second < 5, err
    assert "Traceback" not in err
    assert gone_within(children, 2.0) == []


@pytest.mark.parametrize("target", ["embedded", pytest.param("mosquitto", marks=pytest.mark.skipif(
    not HAVE_MOSQUITTO, reason="mosquitto not installed"))])
def test_killing_the_orchestrator_takes_its_workers_and_broker(tmp_path: Path, runs: list[Run],
                                                               target: str) -> None:
    run = Run(tmp_path, scenario(tmp_path, target=target))
    runs.append(run)
    children = run.under_way(settle=1.0)
    names = {p.name() for p in children}
    assert any(n.startswith("fsim-shard") for n in names) and len(children) >= 3, names  # workers + the broker
    run.proc.kill()
    run.end()
    assert gone_within(children, 2.0) == []


@pytest.mark.slow
def test_a_worker_ends_by_its_deadline_when_its_orchestrator_hangs(tmp_path: Path, runs: list[Run]) -> None:
    """SIGSTOP: the orchestrator lives but never takes the workers' results (over a pipe's 64 KB each, so a
    worker that waits to hand its result over waits for ever)."""
    duration = 3.0
    run = Run(tmp_path, scenario(tmp_path, devices=400, duration=duration, workers=1))
    runs.append(run)
    run.under_way(settle=0.5)
    workers = run.workers()
    started = min(w.create_time() for w in workers)
    run.ps.suspend()
    try:
        # a worker starts 1 s (+ the set-up lead, ~1 s for 400 devices) before t0
        bound = started + 1.0 + 2.0 + duration + GRACE_S + 2.0
        assert gone_within(workers, max(0.0, bound - time.time())) == []
    finally:
        run.kill()


def _shards_running(dask_worker: object) -> int:
    """On a Dask worker: shards under way (each has its forwarding thread for as long as it runs)."""
    import threading

    return sum(t.name == "fleetsim-forward" for t in threading.enumerate())


@pytest.mark.slow
def test_a_dask_shard_stops_when_its_client_goes_away(tmp_path: Path, runs: list[Run]) -> None:
    """A cluster that outlives the run (a scheduler and workers of their own): the orchestrator is killed, and
    its shard, which Dask cannot stop from outside, sees its task cancelled and stops long before its end."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        run = Run(tmp_path, scenario(tmp_path, workers=1), "--cluster", cluster.scheduler_address)
        runs.append(run)

        def running() -> int:
            return sum(client.run(_shards_running).values())

        deadline = time.monotonic() + 60
        while running() == 0:
            assert run.proc.poll() is None and time.monotonic() < deadline, run.end()
            time.sleep(0.2)
        time.sleep(1.0)
        run.proc.kill()
        run.end()
        deadline = time.monotonic() + 8  # the cancellation is seen within 0.5 s, the stop drains for up to 4.5 s
        while running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running() == 0, "the shard still runs on the cluster after its orchestrator was killed"


REHEARSAL = """
[revocation]
lot = "lifecycle"
steady = "connected"
steady_timeout = 8
reenroll_after = 30
"""


def test_sigterm_ends_a_rehearsal_with_its_results(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, scenario(tmp_path, extra=REHEARSAL), command="rehearse")
    runs.append(run)
    children = run.under_way(settle=3.0)
    run.proc.send_signal(signal.SIGTERM)
    _, err = run.end()
    assert run.proc.returncode == 143, err
    summary = run.summary()
    assert summary["interrupted"] == "terminated (SIGTERM)" and "revocation" in summary
    assert gone_within(children, 2.0) == []


SWEEP = """
name = "tiny"
[fleet]
model = "thermometer"
[measure]
burst_devices = 6
steady_devices = 4
steady_rate = 10
steady_duration = 4
[[cells]]
auth = "none"
[[cells]]
auth = "mtls"
"""


@pytest.mark.slow
def test_sigterm_ends_a_sweep_keeping_its_finished_cells(tmp_path: Path) -> None:
    definition = tmp_path / "tiny.toml"
    definition.write_text(SWEEP)
    proc = subprocess.Popen([*FLEETSIM, "sweep", str(definition), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("cell 2/2"):
                break
        time.sleep(2)  # into the second cell's first run
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM) in cell" in err and "Traceback" not in out + err
    index = json.loads((tmp_path / "out" / "tiny" / "sweep.json").read_text())
    assert [c["settings"]["auth"] for c in index["cells"]] == ["none"] and index["complete"] is False
    (second,) = (d for d in (tmp_path / "out" / "tiny" / "cells").iterdir() if d.name != index["cells"][0]["name"])
    assert any((run / "summary.json").is_file() for run in (second / "runs").iterdir()), "its interrupted run kept"
