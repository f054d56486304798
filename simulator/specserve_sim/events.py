"""The event kernel: a time-ordered heap of callbacks, nothing else.

A simulated cluster has few kinds of events (an arrival, the end of a replica's step, a
controller tick, a replica becoming ready), each handled by one method that schedules the next.
A heap of (time, sequence, callback) covers that: the sequence number breaks ties in the order
events were scheduled, so a run is deterministic. SimPy's generator processes would add a
coroutine switch per event and nothing this model needs (docs/simulator.md, "Event kernel").
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count


class Kernel:
    """Simulated time and the events still to come."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = count()

    def at(self, time: float, callback: Callable[[], None]) -> None:
        """Run `callback` at simulated `time` (never before now)."""
        heapq.heappush(self._heap, (max(time, self.now), next(self._seq), callback))

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        self.at(self.now + delay, callback)

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None) -> float:
        """Run events in time order until none is left, the next is past `until`, or `stop()`
        says so (checked after each event). Returns the simulated time reached."""
        heap, pop = self._heap, heapq.heappop
        while heap:
            if until is not None and heap[0][0] > until:
                self.now = until
                break
            self.now, _, callback = pop(heap)
            callback()
            if stop is not None and stop():
                break
        return self.now

    @property
    def pending(self) -> int:
        return len(self._heap)
