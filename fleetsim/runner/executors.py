"""Where a run's shards run: worker processes on this machine (the default), or tasks on a Dask cluster.

The runner's loop only needs, several times a second, what each shard last said (its snapshot), the shards that
finished (their ShardResult), the shards lost (a worker gone), and a way to ask every shard to stop. Both
executors give that, so timed events, rehearsals, progress and the results are the same wherever shards run.

On a Dask cluster each shard is one task: ``fleetsim.engine.run_shard`` in a worker's thread, reading its
devices' identities from the PKI at ``shard.pki_dir`` (a path every worker must see: a shared file system on
several hosts). Identities are read there, not shipped with the task, because a re-enrolment mid-run (a
rehearsal) writes new files the devices must pick up at their next attempt, and private keys then never travel
through the scheduler. Start times are absolute wall-clock (``shard.t0``): hosts must keep their clocks in step
(NTP); the skew of each worker's clock is measured at start and kept in meta.json.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleetsim import lifecycle
from fleetsim.engine.identity import PkiIdentities
from fleetsim.engine.shard import ShardResult, ShardSpec, run_shard
from fleetsim.errors import FleetsimError
from fleetsim.runner import placement
from fleetsim.scenario import Scenario

PROGRESS_FORWARD_S = 0.5  # how often a Dask task sends its snapshot to the client
LATE_START_S = 2.0  # a Dask task starting later than this after t0 was rescheduled: its first worker was lost


class ShardLost(RuntimeError):
    """A shard that cannot take part in the run as it was meant to (see dask_shard)."""


@dataclass
class Poll:
    """What changed since the last poll."""

    snapshots: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    results: dict[int, ShardResult] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)  # shard -> why it will not report


class Executor(Protocol):
    kind: str
    lead_s: float  # how long before t0 the shards must be handed over, so every one starts on time

    def start(self, scenario: Scenario, shards: list[ShardSpec]) -> None: ...

    def poll(self, wait: float) -> Poll: ...

    def stop(self) -> None:
        """Ask every shard to end as at the run's end (connected devices drain and disconnect)."""

    def abort(self) -> None:
        """End every shard now, results and all (a second Ctrl-C or SIGTERM)."""

    def running(self) -> bool: ...

    def close(self) -> None:
        """Release the shards' processes or tasks: none outlives this call."""

    def facts(self) -> dict[str, Any]:
        """What meta.json keeps about where the shards ran."""


# -- worker processes on this machine ---------------------------------------------------------------------------
class _Asked:
    """The run's stop event, or a SIGTERM sent to this worker itself: either ends its shard as at the run's end."""

    def __init__(self, run_stop: Any) -> None:
        self.run_stop, self.asked = run_stop, False

    def ask(self, *_: object) -> None:
        self.asked = True

    def is_set(self) -> bool:
        return self.asked or bool(self.run_stop.is_set())


def deadline(scenario: Scenario, shard: ShardSpec) -> float:
    """Wall clock by which a worker process has ended whatever happens: the run's planned end plus a grace in
    which the shard's own stop fits (the drain, DRAIN_S, then stragglers cancelled: 4.5 s at most)."""
    return shard.t0 + scenario.duration + lifecycle.GRACE_S


