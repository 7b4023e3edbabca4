"""The admission rule and gate that keep a worker's loop on time: pure logic on an asyncio loop, no network."""

import asyncio

from fleetsim.engine.admission import Admission, Rule, Window, next_limit
from fleetsim.engine.timeline import Bins, merge

RULE = Rule(initial=8, low=2, high=64, on_time_ms=5.0, late_ms=20.0, queue_floor_ms=10.0, queue_factor=4.0,
            grow=2.0, shrink=0.5)


def test_the_limit_grows_while_on_time_and_needed_and_shrinks_when_late() -> None:
    def quick(lag_ms: float, saturated: bool) -> Window:
        return Window(lag_ms, saturated, connect_ms=3.0, best_ms=2.0)

    assert next_limit(8, quick(1.0, True), RULE) == 16
    assert next_limit(8, quick(1.0, False), RULE) == 8  # nobody waited: no reason to grow
    assert next_limit(8, quick(10.0, True), RULE) == 8  # neither on time nor late: hold
    assert next_limit(8, quick(50.0, True), RULE) == 4
    assert next_limit(2, quick(50.0, True), RULE) == 2
    assert next_limit(64, quick(0.0, True), RULE) == 64


def test_growth_is_clocked_by_completions_and_a_queueing_broker_gets_fewer() -> None:
    assert next_limit(8, Window(1.0, True), RULE) == 8  # nothing ended in the window: hold
    assert next_limit(8, Window(1.0, True, connect_ms=9.0, best_ms=1.0), RULE) == 16  # below the floor
    assert next_limit(8, Window(1.0, True, connect_ms=30.0, best_ms=5.0), RULE) == 4  # 6x the best: queueing
    assert next_limit(8, Window(1.0, True, connect_ms=300.0, best_ms=100.0), RULE) == 16  # a far broker: 3x
    assert next_limit(8, Window(1.0, True, connect_ms=1000.0), RULE) == 16  # the first window is its own best
    # cut 20 ms ago, attempts of 30 ms still ending: they began before the cut, so hold rather than cut again
    assert next_limit(8, Window(1.0, True, connect_ms=30.0, best_ms=5.0, since_cut_ms=20.0), RULE) == 8
    assert next_limit(8, Window(1.0, True, connect_ms=3.0, best_ms=2.0, syn_dropped=True), RULE) == 4
    assert next_limit(8, Window(1.0, True, connect_ms=3.0, best_ms=2.0, ceiling=10), RULE) == 10


def test_a_dropped_syn_caps_the_limit_for_the_rest_of_the_run_but_a_far_broker_is_not_one() -> None:
    async def main(fastest_ms: float) -> tuple[int, int | None]:
        gate = Admission(RULE)
        for tcp_ms in (fastest_ms, 1000.0, fastest_ms, fastest_ms):
            assert await gate.admit()
            gate.saturated = True
            gate.release(tcp_ms + 1.0, tcp_ms)
            gate.adjust(1.0)
        return gate.limit, gate.ceiling

    assert asyncio.run(main(1.0)) == (8, 8)  # 8 -> 16, cut to 8 and capped there
    assert asyncio.run(main(400.0)) == (64, None)  # a 400 ms path: 1 s is its own slowness, not a drop


def test_the_gate_learns_the_fastest_connect_and_shrinks_on_a_slow_window() -> None:
    async def main() -> list[int]:
        gate = Admission(RULE)
        limits = []
        for ms in (2.0, 3.0, 40.0):  # one attempt ending per window, while others wait
            assert await gate.admit()
            gate.saturated = True
            gate.release(ms)
            gate.adjust(1.0)
            limits.append(gate.limit)
        return limits

    assert asyncio.run(main()) == [16, 32, 16]  # 40 ms: above the floor and 20x the fastest (2 ms)


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
