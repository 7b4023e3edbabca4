"""Dealing a fleet into shards and merging what the shards bring back. Pure: no processes, no files."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from fleetsim import provision
from fleetsim.engine.shard import DeviceSpec, ShardResult, ShardSpec
from fleetsim.scenario import Scenario, arrival_times


def arrival_offsets(scenario: Scenario) -> list[float]:
    """The whole fleet's first arrivals, drawn once, so the ramp is exact whatever the number of workers."""
    rng = np.random.default_rng([scenario.seed, 0xA771])
    return [float(t) for t in arrival_times(scenario.arrival, scenario.devices, rng)]


def deal(scenario: Scenario, fleet: list[provision.Provisioned], template: ShardSpec, workers: int) -> list[ShardSpec]:
    """Deal devices round-robin, in arrival order, so every worker sees every group, fault and moment.

    ``template`` carries what all shards share (broker address, CA, t0, PKI, password).
    """
    order = np.random.default_rng([scenario.seed, 0x5EED]).permutation(len(fleet))  # groups arrive mixed
    offsets = arrival_offsets(scenario)
    specs = [
        DeviceSpec(id=p.device_id, model=p.slot.model, site=p.slot.site, key_type=p.slot.key_type,
                   fault=p.slot.fault, group=p.slot.group, offset=offsets[rank])
        for rank, p in enumerate(fleet[i] for i in order)
    ]
    return [
        dataclasses.replace(template, index=i, devices=tuple(specs[i::workers]))
        for i in range(workers)
        if specs[i::workers]
    ]


def merge_results(parts: Mapping[int, ShardResult]) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, Any]]:
    """Concatenate attempts, add up per-second series and message counters across shards."""
    attempts: dict[str, list[Any]] = {}
    per_second: dict[int, dict[str, float]] = {}
    messages: dict[str, Any] = {"published": 0, "acknowledged": 0, "lost": 0, "ack_ms": [], "by_kind": {}}
    for part in parts.values():
        for k, v in part.attempts.items():
            attempts.setdefault(k, []).extend(v)
        cols = part.series
        for i, second in enumerate(cols.get("second", [])):
            row = per_second.setdefault(int(second), {})
            for k, v in cols.items():
                if k != "second":
                    row[k] = row.get(k, 0) + v[i]
        for k, v in part.messages.items():
            if isinstance(v, list):
                messages.setdefault(k, []).extend(v)
            elif isinstance(v, dict):
                inner = messages.setdefault(k, {})
                for kk, vv in v.items():
                    inner[kk] = inner.get(kk, 0) + vv
            else:
                messages[k] = messages.get(k, 0) + v
    seconds = sorted(per_second)
    keys = sorted({k for row in per_second.values() for k in row})
    series: dict[str, list[Any]] = {"second": seconds}
    series.update({k: [per_second[s].get(k, 0) for s in seconds] for k in keys})
    return attempts, series, messages


