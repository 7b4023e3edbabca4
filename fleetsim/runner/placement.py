"""Which cores a broker fleetsim starts and the fleet's workers run on, when one machine hosts both.

Why it matters (measured with benchmarks/bench_fidelity.py on 2 cores): loopback TCP wakes the reader with a
"sync" wakeup, so Linux often moves the broker onto the device's core, where it runs its part of the handshake
in the middle of the device's last write. The device's tls_ms then carries the broker's certificate checks:
a median of 3.1 ms with both on one core against 2.0 ms apart, for the same CPU time in the device. A device on
another machine would see that time as CONNECT-to-CONNACK. With ``[broker] isolate = true`` the broker (and
the runner's own mostly idle process, whose threads and restarts it inherits) gets the last core, the workers
the others.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fleetsim.errors import FleetsimError


@dataclass(frozen=True)
class Placement:
    """Cores for the broker and for the workers; empty sets: wherever the scheduler puts them."""

    broker: frozenset[int] = frozenset()
    workers: frozenset[int] = frozenset()

    def describe(self) -> str:
        if not self.broker:
            return "broker and workers placed by the scheduler"
        return f"broker on core {_cores(self.broker)}, workers on {_cores(self.workers)}"

    def as_dict(self) -> dict[str, list[int]]:
        return {"broker_cores": sorted(self.broker), "worker_cores": sorted(self.workers)}


def split(cores: Iterable[int]) -> Placement:
    """The highest core for the broker, the rest for the workers."""
    ordered = sorted(set(cores))
    if len(ordered) < 2:
        raise FleetsimError(f"isolating the broker needs at least two cores, this process may use {len(ordered)}",
                            "drop `isolate` from [broker] (or run on a machine with more cores)")
    return Placement(frozenset(ordered[-1:]), frozenset(ordered[:-1]))


def default_workers(usable: int, broker_cores: int) -> int:
    """Worker processes when the scenario does not say: one per core, less the cores a broker on this machine
    takes (none when it runs elsewhere), at least one.

    Why (bench_storm, 2 cores, Mosquitto on loopback, alternating): a storm is CPU-bound on both sides, and a
    worker beyond the cores the broker leaves free preempts the broker, the thing being measured: 2,000 devices
    came up at 848, 821, 841/s on 1 worker against 799, 783, 777/s on 2, with a lower loop lag (p99 25-34 ms
    against 38-48 ms).
    """
    return max(1, usable - broker_cores)


def usable_cores() -> set[int]:
    return os.sched_getaffinity(0)


def pin(cores: Iterable[int]) -> None:
    """Keep the calling thread (and what it starts from now on) on ``cores``; nothing when empty."""
    cores = set(cores)
    if cores:
        os.sched_setaffinity(0, cores)


@contextlib.contextmanager
def on_cores(cores: Iterable[int]) -> Iterator[None]:
    """Run the block on ``cores``, then give the calling thread back the cores it had."""
    before = os.sched_getaffinity(0)
    pin(cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _cores(cores: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))
