"""How many connection attempts one worker keeps in flight: enough to keep the broker busy, few enough that its
own event loop stays on time.

Why: under a burst, asyncio runs every ready device in one loop iteration, so a worker with 1,000 devices in
their handshakes advances all of them together; each iteration then takes a second, every device's phase times
become the simulator's queue, and completions arrive in one bunch at the end (field notes). Admitting attempts
at the rate the worker can finish them keeps each iteration short. The limit follows the loop's own lag and the
broker's answers (multiplicative increase while both are quick and attempts are waiting, multiplicative decrease
when either is slow), so a slow remote broker still gets many attempts in flight while a CPU-bound worker gets
few. Growth is clocked by completions: a window in which nothing finished holds.

The broker's side is read as TCP Vegas reads a path: attempts beyond what the broker serves only queue there, so
once the window's median connect time (tcp + tls + mqtt, the loop's own queue left out) is several times the
fastest connect seen (its time without a queue: Vegas's base RTT), fewer go in flight. A SYN the broker's kernel
dropped (a connect that waited for its 1 s retransmit) cuts the limit and caps it there for the rest of the run,
as TCP's slow-start threshold does: past Mosquitto's listen backlog (100) a fixed high limit lost 5-15% of a
2,000-device storm's rate that way (bench_storm). The scenario's arrival stays what the user asked for: the wait
is recorded per attempt (``wait_ms``) and reported, never hidden.

``next_limit`` is the pure rule; :class:`Admission` applies it on a loop.
"""

from __future__ import annotations

import asyncio
import collections
import math
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """The limit's bounds, the lag (ms) that counts as on time / late, and when the broker counts as queueing."""

    initial: int = 32
    low: int = 4
    high: int = 4096
    on_time_ms: float = 20.0  # below it, more attempts may go in flight; a broker that paces them keeps it low
    late_ms: float = 60.0  # above it, the worker itself is the bottleneck: fewer attempts in flight
    queue_floor_ms: float = 50.0  # connect times below it never count as the broker queueing
    queue_factor: float = 4.0  # a window's median connect time this many times the fastest one seen: queueing
    syn_retry_ms: float = 900.0  # a TCP connect this slow waited for a SYN retransmit (Linux: 1 s)
    grow: float = 1.5
    shrink: float = 0.7


@dataclass(frozen=True)
class Window:
    """What one adjustment period showed."""

    lag_ms: float  # the worker's loop lag
    saturated: bool = False  # the limit was reached and attempts waited: more room could have been used
    connect_ms: float | None = None  # median connect time of the attempts that ended in it; None: none did
    best_ms: float | None = None  # the fastest connect of the run so far: the broker's time without a queue
    since_cut_ms: float = float("inf")  # time since the limit was last cut
    syn_dropped: bool = False  # an attempt's SYN was dropped: the broker's listen queue overflowed
    ceiling: int | None = None  # the limit never grows past it (set where SYNs were dropped)


def next_limit(limit: int, w: Window, rule: Rule = Rule()) -> int:
    """The next in-flight limit from what the last period showed."""
    shrunk = max(rule.low, int(limit * rule.shrink))
    if w.lag_ms > rule.late_ms or w.syn_dropped:
        return shrunk
    if w.connect_ms is None:
        return limit  # nothing finished: no evidence that more in flight would finish sooner
    if w.connect_ms > max(rule.queue_floor_ms, rule.queue_factor * (w.best_ms or w.connect_ms)):
        # attempts that began before the last cut still end slow: cut again only once a connect time has passed
        return shrunk if w.since_cut_ms >= w.connect_ms else limit
    if w.lag_ms < rule.on_time_ms and w.saturated:
        return min(rule.high if w.ceiling is None else w.ceiling, max(limit + 1, int(limit * rule.grow)))
    return limit


class Admission:
    """A gate in front of each attempt: ``await admit()`` before TCP connect, ``release()`` when it ends."""

    __slots__ = ("_cut_at", "_ended", "_syn_dropped", "_waiters", "best_ms", "ceiling", "closed", "in_flight",
                 "limit", "peak_in_flight", "peak_waiting", "rule", "saturated")

    def __init__(self, rule: Rule = Rule()) -> None:
        self.rule = rule
        self.limit = rule.initial
        self.in_flight = 0
        self.peak_in_flight = 0
        self.saturated = False  # the limit held someone back since the last adjustment
        self.peak_waiting = 0
        self.closed = False
        self.best_ms: float | None = None
        self._cut_at = -math.inf  # time.perf_counter() of the last cut
        self.ceiling: int | None = None
        self._syn_dropped = False
        self._ended: list[float] = []  # connect times (ms) of the attempts that ended since the last adjustment
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def admit(self) -> bool:
        """True once admitted (call release() when the attempt ends); False when the gate closed first."""
        if self.closed:
            return False
        if self.in_flight < self.limit and not self._waiters:
            self._enter()
            return True
        self.saturated = True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.peak_waiting = max(self.peak_waiting, len(self._waiters))
        try:
            return await fut  # release() counted us in before waking us with True
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # admitted and cancelled in the same breath: give the place back
            else:
                self._waiters.remove(fut)
            raise

    def release(self, connect_ms: float | None = None, tcp_ms: float | None = None) -> None:
        """The attempt ended; ``connect_ms``: its time at the network and the broker, when it got that far, of
        which ``tcp_ms`` its TCP connect."""
        self.in_flight -= 1
        if connect_ms is not None:
            self._ended.append(connect_ms)
        if tcp_ms is not None and tcp_ms >= self.rule.syn_retry_ms:
            self._syn_dropped = True
        self._wake()

    def adjust(self, lag_ms: float) -> None:
        """Apply the rule with the loop lag of the last period; called periodically by the shard."""
        median = statistics.median(self._ended) if self._ended else None
        if self._ended:
            fastest = min(self._ended)
            self.best_ms = fastest if self.best_ms is None else min(self.best_ms, fastest)
        now = time.perf_counter()
        # a slow connect on a path whose fastest is far quicker was a dropped SYN, not a long way to the broker
        dropped = self._syn_dropped and (self.best_ms or 0.0) < self.rule.syn_retry_ms / 3
        window = Window(lag_ms, self.saturated, median, self.best_ms, (now - self._cut_at) * 1000.0, dropped,
                        self.ceiling)
        limit, self.limit = self.limit, next_limit(self.limit, window, self.rule)
        if self.limit < limit:
            self._cut_at = now
        if dropped:
            self.ceiling = self.limit
        self._syn_dropped = False
        self.saturated = bool(self._waiters)
        self._ended.clear()
        self._wake()

    def close(self) -> None:
        """Admit nobody from now on; whoever waits is told so (the run is stopping)."""
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(False)

    def _enter(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self._enter()
                fut.set_result(True)
