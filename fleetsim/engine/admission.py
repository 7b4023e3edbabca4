"""How many connection attempts one worker keeps in flight: enough to keep the broker busy, few enough that its
own event loop stays on time.

Why: under a burst, asyncio runs every ready device in one loop iteration, so a worker with 1,000 devices in
their handshakes advances all of them together; each iteration then takes a second, every device's phase times
become the simulator's queue, and completions arrive in one bunch at the end (field notes). Admitting attempts
at the rate the worker can finish them keeps each iteration short. The limit follows the loop's own lag
(additive... rather multiplicative increase while the loop is on time and attempts are waiting, multiplicative
decrease when it is late), so a slow remote broker still gets many attempts in flight while a CPU-bound worker
gets few. The scenario's arrival stays what the user asked for: the wait is recorded per attempt (``wait_ms``)
and reported, never hidden.

``next_limit`` is the pure rule; :class:`Admission` applies it on a loop.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """The limit's bounds and the lag (ms) that counts as on time / late."""

    initial: int = 32
    low: int = 4
    high: int = 4096
    on_time_ms: float = 20.0  # below it, more attempts may go in flight; a broker that paces them keeps it low
    late_ms: float = 60.0  # above it, the worker itself is the bottleneck: fewer attempts in flight
    grow: float = 1.5
    shrink: float = 0.7


def next_limit(limit: int, lag_ms: float, *, saturated: bool, rule: Rule = Rule()) -> int:
    """The next in-flight limit from the loop lag seen since the last adjustment.

    ``saturated``: the limit was reached and attempts were waiting, so more room could have been used.
    """
    if lag_ms > rule.late_ms:
        return max(rule.low, int(limit * rule.shrink))
    if lag_ms < rule.on_time_ms and saturated:
        return min(rule.high, max(limit + 1, int(limit * rule.grow)))
    return limit


class Admission:
    """A gate in front of each attempt: ``await admit()`` before TCP connect, ``release()`` when it ends."""

    __slots__ = ("_waiters", "closed", "in_flight", "limit", "peak_waiting", "rule", "saturated")

    def __init__(self, rule: Rule = Rule()) -> None:
        self.rule = rule
        self.limit = rule.initial
        self.in_flight = 0
        self.saturated = False  # the limit held someone back since the last adjustment
        self.peak_waiting = 0
        self.closed = False
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def admit(self) -> bool:
        """True once admitted (call release() when the attempt ends); False when the gate closed first."""
        if self.closed:
            return False
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
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

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def adjust(self, lag_ms: float) -> None:
        """Apply the rule with the loop lag of the last period; called periodically by the shard."""
        self.limit = next_limit(self.limit, lag_ms, saturated=self.saturated, rule=self.rule)
        self.saturated = bool(self._waiters)
        self._wake()

    def close(self) -> None:
        """Admit nobody from now on; whoever waits is told so (the run is stopping)."""
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(False)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(True)
