"""The open-files limit a run's processes live under: one socket a device, so it bounds the devices a worker
can hold and the connections a broker fleetsim starts can take. Said before the run, never as 10,000 resets
after."""

from __future__ import annotations

import resource

from fleetsim.errors import FleetsimError
from fleetsim.words import count

FDS_PER_WORKER_SPARE = 64


def fd_workers(devices: int) -> int:
    """The fewest workers whose shards each fit under the open-files limit (one socket a device)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 1
    return -(-devices // max(1, hard - FDS_PER_WORKER_SPARE))


def raise_fd_limit(devices: int, workers: int) -> None:
    """Raise the open-files limit as far as allowed; say clearly when the fleet cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    per_worker = -(-devices // workers) + FDS_PER_WORKER_SPARE
    if per_worker > hard:
        need = -(-devices // (hard - FDS_PER_WORKER_SPARE))
        raise FleetsimError(f"{count(devices, 'device')} on {count(workers, 'worker')} need "
                            f"{per_worker:,} open files per worker, the limit is {hard:,}",
                            f"use --workers {need} or more, or raise `ulimit -Hn`")


def check_broker_fds(devices: int, processes: int) -> None:
    """Each broker fleetsim starts gets the same open-files limit as this process (Mosquitto, 2.0, refuses
    connections past it with a reset): say so before the run rather than after 10,000 resets."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    share = -(-devices // processes) + FDS_PER_WORKER_SPARE
    if hard != resource.RLIM_INFINITY and share > hard:
        need = -(-devices // (hard - FDS_PER_WORKER_SPARE))
        raise FleetsimError(f"{count(devices, 'device')} on {count(processes, 'broker process')} need "
                            f"{share:,} open files per broker, the limit is {hard:,}",
                            f"use --brokers {need} or more (or [broker] processes = {need}), or raise `ulimit -Hn`")
