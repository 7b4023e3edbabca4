"""A worker's own saturation, measured while it runs: how late its event loop is, and how busy its core.

Loop lag is the delay of a periodic callback past its due time: a loop that runs on time calls it within a
fraction of a millisecond, a loop busy with a thousand handshakes calls it tens or hundreds of ms late, and
every device on that worker waited as long for its turn. It tells the reader when latency figures describe
the simulator rather than the broker.
"""

from __future__ import annotations

import array
import asyncio
import time
from collections.abc import Callable

from fleetsim.engine.timeline import Bins

PERIOD_S = 0.05
LAG_COLUMN = "loop_lag_ms_max"
CPU_COLUMN = "sim_cpu_s"
CPU_MAX_COLUMN = "sim_cpu_max"


class LoopMonitor:
    """Samples loop lag every PERIOD_S and the process CPU at each sample, into ``bins`` by run time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bins: Bins, run_time: Callable[[], float]) -> None:
        self.loop, self.bins, self.run_time = loop, bins, run_time
        self.lag_ms = array.array("f")  # every sample, for the run's percentiles (20 a second: 288 KB an hour)
        self.window_max = 0.0  # largest lag since take_window() was last called
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._cpu = time.process_time()
        self._cpu_start = self._cpu
        self._wall_start = time.perf_counter()
        self._second = -1
        self._second_cpu = 0.0

    def start(self) -> None:
        """From now on: the CPU spent before (imports, the devices prepared before t0) is not second 0's."""
        self._cpu = time.process_time()
        self._due = self.loop.time() + PERIOD_S
        self._handle = self.loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.loop.time()
        lag = max(0.0, (now - self._due) * 1000.0)
        t = self.run_time()
        self.lag_ms.append(lag)
        self.window_max = max(self.window_max, lag)
        self.bins.peak(LAG_COLUMN, t, lag)
        self._cpu_sample(t)
        self._due = max(self._due + PERIOD_S, now)  # after a long stall, do not fire a burst of catch-ups
        self._handle = self.loop.call_at(self._due, self._tick)

    def _cpu_sample(self, t: float) -> None:
        cpu = time.process_time()
        used, self._cpu = cpu - self._cpu, cpu
        self.bins.add(CPU_COLUMN, t, used)
        second = int(t)
        if second != self._second:
            self._second, self._second_cpu = second, 0.0
        self._second_cpu += used
        self.bins.peak(CPU_MAX_COLUMN, t, min(1.0, self._second_cpu))

    def take_window(self) -> float:
        lag, self.window_max = self.window_max, 0.0
        return lag

    def totals(self) -> dict[str, float]:
        return {"cpu_s": time.process_time() - self._cpu_start, "wall_s": time.perf_counter() - self._wall_start}
