"""The maths a run takes from its scenario: when devices first arrive, how long they back off, which identities
are faulty. Pure: numpy in, numbers out; the engine and the provisioning share it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fleetsim.scenario.parts import FAULTS, Arrival, Reconnect
from fleetsim.scenario.schema import Scenario


def arrival_times(arrival: Arrival, n: int, rng: np.random.Generator) -> np.ndarray:
    """Offsets (s, non-decreasing, first at 0) at which n devices first connect."""
    if n <= 0:
        return np.zeros(0)
    if arrival.pattern == "burst":
        return np.zeros(n)
    if arrival.pattern == "linear":
        return np.arange(n, dtype=float) / arrival.rate
    gaps = rng.exponential(1.0 / arrival.rate, size=n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


def backoff(attempt: int, reconnect: Reconnect, rng: np.random.Generator) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): full jitter, uniform(0, min(cap, initial*2**attempt))."""
    ceiling = min(reconnect.cap, reconnect.initial * 2.0 ** min(max(attempt, 0), 60))
    return float(rng.uniform(0.0, ceiling))


def assign_faults(scenario: Scenario, device_ids_by_group: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """Which devices get which faulty identity: disjoint sets, same seed same choice.

    ``device_ids_by_group`` lists the ids of each ``scenario.fleet`` group in order. Each fault takes
    round(fraction * fleet size) devices drawn from the whole fleet; keys are the scenario's fault names
    (see ``FAULTS`` for the PKI's names). Every fault of the scenario is a key, possibly with no devices.
    """
    ids = [d for group in device_ids_by_group for d in group]
    rng = np.random.default_rng([scenario.seed, 0xFA017])
    order = rng.permutation(len(ids))
    out: dict[str, list[str]] = {}
    start = 0
    for name in FAULTS:
        fraction = scenario.faults.get(name, 0.0)
        if fraction <= 0:
            continue
        take = min(round(fraction * len(ids)), len(ids) - start)
        out[name] = [ids[i] for i in np.sort(order[start : start + take])]
        start += take
    return out
