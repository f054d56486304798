"""Intervals over rounds and requests: a two-level bootstrap, seeded and deterministic. Pure.

A benchmark cell (one configuration at one load level) holds R rounds (one fresh engine each),
and every round replays the same n planned requests. Two things vary between repeats of the
experiment: the machine and engine from round to round (start-up, drift, scheduling noise) and,
within a round, which requests happen to be in the window. One bootstrap replicate mirrors both:

    1. draw R rounds from the R, with replacement;
    2. inside each drawn round, draw its n requests from its n, with replacement;
    3. compute the statistic on the pooled draw (a round keeps its own duration).

The 95% interval is the 2.5th..97.5th percentile of the replicates (percentile bootstrap). With
R = 3 there are only 10 distinct multisets of rounds, so the round-level spread is coarse; fewer
than 3 rounds cannot show round-to-round noise at all (`MIN_ROUNDS`).

Ratios (configuration A / baseline B at the same level) are bootstrapped too: replicate b of the
ratio is A's replicate b over B's. The rounds of A and of B are different engines, so their round
draws are independent; the requests are the same planned requests in both, so the request draws
are shared (slot j of A's draw and slot j of B's use the same request indices; a paired design):
the ratio then measures the configurations, not which requests were drawn. A ratio is
`significant` only when its interval excludes 1.

Seeds are strings (`random.Random` hashes them with SHA-512), so draws are the same in every
process and on every machine, whatever PYTHONHASHSEED says.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from specserve_engine.trace_replay.trace import percentile

MIN_ROUNDS = 3
DEFAULT_REPLICATES = 1000
LEVEL = 0.95

# One replicate: for each drawn round slot, (the round's index, the request indices drawn in it).
Draw = list[tuple[int, list[int]]]


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float

    def excludes(self, value: float) -> bool:
        return value < self.lo or value > self.hi


@dataclass(frozen=True)
class Ratio:
    """A / B of one statistic, with its bootstrap interval (None when too few replicates had
    both values, e.g. no TPOT on one side)."""

    value: float | None
    interval: Interval | None

    @property
    def significant(self) -> bool:
        return self.interval is not None and self.interval.excludes(1.0)


def draws(round_sizes: Sequence[int], replicates: int, *, round_seed: str,
          request_seed: str) -> list[Draw]:
    """`replicates` two-level draws over rounds of the given sizes (requests per round).

    Round draws come from `round_seed`, request draws from `request_seed`; two cells whose
    rounds all have the same size and that share `request_seed` get the same request indices
    slot by slot (the paired design above), whatever rounds they draw.
    """
    if not round_sizes:
        return []
    rounds_rng, requests_rng = random.Random(round_seed), random.Random(request_seed)
    count = len(round_sizes)
    out = []
    for _ in range(replicates):
        picked = rounds_rng.choices(range(count), k=count)
        out.append([(r, requests_rng.choices(range(round_sizes[r]), k=round_sizes[r]))
                    for r in picked])
    return out


def replicate(statistic: Callable[[Draw], float | None], all_draws: Sequence[Draw]
              ) -> list[float | None]:
    return [statistic(d) for d in all_draws]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def interval(values: Sequence[float | None], level: float = LEVEL) -> Interval | None:
    """The percentile interval of the replicates; None when fewer than half are defined (a
    statistic that mostly does not exist has no meaningful interval)."""
    finite = _finite(values)
    if not finite or len(finite) * 2 < len(values):
        return None
    tail = (1 - level) / 2 * 100
    return Interval(percentile(finite, tail), percentile(finite, 100 - tail))


def ratio(value_a: float | None, value_b: float | None, reps_a: Sequence[float | None],
          reps_b: Sequence[float | None], level: float = LEVEL) -> Ratio:
    """A / B with the interval of the replicate-by-replicate ratios (no interval unless both
    sides have the same, non-zero number of replicates)."""
    point = value_a / value_b if value_a is not None and value_b else None
    if point is None or not reps_a or len(reps_a) != len(reps_b):
        return Ratio(point, None)
    paired = [a / b if a is not None and b else None
              for a, b in zip(reps_a, reps_b, strict=True)]
    return Ratio(point, interval(paired, level))
