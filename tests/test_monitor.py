"""The loop monitor's own figures, on a real event loop (no network)."""

import asyncio
import time

from fleetsim.engine.monitor import CPU_COLUMN, CPU_MAX_COLUMN, LAG_COLUMN, LoopMonitor
from fleetsim.engine.timeline import Bins


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_spent_before_the_run_starts_is_not_booked_into_its_first_second() -> None:
    async def main() -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()
        bins = Bins(LAG_COLUMN, CPU_COLUMN, CPU_MAX_COLUMN)
        t0 = loop.time()
        monitor = LoopMonitor(loop, bins, lambda: loop.time() - t0)
        _burn(0.3)  # what a worker does before t0: its devices' contexts, clients, telemetry
        monitor.start()
        await asyncio.sleep(0.3)  # idle
        monitor.stop()
        return bins.columns()

    cols = asyncio.run(main())
    assert sum(cols[CPU_COLUMN]) < 0.1  # the 0.3 s before start() is not the run's
    assert max(cols[CPU_MAX_COLUMN]) < 0.5
