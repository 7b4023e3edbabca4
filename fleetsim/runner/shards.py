"""Dealing a fleet into shards and merging what the shards bring back. Pure: no processes, no files."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from fleetsim.engine import timeline
from fleetsim.engine.shard import DeviceSpec, ShardResult, ShardSpec
from fleetsim.engine.subscriber import SubscriberSpec
from fleetsim.results.rows import Merged
from fleetsim.runner import provision
from fleetsim.scenario import Scenario, arrival_times


def arrival_offsets(scenario: Scenario) -> list[float]:
    """The whole fleet's first arrivals, drawn once, so the ramp is exact whatever the number of workers."""
    rng = np.random.default_rng([scenario.seed, 0xA771])
    return [float(t) for t in arrival_times(scenario.arrival, scenario.devices, rng)]


def deal(scenario: Scenario, fleet: list[provision.Provisioned], template: ShardSpec, workers: int) -> list[ShardSpec]:
    """Deal devices round-robin, in arrival order, so every worker sees every group, fault and moment, and
    every broker of a pool (``template.targets``) gets its share of each.

    ``template`` carries what all shards share (broker addresses, CA, t0, PKI, password).
    """
    order = np.random.default_rng([scenario.seed, 0x5EED]).permutation(len(fleet))  # groups arrive mixed
    offsets = arrival_offsets(scenario)
    brokers = max(1, len(template.targets))
    specs = [
        DeviceSpec(id=p.device_id, model=p.slot.model, site=p.slot.site, key_type=p.slot.key_type,
                   fault=p.slot.fault, group=p.slot.group, offset=offsets[rank], target=rank % brokers)
        for rank, p in enumerate(fleet[i] for i in order)
    ]
    return [
        dataclasses.replace(template, index=i, devices=tuple(specs[i::workers]))
        for i in range(workers)
        if specs[i::workers]
    ]


def with_subscribers(shards: list[ShardSpec], scenario: Scenario) -> list[ShardSpec]:
    """Deal the scenario's subscriber instances round-robin over the shards (workers, never the orchestrator)."""
    specs = [SubscriberSpec(i, g.topics, g.qos, g.clean_session) for g in scenario.subscribers for i in g.client_ids()]
    return [dataclasses.replace(s, subscribers=tuple(specs[k::len(shards)])) for k, s in enumerate(shards)]


def _concat(parts: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def _add_counters(into: dict[str, Any], part: Mapping[str, Any]) -> None:
    for k, v in part.items():
        if isinstance(v, list):
            into.setdefault(k, []).extend(v)
        elif isinstance(v, dict):
            _add_counters(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v


def merge_results(parts: Mapping[int, ShardResult]) -> Merged:
    """Concatenate rows, add per-second counters (maxima for ``*_max``) and message counters across shards."""
    ordered = [parts[i] for i in sorted(parts)]
    messages: dict[str, Any] = {}
    for part in ordered:
        _add_counters(messages, part.messages)
    return Merged(
        attempts=_concat([p.attempts for p in ordered]),
        sessions=_concat([p.sessions for p in ordered]),
        devices=_concat([p.devices for p in ordered]),
        bins=timeline.merge([p.series for p in ordered]),
        messages=messages,
        loop_lag_ms=[x for p in ordered for x in p.loop.get("lag_ms", [])],
        workers=[{"shard": p.index, **{k: v for k, v in p.loop.items() if k != "lag_ms"}} for p in ordered],
    )


PER_SOURCE_ADDRESS = 25_000  # loopback source ports 32768-60999 give ~28,000 connections per (address, broker)


def with_sources(shards: list[ShardSpec], brokers: int, given: tuple[str, ...], loopback: bool) -> list[ShardSpec]:
    """Give each shard a local address to connect from when one address cannot hold the fleet's connections to
    one broker (or when the user named addresses): the ones given, in turn, else 127.0.0.1, 127.0.0.2, ..."""
    per_broker = sum(len(s.devices) for s in shards) / max(1, brokers)
    if not given and (per_broker <= PER_SOURCE_ADDRESS or not loopback):
        return shards
    pool = list(given) or [f"127.0.0.{i + 1}" for i in range(len(shards))]
    return [dataclasses.replace(s, source_address=pool[i % len(pool)]) for i, s in enumerate(shards)]


LOOPBACK_IN_FLIGHT = 96  # attempts in flight to one broker on this machine, all workers together


def with_in_flight_caps(shards: list[ShardSpec], brokers: int, loopback: bool) -> list[ShardSpec]:
    """Cap each worker's attempts in flight when the brokers run on this machine.

    Why: a broker's kernel drops SYNs once its listen backlog is full (Mosquitto and asyncio servers ask for
    100), and each dropped SYN costs its device a 1 s retransmit, the storm's rate with it (5-15% in
    bench_storm). On loopback a connect takes a few ms without a queue, so 96 in flight already sustain tens of
    thousands a second: more would only queue at the broker. A remote broker has no such cap: the admission
    rule's latency signal governs there.
    """
    if not loopback or not shards:
        return shards
    cap = max(4, LOOPBACK_IN_FLIGHT * max(1, brokers) // len(shards))
    return [dataclasses.replace(s, in_flight_cap=cap) for s in shards]
