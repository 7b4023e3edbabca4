"""CPU samples taken as a run goes: the broker's and this machine's, at the same times, for the CPU per
handshake and the machine's busy share over the storm."""

from __future__ import annotations

import contextlib

import psutil

from fleetsim.broker.handle import BrokerHandle

SAMPLE_EVERY_S = 1.0
CORES = psutil.cpu_count() or 1  # the machine's, all of them: what its busy CPU seconds are shared by


def broker_sample(broker: BrokerHandle, elapsed: float, samples: list[dict[str, float]]) -> None:
    """The broker's CPU seconds so far, added to ``samples`` (a broker that died mid-run is skipped)."""
    with contextlib.suppress(Exception):  # a broker that died mid-run stops being sampled, nothing more
        cpu = broker.cpu_seconds()
        if cpu is not None:
            samples.append({"t": round(elapsed, 3), "cpu_seconds": cpu})


def machine_sample(elapsed: float) -> dict[str, float]:
    """CPU seconds this machine's cores have run anything (user, system, interrupts; not steal) since boot."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return {"t": round(elapsed, 3), "busy_s": round(busy, 3)}
