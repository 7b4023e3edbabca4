"""One worker's shard of devices on one asyncio loop: arrivals, connection attempts, telemetry, churn, reconnects.

``run_shard`` is a plain function taking and returning picklable values, so an orchestrator can run shards in
processes here or elsewhere. No thread per device: every device is a coroutine, every connection a plain
non-blocking ``ssl.SSLSocket`` (~32 KB) driven by the loop, handed to paho for MQTT.

What it records is raw and timed at the source, so every figure built on it can be checked against it: one row
per connection attempt (phases contiguous: setup + wait + tcp + tls + mqtt = total), one row per connection that
CONNACK accepted (when it started, when and why it ended), per-second counters of what is not a row (publishes,
acknowledgements) binned by when each happened, and the worker's own loop lag and CPU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import heapq
import math
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fleetsim import scenario as sc
from fleetsim.engine.admission import Admission, Rule
from fleetsim.engine.client import MqttConnection
from fleetsim.engine.connect import tcp_connect, tls_handshake, wire_bytes
from fleetsim.engine.identity import (
    PER_DEVICE_CONTEXTS_UP_TO,
    ContextFactory,
    Identity,
    IdentitySource,
    as_source,
    check,
)
from fleetsim.engine.monitor import CPU_COLUMN, CPU_MAX_COLUMN, LAG_COLUMN, LoopMonitor
from fleetsim.engine.outcome import Drop, Failure, Phase, classify, classify_connack, describe, drop_cause
from fleetsim.engine.phase_histogram import PhaseHistogram
from fleetsim.engine.rowlog import ACKED, PUBLISHED, RECEIVED, SUBSCRIBED, RowLog
from fleetsim.engine.subscriber import Subscriber, SubscriberSpec, Where, start_all
from fleetsim.engine.timeline import Bins
from fleetsim.telemetry import TelemetryStream, topic

DRAIN_S = 2.0  # after the stop, how long connected devices wait for outstanding acknowledgements
DELIVERY_GRACE_S = 0.5  # then how long subscribers go on listening for the last copies on their way
PROGRESS_EVERY_S = 0.5
ADJUST_EVERY_S = 0.1  # admission limit follows the loop lag at this period
SETUP_SAMPLE = 16  # devices timed to size the lead before t0
ACK_SAMPLES_MAX = 100_000  # reservoir: enough for percentiles, bounded memory
ATTEMPT_COLUMNS = ("device_id", "attempt", "start", "setup_ms", "wait_ms", "tcp_ms", "tls_ms", "mqtt_ms",
                   "total_ms", "outcome", "failure", "detail", "tls_version", "cipher", "resumed", "tls_cpu_ms",
                   "tls_tx_bytes", "tls_rx_bytes", "serial", "key_type", "fault", "group", "shard")
SESSION_COLUMNS = ("device_id", "attempt", "start", "end", "cause")  # start: CONNACK; end: wall clock
DEVICE_COLUMNS = ("device_id", "attempts", "state", "lost")  # state: connected, gave_up, retrying, never_tried;
# lost: its QoS 1/2 messages not acknowledged when the run ended
BIN_COLUMNS = ("published", "acked", "sent_qos0", LAG_COLUMN, CPU_COLUMN, CPU_MAX_COLUMN)


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True, slots=True)  # one per device for the whole run: no instance dict
class DeviceSpec:
    id: str
    model: str
    site: str = "site-1"
    key_type: str = "ecdsa-p256"
    fault: str | None = None
    group: int = 0
    offset: float | None = None  # first arrival, s after t0; None: this shard draws it from scenario.arrival
    target: int = 0  # which of the shard's brokers (ShardSpec.targets) it connects to


@dataclass(frozen=True)
class ShardSpec:
    index: int
    devices: tuple[DeviceSpec, ...]
    host: str
    port: int
    server_hostname: str = "localhost"  # the name the broker's certificate must carry; "": the host dialled
    ca_pem: bytes = b""
    t0: float = 0.0  # wall clock (time.time()) of the run's start, shared by all shards
    pki_dir: Path | None = None  # where a local worker reads identities each attempt (runner/executors.py)
    password: str | None = None  # auth = "password": every device's password (user name = device id)
    source_address: str | None = None  # optional local address (other 127.x.y.z give more source ports)
    targets: tuple[tuple[str, int], ...] = ()  # a pool of brokers: device d connects to targets[d.target]
    in_flight_cap: int | None = None  # at most this many attempts at once (brokers on this machine)
    subscribers: tuple[SubscriberSpec, ...] = ()  # monitors this worker runs beside its devices
    rows_dir: Path | None = None  # traced runs: where each message published, acknowledged, received is logged


@dataclass
class ShardResult:
    index: int
    attempts: dict[str, list[Any]]  # ATTEMPT_COLUMNS, one row per connection attempt
    sessions: dict[str, list[Any]]  # SESSION_COLUMNS, one row per connection CONNACK accepted
    devices: dict[str, list[Any]]  # DEVICE_COLUMNS, each device's state when the run ended
    series: dict[str, list[Any]]  # BIN_COLUMNS per second since t0, by event time
    messages: dict[str, Any]
    loop: dict[str, Any] = field(default_factory=dict)  # lag samples (ms), CPU and wall seconds, admission
    meta: dict[str, Any] = field(default_factory=dict)


class _Device:
    __slots__ = ("attempts", "conn", "fails", "gave_up", "identity", "pub_due", "serial", "session", "spec",
                 "stream", "wake")

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.attempts = 0
        self.fails = 0  # consecutive failed attempts
        self.gave_up = False  # stopped trying after reconnect.max_attempts failures in a row
        self.conn: MqttConnection | None = None
        self.identity: int | None = None  # hash of the identity version last checked (and last used for TLS)
        self.serial: str | None = None  # serial (hex) of the certificate that version presents
        self.stream: TelemetryStream | None = None
        self.pub_due: float | None = None  # loop time of its next publish (the object queued in _Publishes)
        self.wake: asyncio.Future[str] | None = None
        self.session: tuple[int, float] | None = None  # (attempt, CONNACK wall time) of the live connection


def _connect_ms(row: dict[str, Any]) -> float | None:
    """The attempt's time at the network and the broker (the loop's queue left out), once it got that far."""
    if "tcp_ms" not in row:
        return None
    return row["tcp_ms"] + row.get("tls_ms", 0.0) + row.get("mqtt_ms", 0.0)


class _PhaseClock:
    """Splits one attempt's wall time into contiguous phases written into its row (ms).

    Time a ready socket spent waiting for the loop to run this device again (``waited``) is booked as
    ``wait_ms``, not as the phase it fell in: with it out, tcp/tls/mqtt are the network's, the broker's and the
    device's own work, and ``wait_ms`` is the simulator's queue (admission + late wake-ups).
    """

    __slots__ = ("last", "phase", "queued", "row", "start")

    def __init__(self, row: dict[str, Any], late: float = 0.0) -> None:
        self.row = row
        self.phase = Phase.IDENTITY
        self.start = self.last = time.perf_counter() - late
        self.queued = 0.0
        row["wait_ms"] = 0.0

    def waited(self, seconds: float) -> None:
        self.queued += seconds

    def spent(self, cpu_seconds: float) -> None:
        self.row["tls_cpu_ms"] = self.row.get("tls_cpu_ms", 0.0) + cpu_seconds * 1000.0

    def lap(self, column: str, at: float | None = None) -> None:
        now = time.perf_counter() if at is None else at
        queued = min(self.queued, max(0.0, now - self.last))
        self.row[column] = self.row.get(column, 0.0) + (now - self.last - queued) * 1000.0
        self.row["wait_ms"] += queued * 1000.0
        self.row["total_ms"] = (now - self.start) * 1000.0
        self.last, self.queued = now, 0.0

    def fail(self) -> None:
        column = {Phase.TCP: "tcp_ms", Phase.TLS: "tls_ms", Phase.MQTT: "mqtt_ms"}.get(self.phase, "setup_ms")
        self.lap(column)


class _Publishes:
    """Every device's next publish on one heap behind one loop timer: a TimerHandle per device costs ~0.5 KB.

    An entry runs only while its device's ``pub_due`` is still the very float it was queued with, so setting
    ``pub_due`` to None (or queuing a newer one) cancels it.
    """

    __slots__ = ("fire", "handle", "handle_at", "heap", "loop", "n", "running")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[_Device], None]) -> None:
        self.loop, self.fire = loop, fire
        self.heap: list[tuple[float, int, _Device]] = []
        self.handle: asyncio.Handle | None = None  # uvloop's call_at gives a plain Handle for a past time
        self.handle_at = 0.0
        self.n = 0  # tie-breaker: devices never compare
        self.running = False

    def at(self, when: float, dev: _Device) -> None:
        dev.pub_due = when
        heapq.heappush(self.heap, (when, self.n, dev))
        self.n += 1
        if not self.running:
            self._arm()

    def _arm(self) -> None:
        """The loop timer at the earliest entry."""
        if not self.heap or (self.handle is not None and self.handle_at <= self.heap[0][0]):
            return
        if self.handle is not None:
            self.handle.cancel()
        self.handle_at = self.heap[0][0]
        self.handle = self.loop.call_at(self.handle_at, self._run)

    def _run(self) -> None:
        self.handle, self.running = None, True
        due = self.loop.time() + 0.001  # the loop's timers may wake a hair early
        heap = self.heap
        try:
            while heap and heap[0][0] <= due:
                when, _, dev = heapq.heappop(heap)
                if dev.pub_due is when:
                    dev.pub_due = None
                    self.fire(dev)
        finally:  # one device's error must not stop everyone's publishing
            self.running = False
            self._arm()


class _Wakeups:
    """Every device's next wake-up (its arrival, the end of its backoff) on one heap behind one loop timer, woken
    at most PER_ITERATION a loop iteration.

    Why: a burst is thousands of devices due at the same instant; woken together they made one loop iteration
    last a fifth of a second, and every device's timing carried it. Devices woken a few iterations late keep
    the time they were due as their attempt's start, so the lateness is booked as their wait, not hidden.
    """

    PER_ITERATION = 64

    __slots__ = ("handle", "heap", "loop", "n", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, asyncio.Future[bool]]] = []
        self.handle: asyncio.Handle | None = None
        self.scheduled = math.inf  # loop time the timer is set for
        self.n = 0

    def at(self, when: float) -> asyncio.Future[bool]:
        """A future that becomes True at ``when`` (loop time), or False if the shard stops first."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        heapq.heappush(self.heap, (when, self.n, fut))
        self.n += 1
        if when < self.scheduled:
            self._arm(when)
        return fut

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.scheduled = when
        self.handle = self.loop.call_at(when, self._run)

    def _run(self) -> None:
        self.handle, self.scheduled = None, math.inf
        due, woken = self.loop.time() + 0.001, 0
        while self.heap and self.heap[0][0] <= due and woken < self.PER_ITERATION:
            _, _, fut = heapq.heappop(self.heap)
            if not fut.done():
                fut.set_result(True)
                woken += 1
        if self.heap:  # the next due; one already due (the rest of a burst) fires on the next iteration
            self._arm(self.heap[0][0])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        for _, _, fut in self.heap:
            if not fut.done():
                fut.set_result(False)
        self.heap.clear()


