"""The admission rule and gate that keep a worker's loop on time: pure logic on an asyncio loop, no network."""

import asyncio

from fleetsim.engine.admission import Admission, Rule, next_limit
from fleetsim.engine.timeline import Bins, merge

RULE = Rule(initial=8, low=2, high=64, on_time_ms=5.0, late_ms=20.0, grow=2.0, shrink=0.5)


def test_the_limit_grows_while_on_time_and_needed_and_shrinks_when_late() -> None:
    assert next_limit(8, 1.0, saturated=True, rule=RULE) == 16
    assert next_limit(8, 1.0, saturated=False, rule=RULE) == 8  # nobody waited: no reason to grow
    assert next_limit(8, 10.0, saturated=True, rule=RULE) == 8  # neither on time nor late: hold
    assert next_limit(8, 50.0, saturated=True, rule=RULE) == 4
    assert next_limit(2, 50.0, saturated=True, rule=RULE) == 2 and next_limit(64, 0.0, saturated=True, rule=RULE) == 64


def test_the_gate_admits_up_to_the_limit_in_arrival_order_and_says_no_once_closed() -> None:
    async def main() -> tuple[list[int], bool, int]:
        gate = Admission(Rule(initial=2))
        order: list[int] = []

        async def attempt(i: int) -> None:
            if await gate.admit():
                order.append(i)
                await asyncio.sleep(0.01)
                gate.release()

        await asyncio.gather(*(attempt(i) for i in range(6)))
        gate.close()
        return order, await gate.admit(), gate.peak_waiting

    order, after_close, peak = asyncio.run(main())
    assert order == list(range(6)) and after_close is False and peak == 4


def test_bins_file_events_under_their_own_second_and_merge_by_sum_or_max() -> None:
    a, b = Bins("published", "loop_lag_ms_max"), Bins("published", "loop_lag_ms_max")
    a.add("published", 0.2)
    a.add("published", 2.7, 3)
    a.peak("loop_lag_ms_max", 1.1, 5.0)
    a.peak("loop_lag_ms_max", 1.9, 2.0)
    b.add("published", 0.9)
    b.peak("loop_lag_ms_max", 1.5, 7.0)
    assert a.columns() == {"second": [0, 1, 2], "published": [1, 0, 3], "loop_lag_ms_max": [0.0, 5.0, 0.0]}
    assert merge([a.columns(), b.columns()]) == {"second": [0, 1, 2], "loop_lag_ms_max": [0.0, 7.0, 0.0],
                                                 "published": [2, 0, 3]}
