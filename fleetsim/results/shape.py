"""The shape of summary.json: every key it holds, defined here once. Pure: types, and the one reader of a key
that is not a Python name (a phase's "p99.9").

Why here: the summary is computed in one module (:mod:`fleetsim.results.summary`) and read in many (the tables,
the HTML page, ``--fail-on``, ``compare``, the sweep's cells, the Python API). Each of them is typed against these
TypedDicts, so mypy rejects a key spelled differently from the one computed (``phases_ms``, not ``phases``) and a
renamed key fails the lint everywhere it is read, not at a reader's run.

Adding a figure computed from the rows: a field in :class:`Figures` (``NotRequired`` when only some runs have
it), then its line in :func:`fleetsim.results.summary.summarise`; mypy holds the two together. What the
orchestrator brings (a rehearsal's, how the run ended) goes through :func:`fleetsim.results.summary.assemble`.
Older results directories may lack a key added later: readers use ``.get``.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

# Percentiles and their keys: "p99.9" is not a Python name, hence the functional form of Distribution.
Distribution = TypedDict("Distribution", {"n": int, "mean": float | None, "max": float | None, "p50": float | None,
                                          "p90": float | None, "p99": float | None, "p99.9": float | None})
class Lag(TypedDict):
    n: int
    p50: float | None
    p99: float | None
    max: float | None


class States(TypedDict):
    connected: int
    retrying: int
    gave_up: int
    never_tried: int


class Fleet(TypedDict):
    """Devices by state when the run ended, the connected count at its peak and at the end."""

    ever_connected: int
    connected_at_end: int
    peak_connected: int
    peak_at_s: float | None
    states: States
    gave_up_after_attempts: dict[str, int]


class FleetUp(TypedDict):
    """How fast the fleet came up: first attempt to the last device's first CONNACK."""

    devices: int
    first_attempt_s: float | None
    last_first_connect_s: float | None
    span_s: float | None
    rate_per_s: float | None


class ConnectRate(TypedDict):
    mean_per_s: float
    peak_per_s: float
    peak_second: int | None


class Qos0(TypedDict):
    published: int
    sent: int
    unsent: int


class Qos1Plus(TypedDict):
    published: int
    acknowledged: int
    lost: int
    ack_ms: Distribution


class Messages(TypedDict):
    qos0: Qos0
    qos1plus: Qos1Plus
    by_kind: dict[str, int]
    by_qos: dict[str, int]


class WorkerCpu(TypedDict):
    p50: float | None
    max: float | None


class Admission(TypedDict):
    peak_in_flight: list[int]
    cap: list[int | None]
    syn_ceiling: list[int | None]
    peak_waiting: int


class SetUp(TypedDict):
    devices: int
    of: int


class Simulator(TypedDict):
    """The workers' own saturation; ``warning`` when they, not the broker, set the pace."""

    workers: int
    loop_lag_ms: Lag
    busiest_worker_cpu: WorkerCpu
    seconds_at_full_cpu: int
    saturated: bool
    worker_cpu_s: float
    admission: Admission
    set_up_before_t0: SetUp | None
    warning: NotRequired[str]


class Broker(TypedDict, total=False):
    """The broker's counters (whatever its stats report, passed through: ``connections``, ``cpu_seconds``,
    ``members``, ``processes``, ``takeovers``...) and CPU per handshake and per message, or why not available."""

    kind: str
    available: bool
    why: str
    cpu_seconds: float
    accepted: int  # the counters fleetsim.broker.totals adds up over the broker's processes
    authorized: int
    rejected: Any
    rejected_total: int
    dropped_revoked: int
    disconnected: int
    identity_mismatch: int
    reloads: int
    qos0_discarded: int
    slow_consumers_dropped: int
    subscriptions_refused: int
    queued_dropped: int
    handshake_ms: dict[str, Any]
    members: list[dict[str, Any]]
    processes: list[dict[str, Any]]
    takeovers: int
    storm_window_s: list[float]
    cpu_s_in_storm: float
    cpu_ms_per_handshake: float
    handshakes_in_storm: int
    messages_in_storm: int
    cpu_ms_per_message: float
    messages_after_storm: int


class Busy(TypedDict):
    share: float
    from_s: float
    to_s: float
    cores: int


class MachineUse(TypedDict):
    cores: int
    busy_in_storm: Busy | None


class IdentityProblems(TypedDict):
    devices: int
    example: str


class LostWithWorker(TypedDict):
    shards: dict[str, str]  # shard -> why it never reported
    devices: int
    device_ids: list[str]  # the first 1,000


class Verdict(TypedDict):
    """One ``--fail-on`` rule judged: the run's value in the rule's unit; None when the run did not measure it."""

    rule: str
    value: float | None
    unit: str
    breached: bool


class Figures(TypedDict):
    """What :func:`fleetsim.results.summary.summarise` computes from the rows, in this order."""

    devices: int
    duration_s: float
    fleet: Fleet
    fleet_up: FleetUp
    connect_rate: ConnectRate
    attempts: int
    outcomes: dict[str, int]  # "connected" or the failure class -> attempts
    phases_ms: dict[str, Distribution]  # setup, wait, tcp, tls, mqtt, total -> over connected attempts
    messages: Messages
    drops: dict[str, int]  # cause -> connections ended ("stop": by the run's own stop)
    simulator: Simulator
    broker: Broker
    events: list[dict[str, Any]]  # each timed event with what it did to the fleet
    wall_s: float
    machine: NotRequired[MachineUse]
    faults: NotRequired[dict[str, dict[str, int]]]  # fault kind -> how its attempts ended
    identity_problems: NotRequired[IdentityProblems]
    warnings: list[str]


class Summary(Figures):
    """summary.json: the run's name and clock, its figures, then what the orchestrator brings (a rehearsal's
    ``revocation``, how the run ended, lost workers) and the ``--fail-on`` verdicts."""

    scenario: str
    t0: float
    revocation: NotRequired[dict[str, Any]]  # fleetsim.rehearsal.plan.measure
    interrupted: NotRequired[str]
    stopped_early: NotRequired[str]
    shards_missing: NotRequired[list[int]]
    lost_with_worker: NotRequired[LostWithWorker]
    thresholds: NotRequired[list[Verdict]]


def phase_percentile(s: Summary, phase: str, p: str) -> float | None:
    """A phase's percentile in ms (``phase`` "total", ``p`` "p99" or "p99.9"); None when the run has none (nothing
    connected, or a summary written before the phase was measured)."""
    dist = s.get("phases_ms", {}).get(phase)
    value = None if dist is None else dist.get(p)
    return None if value is None else float(value)  # type: ignore[arg-type]