def _worker(scenario: Scenario, shard: ShardSpec, progress_q: Any, result_q: Any, stop: Any,
            cores: frozenset[int], parent: int, kernel_tie: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into `stop`, then collects
    asked = _Asked(stop)
    signal.signal(signal.SIGTERM, asked.ask)  # systemd signals every process of the run: end as the run does
    placement.pin(cores)  # before any thread starts (the progress queue's feeder), so all of them stay there
    lifecycle.close_inherited_listeners()  # the orchestrator's metrics port is not this process's to hold
    lifecycle.tie_to_parent(parent, signal.SIGKILL, kernel_tie)  # an orchestrator gone takes its load with it
    lifecycle.end_by(deadline(scenario, shard))  # and one that hangs cannot keep it running
    _name_process(f"fsim-shard-{shard.index}")
    result = run_shard(scenario, shard, shard_identities(shard),
                       progress=lambda s: progress_q.put((shard.index, s)), stop=asked)
    # the load has stopped (every socket closed): a shard whose stop took its whole drain still gets a moment to
    # hand its result over (pickled and written by the queue's thread before this process may end)
    lifecycle.end_by(max(deadline(scenario, shard), time.time() + lifecycle.HANDOVER_S))
    result_q.put((shard.index, result))


def shard_identities(shard: ShardSpec) -> PkiIdentities:
    assert shard.pki_dir is not None
    return PkiIdentities(shard.pki_dir, {d.id: d.key_type for d in shard.devices})  # read fresh per attempt


def _name_process(name: str) -> None:
    """What ps and psutil show (15 characters at most), so a user can tell the workers apart."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])


def _why_ended(exitcode: int | None) -> str:
    if exitcode == -signal.SIGALRM:
        return (f"its worker process was ended at its deadline (the run's end + {lifecycle.GRACE_S:g} s) before "
                "its results were taken")
    return f"its worker process ended (exit code {exitcode})"


class LocalProcesses:
    """One forked process per shard, pinned to ``cores`` when given.

    A worker ends with this process (see fleetsim.lifecycle), and by its own deadline in any case. Its result is
    taken off the pipe by a thread of this process as soon as it comes, so a main loop busy with a timed event
    never keeps a worker waiting to hand it over."""

    kind = "processes"
    # A forked worker reaches its shard ~25 ms after the fork (measured here; the time to set its devices up is
    # added on top, measured per run): 0.3 s leaves ten times that for a loaded machine. 1.0 s cost every run
    # 0.7 s of idling, and a shard that did start late books the lateness as its devices' wait, not hidden.
    lead_s = 0.3

    def __init__(self, cores: frozenset[int] = frozenset()) -> None:
        self.cores = cores
        ctx = mp.get_context("fork")
        self._ctx = ctx
        self._progress, self._results, self._stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self._taken: queue.Queue[tuple[int, ShardResult]] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._procs: dict[int, Any] = {}
        self._done: set[int] = set()

    def start(self, scenario: Scenario, shards: list[ShardSpec]) -> None:
        parent, kernel_tie = os.getpid(), lifecycle.death_signal_usable()
        for s in shards:
            p = self._ctx.Process(target=_worker, args=(scenario, s, self._progress, self._results, self._stop,
                                                        self.cores, parent, kernel_tie),
                                  name=f"fleetsim-shard-{s.index}", daemon=True)
            p.start()
            self._procs[s.index] = p
        self._reader = threading.Thread(target=self._take_results, name="fleetsim-results", daemon=True)
        self._reader.start()  # after the forks: a worker inherits no thread

    def _take_results(self) -> None:
        while (item := self._results.get()) is not None:
            self._taken.put(item)

    def poll(self, wait: float) -> Poll:
        out = Poll()
        while True:
            try:
                index, snap = self._progress.get_nowait()
            except queue.Empty:
                break
            out.snapshots[index] = snap
        with contextlib.suppress(queue.Empty):
            while True:
                index, result = self._taken.get(timeout=wait)
                out.results[index] = result
                self._done.add(index)
                wait = 0.0
        for index, p in self._procs.items():
            if index not in self._done and not p.is_alive() and index not in out.results:
                with contextlib.suppress(queue.Empty):  # it may have put its result just before it ended
                    i, result = self._taken.get(timeout=1.0)
                    out.results[i] = result
                    self._done.add(i)
                if index not in self._done:
                    out.lost[index] = _why_ended(p.exitcode)
                    self._done.add(index)
        return out

    def stop(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        self._stop.set()
        for p in self._procs.values():
            if p.is_alive():
                p.kill()

    def running(self) -> bool:
        return any(p.is_alive() for p in self._procs.values())

    def close(self) -> None:
        """Wait briefly for workers that were told to stop, then kill what is left (SIGTERM would only ask them
        to stop), also when a second signal interrupts the wait."""
        try:
            for p in self._procs.values():
                p.join(timeout=2)
        finally:
            self.abort()
            if self._reader is not None and self._reader.is_alive():
                self._results.put(None)  # the reader's last item
                self._reader.join(timeout=2)

    def facts(self) -> dict[str, Any]:
        return {"executor": self.kind}


# -- a Dask cluster ----------------------------------------------------------------------------------------------
def dask_shard(scenario: Scenario, shard: ShardSpec, run_id: str) -> ShardResult:
    """One shard as a Dask task: progress forwarded to the client's queue, the run's stop event watched, both from
    threads of their own so the shard's loop never waits on the network."""
    from distributed import Event, Queue

    if time.time() > shard.t0 + LATE_START_S:  # Dask re-ran it after its first worker was lost: it is lost
        raise ShardLost(f"shard {shard.index} would start {time.time() - shard.t0:.1f} s after t0 (its first "
                        "worker was lost); its devices are counted lost instead of joining late")
    progress_q, stop_ev = Queue(f"fleetsim-progress-{run_id}"), Event(f"fleetsim-stop-{run_id}")
    stop, latest = threading.Event(), queue.Queue[Any](maxsize=1)
    done = threading.Event()
    cancelled = _cancellation()

    def forward() -> None:
        while not done.is_set():
            with contextlib.suppress(queue.Empty):
                progress_q.put((shard.index, latest.get(timeout=PROGRESS_FORWARD_S)))
            with contextlib.suppress(Exception):
                if cancelled() or stop_ev.is_set():
                    stop.set()

    def offer(snap: dict[str, Any]) -> None:
        with contextlib.suppress(queue.Full, queue.Empty):
            if latest.full():
                latest.get_nowait()
            latest.put_nowait(snap)

    helper = threading.Thread(target=forward, name="fleetsim-forward", daemon=True)
    helper.start()
    try:
        return run_shard(scenario, shard, shard_identities(shard), progress=offer, stop=stop)
    finally:
        done.set()
        helper.join(timeout=2 * PROGRESS_FORWARD_S + 1)


def _cancellation() -> Any:
    """In a Dask task: a check whether the task was cancelled since (its client cancelled it, or went away and
    the scheduler released it): Dask cannot stop a task's thread, so the shard must see it and stop itself."""
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()

    def cancelled() -> bool:
        task = worker.state.tasks.get(key)
        return task is None or task.state in ("cancelled", "released", "forgotten")

    return cancelled


def _warm() -> None:
    import fleetsim.engine.shard  # noqa: F401


class DaskCluster:
    """Shards as tasks on a Dask cluster: ``tcp://SCHEDULER:8786``, or ``local:N`` for a LocalCluster of N worker
    processes on this machine (one thread each)."""

    kind = "dask"
    lead_s = 3.0  # tasks are scheduled, shipped and unpickled on the workers first

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise FleetsimError("--cluster needs Dask's distributed package",
                                "pip install -e '.[cluster]'") from None
        self.address = address
        self._cluster = None
        try:
            if address.startswith("local:"):
                n = int(address.split(":", 1)[1])
                self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                             dashboard_address=None, host="127.0.0.1")
                self.client = Client(self._cluster)
            else:
                self.client = Client(address, timeout=10)
        except (ValueError, OSError, TimeoutError) as exc:
            raise FleetsimError(f"cannot reach the Dask cluster at {address}: {exc}",
                                "give --cluster tcp://SCHEDULER:8786 of a running scheduler, or local:N") from None
        with contextlib.suppress(Exception):  # workers import the engine now, not after t0 in the first task
            self.client.run(_warm)
        self.run_id = uuid.uuid4().hex[:12]
        self._futures: dict[int, Any] = {}
        self._done: set[int] = set()
        self._queue: Any = None
        self._stop: Any = None
        self._skew: dict[str, float] = {}

    def start(self, scenario: Scenario, shards: list[ShardSpec]) -> None:
        from distributed import Event, Queue

        self._queue = Queue(f"fleetsim-progress-{self.run_id}", client=self.client)
        self._stop = Event(f"fleetsim-stop-{self.run_id}", client=self.client)
        self._skew = self._clock_skew()
        self._futures = {s.index: self.client.submit(dask_shard, scenario, s, self.run_id, pure=False,
                                                     key=f"fleetsim-shard-{s.index}-{self.run_id}")
                         for s in shards}

    def _clock_skew(self) -> dict[str, float]:
        """Each worker's clock minus ours (ms), from one round trip each (error: half its round trip)."""
        sent = time.time()
        theirs = self.client.run(time.time)
        back = time.time()
        return {w: round((t - (sent + back) / 2) * 1000, 3) for w, t in theirs.items()}

    def poll(self, wait: float) -> Poll:
        out = Poll()
        with contextlib.suppress(Exception):  # a queue the scheduler no longer has: nothing to read
            for index, snap in self._queue.get(batch=True):
                out.snapshots[index] = snap
        if not out.snapshots and not any(f.done() and i not in self._done for i, f in self._futures.items()):
            time.sleep(wait)
        for index, fut in self._futures.items():
            if index in self._done or not fut.done():
                continue
            self._done.add(index)
            if fut.status == "finished":
                out.results[index] = fut.result()
            else:
                out.lost[index] = f"its Dask task ended with {type(fut.exception()).__name__}: {fut.exception()}"
        return out

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._stop.set()

    def abort(self) -> None:
        """Stop every shard and cancel its task: a task already running sees the cancellation (dask_shard)."""
        self.stop()
        with contextlib.suppress(Exception):
            self.client.cancel(list(self._futures.values()), force=True)

    def running(self) -> bool:
        return any(not f.done() for f in self._futures.values())

    def close(self) -> None:
        self.abort()  # a shard still running when the run ends is cancelled, not left to run on the cluster
        with contextlib.suppress(Exception):
            self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()

    def facts(self) -> dict[str, Any]:
        return {"executor": self.kind, "cluster": self.address, "workers": sorted(self._skew),
                "clock_skew_ms": self._skew}


def executor_for(cluster: str | None, cores: frozenset[int]) -> Executor:
    return DaskCluster(cluster) if cluster else LocalProcesses(cores)
