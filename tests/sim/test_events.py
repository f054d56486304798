"""The event kernel: time order, ties in scheduling order, stopping rules."""

from specserve_sim.events import Kernel


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    k = Kernel()
    seen: list[str] = []
    k.at(2.0, lambda: seen.append("late"))
    k.at(1.0, lambda: seen.append("first"))
    k.at(1.0, lambda: seen.append("second"))
    k.at(1.5, lambda: k.after(0.25, lambda: seen.append("scheduled from an event")))
    assert k.run() == 2.0
    assert seen == ["first", "second", "scheduled from an event", "late"]


def test_run_stops_at_until_and_at_stop() -> None:
    k = Kernel()
    seen: list[float] = []
    for t in (1.0, 2.0, 3.0):
        k.at(t, lambda t=t: seen.append(t))
    assert k.run(until=2.5) == 2.5
    assert seen == [1.0, 2.0] and k.pending == 1
    k.at(4.0, lambda: seen.append(4.0))
    k.run(stop=lambda: len(seen) == 3)
    assert seen == [1.0, 2.0, 3.0] and k.pending == 1


def test_an_event_in_the_past_runs_now() -> None:
    k = Kernel()
    k.at(5.0, lambda: k.at(1.0, lambda: seen.append(k.now)))
    seen: list[float] = []
    k.run()
    assert seen == [5.0]