def _timeout_named(exc: Exception, timeout: float) -> Exception:
    if isinstance(exc, TimeoutError) and not str(exc):
        return TimeoutError(f"no answer within {timeout:g} s")
    return exc


class _Shard:
    """State of one running shard; everything below runs on its loop's thread."""

    def __init__(self, scenario: sc.Scenario, shard: ShardSpec, source: IdentitySource,
                 progress: Callable[[dict[str, Any]], None] | None, stop: StopFlag | None) -> None:
        self.sc, self.spec, self.ids = scenario, shard, source
        self.progress, self.stop_flag = progress, stop
        self.rng = np.random.default_rng([scenario.seed, 0x5A4D, shard.index])
        self.pyrng = random.Random(scenario.seed * 7919 + shard.index)
        self.auth = scenario.broker.auth
        self.ctxs = ContextFactory(shard.ca_pem, scenario.broker.tls_version,
                                   shared=len(shard.devices) > PER_DEVICE_CONTEXTS_UP_TO)
        self.devices = [_Device(d) for d in shard.devices]
        self.cols: dict[str, list[Any]] = {c: [] for c in ATTEMPT_COLUMNS}
        self.sessions: dict[str, list[Any]] = {c: [] for c in SESSION_COLUMNS}
        self.bins = Bins(*BIN_COLUMNS)
        cap = shard.in_flight_cap or Rule.high
        self.admission = Admission(Rule(initial=min(Rule.initial, cap), high=cap))
        self.failures: Counter[str] = Counter()
        self.healthy: Counter[str] = Counter()  # attempts and connects of devices without a fault, for the runner
        self.healthy_failures: Counter[str] = Counter()
        self.msg: Counter[str] = Counter()
        self.ack_ms: list[float] = []
        self.acks_seen = 0
        self.connect_ms: list[float] = []
        self.phases = PhaseHistogram()  # connected attempts' phase times, bucketed for live metrics
        self.connected = 0
        self.stopping = False
        self.stopped_at: float | None = None  # wall clock of the stop: connections still up end then
        self.up_at_end: set[str] = set()
        self.stop_fut: asyncio.Future[None] | None = None
        self.prepared = 0  # devices set up before t0
        self.logs = _logs(shard.rows_dir, shard.index) if shard.rows_dir is not None else None
        self.subscribers: list[Subscriber] = []

    # -- timing --------------------------------------------------------------------------------------------
    def _setup_clock(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_t0 = self.loop.time() + (self.spec.t0 - time.time())
        self.end_at = self.loop_t0 + self.sc.duration
        self.stop_fut = self.loop.create_future()
        self.publishes = _Publishes(self.loop, self._publish)
        self.wakeups = _Wakeups(self.loop)
        self.monitor = LoopMonitor(self.loop, self.bins, self.run_time)

    def run_time(self) -> float:
        return self.loop.time() - self.loop_t0

    def _offsets(self) -> list[float]:
        n = len(self.devices)
        total = max(self.sc.devices, n)
        arrival = self.sc.arrival
        if arrival.pattern != "burst":  # this shard carries n of the fleet's devices: its share of the rate
            arrival = sc.Arrival(arrival.pattern, arrival.rate * n / total)
        drawn = sc.arrival_times(arrival, n, self.rng)
        return [d.spec.offset if d.spec.offset is not None else float(drawn[i]) for i, d in enumerate(self.devices)]

    async def _until(self, when: float) -> bool:
        """Wait until loop time ``when``; False when the shard stopped first."""
        if self.stopping:
            return False
        return await self.wakeups.at(when) and not self.stopping

    async def device_life(self, dev: _Device, offset: float) -> None:
        due = self.loop_t0 + offset
        if not await self._until(due):
            return
        rc = self.sc.reconnect
        while not self.stopping:
            ok = await self.attempt(dev, due)
            if self.stopping and not ok:
                return
            if ok:
                dev.fails = 0
                why = await self.connected_phase(dev)
                if why == "stop":
                    return
                delay = self.pyrng.uniform(*self.sc.churn.downtime) if why == "churn" \
                    else sc.backoff(0, rc, self.rng)
            else:
                dev.fails += 1
                if rc.max_attempts and dev.fails >= rc.max_attempts:
                    dev.gave_up = True
                    return
                delay = sc.backoff(dev.fails - 1, rc, self.rng)
            due = self.loop.time() + delay
            if not await self._until(due):
                return

    def _identity(self, dev: _Device) -> Identity | None:
        """The device's identity as it is now, checked once per version; built into its own context when the
        shard keeps one per device. Raises DeviceError (its class and the file named) before any network I/O."""
        if self.auth != "mtls":
            return None
        ident = self.ids.get(dev.spec.id)
        version = hash(ident.version)  # a small int kept per device, not the version's tuple
        if dev.identity != version:
            dev.serial = check(ident)
            if dev.conn is not None:  # a TLS session cannot cross identities
                dev.conn.last_session = None
            dev.identity = version
        if not self.ctxs.shared:
            self.ctxs.context(dev.spec.id, ident)
        return ident

    def _wrap(self, dev: _Device, ident: Identity | None, sock: Any, host: str) -> Any:
        """The TCP socket wrapped for TLS as this device (or as it is, without TLS); no handshake yet."""
        if self.auth == "none":
            return sock
        name = self.spec.server_hostname or host
        try:
            if ident is None:  # server-only TLS: one context for all, no client certificate
                return self.ctxs.anonymous().wrap_socket(sock, do_handshake_on_connect=False,
                                                         server_hostname=name)
            conn = dev.conn
            session = conn.last_session if conn is not None and self.sc.broker.session_resumption else None
            return self.ctxs.wrap(dev.spec.id, ident, sock, name, session)
        except BaseException:
            sock.close()
            raise

    def _connection(self, dev: _Device) -> MqttConnection:
        if dev.conn is None:
            m = self.sc.mqtt
            user = dev.spec.id if self.auth == "password" else None
            dev.conn = MqttConnection(dev.spec.id, host=self.spec.host, port=self.spec.port, version=m.version,
                                      keepalive=m.keepalive, clean_session=m.clean_session, on_ack=self.on_ack,
                                      username=user, password=self.spec.password if user else None,
                                      resume=self.sc.broker.session_resumption,
                                      on_seq_ack=self.logs["acked"].append if self.logs is not None else None)
        return dev.conn

    async def attempt(self, dev: _Device, due: float | None = None) -> bool:
        """One connection attempt, recorded whatever happens; True when CONNACK accepted it.

        Phases are contiguous, so setup + wait + tcp + tls + mqtt is the total: wait is the simulator's queue
        (admission, late wake-ups), setup the device's own preparation (its MQTT client, its TLS identity), tcp
        ends when the connect completes, tls when the handshake does, mqtt at CONNACK. An attempt still waiting
        for admission when the run stops never happened: no row. ``due`` (loop time) is when the device meant to
        start: a start the simulator was late for keeps that time, the lateness booked as its wait.
        """
        late = max(0.0, self.loop.time() - due) if due is not None else 0.0
        row: dict[str, Any] = {"start": time.time() - late, "key_type": dev.spec.key_type}
        clock = _PhaseClock(row, late)
        if not await self.admission.admit():
            return False
        dev.attempts += 1
        try:
            clock.lap("wait_ms")
            conn = self._connection(dev)
            ident = self._identity(dev)
            row["serial"] = dev.serial if ident is not None else None
            clock.lap("setup_ms")
            async with asyncio.timeout(self.sc.connect_timeout):
                clock.phase = Phase.TCP
                host, port = self.spec.targets[dev.spec.target] if self.spec.targets else (self.spec.host,
                                                                                          self.spec.port)
                sock, _ = await tcp_connect(host, port, source=self.spec.source_address, sink=clock)
                clock.lap("tcp_ms")
                clock.phase = Phase.IDENTITY
                link = self._wrap(dev, ident, sock, host)
                clock.lap("setup_ms")
                clock.phase = Phase.TLS
                if link is not sock:
                    await tls_handshake(link, sink=clock)
                    clock.lap("tls_ms")
                    self.ctxs.handshaken(link)
                    row.update(tls_version=_intern(link.version()), cipher=_intern((link.cipher() or ("",))[0]),
                               resumed=link.session_reused)
                    if (wire := wire_bytes(link)) is not None:
                        row["tls_tx_bytes"], row["tls_rx_bytes"] = wire
                    clock.lap("setup_ms")  # the simulator's bookkeeping, not the broker's time
                clock.phase = Phase.MQTT
                code, _ = await conn.connect(link, timeout=self.sc.connect_timeout)
            clock.lap("mqtt_ms", at=conn.connack_at)  # not the later wake-up of this task
        except Exception as exc:  # asyncio.timeout turns its cancellation into TimeoutError
            clock.fail()
            exc = _timeout_named(exc, self.sc.connect_timeout)
            self._record(dev, row, classify(exc, clock.phase), describe(exc))
            return False
        finally:
            self.admission.release(_connect_ms(row), row.get("tcp_ms"))
        failure = classify_connack(code)
        if failure is not None:
            self._record(dev, row, failure, f"CONNACK refused, code {code}")
            return False
        self._record(dev, row, None, "")
        self.connect_ms.append(row["total_ms"])
        self.phases.observe(row)
        dev.session = (dev.attempts, row["start"] + row["total_ms"] / 1000.0)
        return True

    def _record(self, dev: _Device, row: dict[str, Any], failure: Failure | None, detail: str) -> None:
        row.update(device_id=dev.spec.id, attempt=dev.attempts, outcome="failed" if failure else "connected",
                   failure=failure.value if failure else None, detail=detail, fault=dev.spec.fault,
                   group=dev.spec.group, shard=self.spec.index)
        for c in ATTEMPT_COLUMNS:
            self.cols[c].append(row.get(c))
        if dev.spec.fault is None:
            self.healthy["attempts"] += 1
            if failure:
                self.healthy_failures[failure.value] += 1
            else:
                self.healthy["connects"] += 1
        if failure:
            self.failures[failure.value] += 1

    def _end_session(self, dev: _Device, cause: Drop, at: float | None = None) -> None:
        if dev.session is None:
            return
        attempt, started = dev.session
        dev.session = None
        if cause is Drop.STOP:
            self.up_at_end.add(dev.spec.id)
        for column, value in zip(SESSION_COLUMNS, (dev.spec.id, attempt, started, at or time.time(), cause.value),
                                 strict=True):
            self.sessions[column].append(value)

    # -- connected --------------------------------------------------------------------------------------------
    async def connected_phase(self, dev: _Device) -> str:
        """Publish until the connection is lost, the device churns, or the shard stops; say which."""
        conn = dev.conn
        assert conn is not None and conn.lost is not None
        if self.stopping:  # connected as the run stopped: request_stop() could not wake this one
            self._end_session(dev, Drop.STOP, self.stopped_at)
            await conn.disconnect(timeout=1.0)
            return "stop"
        stream = self._stream(dev)
        wake: asyncio.Future[str] = self.loop.create_future()
        dev.wake = wake
        conn.lost.add_done_callback(functools.partial(_settle_lost, wake))  # lighter than a closure
        churn = None
        if self.sc.churn.rate > 0:
            churn = self.loop.call_later(self.pyrng.expovariate(self.sc.churn.rate), _settle, wake, "churn")
        self.publishes.at(self.loop.time() + stream.phase, dev)
        self.connected += 1
        try:
            why = await wake
        finally:
            self.connected -= 1
            dev.wake = None
            if churn is not None:
                churn.cancel()
            dev.pub_due = None
        if why == "lost":
            self._end_session(dev, drop_cause(conn.lost.result() if conn.lost.done() else None))
        elif why == "churn":
            self._end_session(dev, Drop.CHURN)
            conn.abort()
        else:
            self._end_session(dev, Drop.STOP, self.stopped_at)
            await self._drain(conn)
            await conn.disconnect(timeout=1.0)
        return why

    async def _drain(self, conn: MqttConnection) -> None:
        deadline = self.loop.time() + DRAIN_S
        while conn.connected and conn.unacked() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)

    def _publish(self, dev: _Device) -> None:
        conn, stream = dev.conn, dev.stream
        if self.stopping or conn is None or stream is None or not conn.connected:
            return
        t = self.run_time()
        ts_ns = time.time_ns()  # the wall clock every process here shares: see telemetry.trace()
        msg = stream.next_message(t, ts_ns)
        qos = self.sc.mqtt.qos_alarm if msg.kind == "alarm" else self.sc.mqtt.qos_telemetry
        name = topic(dev.spec.site, dev.spec.model, dev.spec.id, msg.kind)  # built per message: ~0.3 KB less a device
        if conn.publish(name, msg.payload, qos, msg.seq):
            if self.logs is not None:
                self.logs["published"].append(dev.spec.id, msg.seq, msg.kind, qos, name, ts_ns)
            self.msg[f"published_qos{qos}"] += 1
            self.msg[f"published_{msg.kind}"] += 1
            self.bins.add("published", t)
        self.publishes.at(self.loop.time() + stream.interval, dev)

    def on_ack(self, qos: int, ms: float) -> None:
        t = self.run_time()
        if qos == 0:  # paho says a QoS 0 message is "published" once it is written to the socket
            self.msg["sent_qos0"] += 1
            self.bins.add("sent_qos0", t)
            return
        self.msg[f"acked_qos{qos}"] += 1
        self.bins.add("acked", t)
        self.acks_seen += 1
        if len(self.ack_ms) < ACK_SAMPLES_MAX:
            self.ack_ms.append(ms)
        else:
            j = self.pyrng.randrange(self.acks_seen)
            if j < ACK_SAMPLES_MAX:
                self.ack_ms[j] = ms

    # -- the shard as a whole -----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stopped_at = time.time()
        if self.stop_fut is not None and not self.stop_fut.done():
            self.stop_fut.set_result(None)
        self.admission.close()
        self.wakeups.close()
        self.monitor.stop()  # the stop's own work (thousands of disconnects) is not the run's saturation
        for dev in self.devices:
            if dev.wake is not None and not dev.wake.done():
                dev.wake.set_result("stop")

    async def run(self) -> None:
        self._setup_clock()
        self._prepare()
        self.monitor.start()
        listening = await self._start_subscribers()
        tasks = [asyncio.create_task(self.device_life(d, off)) for d, off in zip(self.devices, self._offsets(),
                                                                                  strict=True)]
        ticker = asyncio.create_task(self._ticker())
        try:
            assert self.stop_fut is not None
            await asyncio.wait([self.stop_fut], timeout=max(0.0, self.end_at - self.loop.time()))
        finally:
            self.request_stop()
            _, pending = await asyncio.wait(tasks, timeout=DRAIN_S + 1.5) if tasks else (set(), set())
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            for dev in self.devices:
                self._end_session(dev, Drop.STOP, self.stopped_at)  # a device cancelled mid-drain
                if dev.conn is not None:
                    dev.conn.abort()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.monitor.stop()
            await self._stop_subscribers(listening)

    async def _start_subscribers(self) -> list[asyncio.Task[None]]:
        """The shard's subscribers started, and waited for until each has subscribed or t0 comes: the devices'
        arrival starts at t0, and what is published before a subscription holds is not owed to it."""
        if not self.spec.subscribers:
            return []
        assert self.logs is not None, "subscribers need a rows_dir for what they receive"
        logs, spec = self.logs, self.spec
        where = Where(spec.host, spec.port, spec.server_hostname, spec.source_address)
        ctxs = ContextFactory(spec.ca_pem, self.sc.broker.tls_version)
        self.subscribers, tasks = start_all(spec.subscribers, lambda s: Subscriber(
            s, self.sc, where, ctxs, self.ids, logs["received"], logs["subscribed"],
            np.random.default_rng([self.sc.seed, 0x5B5, spec.index])))
        ready = [asyncio.ensure_future(s.subscribed.wait()) for s in self.subscribers]
        await asyncio.wait(ready, timeout=max(0.0, self.loop_t0 - self.loop.time()))
        for fut in ready:
            fut.cancel()
        return tasks

    async def _stop_subscribers(self, tasks: list[asyncio.Task[None]]) -> None:
        """After the devices' drain, a moment for the last copies on their way, then every subscriber stopped and
        every log closed."""
        if tasks:
            await asyncio.sleep(DELIVERY_GRACE_S)
            for s in self.subscribers:
                s.stop()
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for t in pending:
                t.cancel()
        if self.logs is not None:
            for log in self.logs.values():
                log.close()

    def prepares(self) -> bool:
        return sets_up_ahead(self.sc, len(self.devices))

    def _prepare(self) -> None:
        """Before t0, while waiting anyway, set each device up as a real one is before it dials: its identity
        parsed and checked, its TLS context built, its MQTT client and telemetry made. In a burst these would
        otherwise run serially on the loop ahead of the first handshakes (~1.9 ms per device, most of it
        OpenSSL's PEM key decoder), and the storm would measure the simulator. Bounded by the time to t0 (the
        runner's stated lead); whatever is left is done at the device's first attempt, and counted."""
        if not self.prepares():
            return
        budget = self.loop_t0 - self.loop.time() - 0.05
        t = time.perf_counter()
        for dev in self.devices:
            if time.perf_counter() - t > budget:
                break
            self.set_up(dev)
            self.prepared += 1

    def set_up(self, dev: _Device) -> None:
        with contextlib.suppress(Exception):  # a bad identity fails again, recorded, at its attempt
            self._identity(dev)
        self._connection(dev)
        self._stream(dev)

    def _stream(self, dev: _Device) -> TelemetryStream:
        if dev.stream is None:
            dev.stream = TelemetryStream(dev.spec.model, dev.spec.id, self.sc.seed, self.sc.mqtt.payload_bytes)
        return dev.stream

    async def _ticker(self) -> None:
        """Admission, the stop flag and progress every ADJUST_EVERY_S; each device's keepalive once a second, a
        slice of the fleet at a time: 10,000 devices in one go held the loop for ~17 ms (bench_scale on 1 worker,
        loop lag p99 17 ms)."""
        last_progress = 0.0
        ticks = keepalive_slices(len(self.devices), ADJUST_EVERY_S)
        while True:
            await asyncio.sleep(ADJUST_EVERY_S)
            now = self.loop.time()
            self.admission.adjust(self.monitor.take_window())
            if self.stop_flag is not None and self.stop_flag.is_set():
                self.request_stop()
            for dev in self.devices[next(ticks)]:
                if dev.conn is not None:
                    dev.conn.tick()
            if self.progress is not None and now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                self.progress(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        ms = np.asarray(self.connect_ms[-20_000:]) if self.connect_ms else None
        lags = self.monitor.lag_ms[-40:]  # the last two seconds
        return {
            "shard": self.spec.index, "devices": len(self.devices), "connected": self.connected,
            "attempts": len(self.cols["device_id"]), "connects": len(self.connect_ms),
            "failures": dict(self.failures), "healthy_failures": dict(self.healthy_failures),
            "healthy_attempts": self.healthy["attempts"], "healthy_connects": self.healthy["connects"],
            "published": sum(v for k, v in self.msg.items() if k.startswith("published_qos")),
            "p50_ms": float(np.percentile(ms, 50)) if ms is not None else None,
            "p99_ms": float(np.percentile(ms, 99)) if ms is not None else None,
            "lag_max_ms": max(lags) if lags else 0.0, "waiting": self.admission.waiting,
            "t": self.run_time(), "stopping": self.stopping,
            "messages": dict(self.msg),  # published_qosN, published_<kind>, sent_qos0, acked_qosN
            **self.phases.snapshot(),  # phase_buckets, phase_sum_s: cumulative, summed across workers
        }

    def result(self) -> ShardResult:
        m = self.msg
        qos0 = m["published_qos0"]
        published = sum(v for k, v in m.items() if k.startswith("published_qos") and k != "published_qos0")
        acked = sum(v for k, v in m.items() if k.startswith("acked_qos"))
        messages: dict[str, Any] = {
            "qos0_published": qos0, "qos0_sent": m["sent_qos0"],
            "published": published, "acknowledged": acked, "lost": max(0, published - acked),
            "unacked_at_end": sum(d.conn.unacked() for d in self.devices if d.conn is not None),
            "by_kind": {k.removeprefix("published_"): v for k, v in m.items()
                        if k.startswith("published_") and not k.startswith("published_qos")},
            "by_qos": {k.removeprefix("published_qos"): v for k, v in m.items() if k.startswith("published_qos")},
            "ack_ms": list(self.ack_ms),
        }
        devices: dict[str, list[Any]] = {c: [] for c in DEVICE_COLUMNS}
        for dev in self.devices:
            devices["device_id"].append(dev.spec.id)
            devices["attempts"].append(dev.attempts)
            devices["state"].append(_final_state(dev, dev.spec.id in self.up_at_end))
            devices["lost"].append(dev.conn.unacked() if dev.conn is not None else 0)
        loop = {"lag_ms": self.monitor.lag_ms.tolist(), **self.monitor.totals(), "stopped_at": self.stopped_at,
                "admission_limit": self.admission.limit, "admission_peak_waiting": self.admission.peak_waiting,
                "admission_peak_in_flight": self.admission.peak_in_flight, "admission_cap": self.spec.in_flight_cap,
                "admission_ceiling": self.admission.ceiling,
                "prepared": self.prepared, "to_prepare": len(self.devices) if self.prepares() else 0}
        meta: dict[str, Any] = {"devices": len(self.devices), "failures": dict(self.failures)}
        if self.subscribers:
            meta["subscribers"] = {s.spec.id: dict(s.counts) for s in self.subscribers}
        return ShardResult(self.spec.index, self.cols, self.sessions, devices, self.bins.columns(), messages,
                           loop, meta)


def _logs(rows_dir: Path, index: int) -> dict[str, RowLog]:
    """A traced shard's logs: every message its devices published and had acknowledged, every copy its
    subscribers received, and the spans their subscriptions held; one file each per shard."""
    return {name: RowLog(rows_dir / f"{name}-{index}.parquet", schema) for name, schema in
            (("published", PUBLISHED), ("acked", ACKED), ("received", RECEIVED), ("subscribed", SUBSCRIBED))}


def keepalive_slices(devices: int, every_s: float) -> Iterator[slice]:
    """Slices of a fleet of ``devices``, one for each ``every_s`` period, covering the whole fleet once a second."""
    periods = max(1, round(1.0 / every_s))
    size = -(-devices // periods)
    while True:
        for i in range(periods):
            yield slice(i * size, (i + 1) * size)


def _final_state(dev: _Device, up_at_end: bool) -> str:
    if up_at_end:
        return "connected"
    if dev.attempts == 0:
        return "never_tried"
    return "gave_up" if dev.gave_up else "retrying"


def _intern(text: str | None) -> str | None:
    """One shared copy of a string repeated in every attempt row (TLS version, cipher): ~120 B less a row."""
    return None if text is None else sys.intern(text)


def _settle_lost(fut: asyncio.Future[str], _lost: object) -> None:
    _settle(fut, "lost")


def _settle(fut: asyncio.Future[str], why: str) -> None:
    if not fut.done():
        fut.set_result(why)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # optional: faster loop, same behaviour
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_shard(scenario: sc.Scenario, shard: ShardSpec, identities: Mapping[str, Identity] | IdentitySource, *,
              progress: Callable[[dict[str, Any]], None] | None = None, stop: StopFlag | None = None,
              ) -> ShardResult:
    """Drive ``shard``'s devices from ``shard.t0`` for ``scenario.duration`` s (or until ``stop`` is set).

    Ctrl-C (when this runs in the main thread with the default handler) and a broker that dies are ends like
    any other: connected devices disconnect, acknowledgements drain for up to DRAIN_S, and what was measured
    is returned. Called from inside a running event loop (a notebook), the shard gets a thread of its own.
    """
    state = _Shard(scenario, shard, as_source(identities), progress, stop)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _drive(state)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fleetsim-shard") as pool:
        return pool.submit(_drive, state).result()


def sets_up_ahead(scenario: sc.Scenario, devices: int) -> bool:
    """Whether a shard of this many devices sets them up before t0: only one with a TLS context per device to
    build (mTLS, and few enough devices to keep a context each) has anything to set up."""
    return scenario.broker.auth == "mtls" and devices <= PER_DEVICE_CONTEXTS_UP_TO


def setup_seconds(scenario: sc.Scenario, shard: ShardSpec, identities: Mapping[str, Identity] | IdentitySource,
                  sample: int = SETUP_SAMPLE) -> float:
    """Seconds this machine takes now to set one of ``shard``'s devices up before t0 (median over its first
    ``sample``); 0 when the shard sets nothing up. The runner sizes the lead before t0 from it, not from a
    constant: the speed of a shared machine drifts (~1.6x within an hour here), and a lead too short for it
    leaves devices to be set up inside the storm's clock."""
    if not sets_up_ahead(scenario, len(shard.devices)):  # decided by the whole shard, not by the sample
        return 0.0
    state = _Shard(scenario, replace(shard, devices=shard.devices[:sample]), as_source(identities),
                   None, None)

    async def timed() -> list[float]:  # an MQTT client belongs to a loop: give them one, on a thread of its own
        times = []
        for dev in state.devices:
            t = time.perf_counter()
            state.set_up(dev)
            times.append(time.perf_counter() - t)
        return times

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fleetsim-setup") as pool:
        times = pool.submit(asyncio.run, timed()).result()
    return float(np.median(times)) if times else 0.0


_NEVER = 2**30  # a generation-2 threshold no run reaches


@contextlib.contextmanager
def _no_full_collections() -> Iterator[None]:
    """No automatic full (generation 2) garbage collections while devices run, young ones as usual.

    Why: a worker's heap is thousands of long-lived devices (paho clients, sockets, telemetry state), and each
    full collection walks all of it: 28 -> 177 ms per collection as a 5,000-device shard filled up, every
    device on the worker waiting meanwhile (connect p99 1.1 s at 125 arrivals/s; 21 ms without them). What the
    engine makes and drops is short-lived and young collections reclaim it; bench_scale's memory per device
    keeps watch over anything that would accumulate instead.
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)


def _drive(state: _Shard) -> ShardResult:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        installed = False
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            loop.add_signal_handler(signal.SIGINT, state.request_stop)
            installed = True
        try:
            await state.run()
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

    with _no_full_collections(), asyncio.Runner(loop_factory=_loop_factory()) as runner, \
            contextlib.suppress(KeyboardInterrupt):
        runner.run(main())
    return state.result()
