"""The time the broker's event loop could run: the clock a device's silence is measured on (keepalive).

Why: the keepalive check (3.1.2-24, in the front) closes a connection that sent no packet for 1.5 x its keepalive.
Measured on the loop's own clock, a stall of the broker's loop is blamed on the devices: a device's PINGREQ that
arrived during a stall waits in its socket, and when the loop runs again the check's timer runs before the reader
has parsed it (an attack review saw healthy devices cut after a 3.8 s stall). On this clock the time the loop was
blocked does not pass: a tick every ``TICK_S`` that runs late was held up by a stall, and the lateness is taken off;
a tick overdue now counts too, so a check that runs before the late tick already sees the stall. A stall shorter
than a tick, or the part of one before the first tick it delays (at most ``TICK_S``), still counts as silence.

Pure arithmetic (``LoopClock``, with the time source given) apart from the timer that ticks it (``start``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

TICK_S = 0.1


class LoopClock:
    """Loop time minus the time the loop was held up (see the module docstring)."""

    def __init__(self, now: Callable[[], float], tick_s: float = TICK_S) -> None:
        self._now = now
        self.tick_s = tick_s
        self.stalled_s = 0.0  # time taken off so far: the loop's stalls, as the ticks saw them
        self._due = now() + tick_s
        self._handle: asyncio.TimerHandle | None = None

    def tick(self) -> float:
        """One tick, run by the timer: a late one adds its lateness to the stalls. Returns when the next is due."""
        now = self._now()
        self.stalled_s += max(0.0, now - self._due)
        self._due = now + self.tick_s
        return self._due

    def available(self) -> float:
        """The loop's time so far, stalls taken off (an overdue tick's lateness included)."""
        now = self._now()
        return now - self.stalled_s - max(0.0, now - self._due)

    # --- the timer --------------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.tick_s
        self._handle = loop.call_at(self._due, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = loop.call_at(self.tick(), self._run, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
