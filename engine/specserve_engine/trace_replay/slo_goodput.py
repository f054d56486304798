"""SLO goodput: the highest request rate a configuration serves within its latency SLO. Pure.

Below saturation every configuration delivers the offered load, so token goodput ratios there are
1 by construction and cannot tell configurations apart. Serving papers measure capacity instead;
DistServe (OSDI'24) defines goodput as the maximum request rate at which a target fraction
(90% here) of requests meet the SLO: TPOT, and TTFT when one is set. This module finds that rate
by search, given a probe that runs a bounded load at rate r and returns what each request got:

    1. exponential phase: probe start_rate; multiply by `growth` while the SLO holds (or divide
       while it fails) until one rate passes and the next fails: the bracket [lo, hi];
    2. bisection on a log scale (the geometric mean of lo and hi) until hi / lo - 1 <= rel_tol
       or `max_probes` probes have run.

The answer is `lo`, the highest rate seen to meet the SLO below the lowest rate seen to fail it.
Attainment falls with rate in a queueing system, but one probe is a noisy sample: a probe near
the answer may pass or fail either way, so the answer is good to about the noise of one probe
plus rel_tol. Probes at different rates should reuse one arrival pattern scaled by 1/r
(`trace.poisson_plan` does) so that the noise is common to all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class Latency(Protocol):
    """What a probe reports per request (`client.RequestRecord` is one)."""

    @property
    def ok(self) -> bool: ...

    @property
    def ttft_s(self) -> float | None: ...

    @property
    def tpot_s(self) -> float | None: ...


@dataclass(frozen=True)
class RequestLatency:
    """A plain `Latency`, for synthetic systems and tests."""

    tpot_s: float | None
    ttft_s: float | None = None
    ok: bool = True


@dataclass(frozen=True)
class SloTarget:
    tpot_s: float
    ttft_s: float | None = None  # None: TTFT is not part of the SLO
    attainment: float = 0.9  # fraction of requests that must meet it (DistServe: 90%)

    def met(self, r: Latency) -> bool:
        """A request meets the SLO when it completed within both bounds (a one-token answer has
        no TPOT and meets the TPOT bound, as in the trace-replay table)."""
        if not r.ok:
            return False
        if r.tpot_s is not None and r.tpot_s > self.tpot_s:
            return False
        return self.ttft_s is None or (r.ttft_s is not None and r.ttft_s <= self.ttft_s)


def attainment(requests: Sequence[Latency], target: SloTarget) -> float:
    """Fraction of all requests (failed ones count as misses) that met the SLO."""
    return sum(target.met(r) for r in requests) / len(requests) if requests else 0.0


@dataclass(frozen=True)
class Probe:
    rate: float  # requests/s offered
    requests: int
    attainment: float
    meets: bool


@dataclass(frozen=True)
class SloGoodput:
    rate: float  # the highest probed rate that met the SLO; 0.0 when none did
    upper: float | None  # the lowest probed rate that failed; None when none failed
    probes: tuple[Probe, ...]  # in the order they ran

    @property
    def converged(self) -> bool:
        """Both ends found (a bracket), whatever its width when max_probes stopped it."""
        return self.rate > 0 and self.upper is not None


def slo_goodput(
    run: Callable[[float], Sequence[Latency]],
    target: SloTarget,
    *,
    start_rate: float = 1.0,
    growth: float = 2.0,
    rel_tol: float = 0.05,
    min_rate: float = 1e-3,
    max_rate: float = 1e3,
    max_probes: int = 16,
) -> SloGoodput:
    """Search the highest rate r at which `run(r)` meets `target` (see the module docstring).

    `run(r)` offers load at r requests/s for a bounded time and returns one entry per request
    sent. The search stops at `min_rate` (answer 0: the SLO fails even nearly unloaded) or
    `max_rate` (answer max_rate's bracket end, `upper` None: never saturated) and never runs
    more than `max_probes` probes.
    """
    if not 0 < min_rate <= start_rate <= max_rate or growth <= 1 or rel_tol <= 0 \
            or max_probes < 1 or not 0 < target.attainment <= 1:
        raise ValueError("need 0 < min_rate <= start_rate <= max_rate, growth > 1, "
                         "rel_tol > 0, max_probes >= 1, 0 < attainment <= 1")
    probes: list[Probe] = []

    def probe(rate: float) -> bool:
        got = run(rate)
        a = attainment(got, target)
        probes.append(Probe(rate, len(got), a, a >= target.attainment))
        return probes[-1].meets

    lo: float | None = None  # highest passing rate so far
    hi: float | None = None  # lowest failing rate so far
    rate = start_rate
    # Exponential phase: find a passing and a failing rate.
    while len(probes) < max_probes:
        if probe(rate):
            lo = rate
            if hi is not None or rate >= max_rate:
                break
            rate = min(rate * growth, max_rate)
        else:
            hi = rate
            if lo is not None or rate <= min_rate:
                break
            rate = max(rate / growth, min_rate)
    # Bisection on a log scale inside [lo, hi].
    while lo is not None and hi is not None and hi / lo - 1 > rel_tol \
            and len(probes) < max_probes:
        mid = math.sqrt(lo * hi)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return SloGoodput(lo or 0.0, hi, tuple(probes))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def bounds(searches: Sequence[SloGoodput]) -> tuple[float, float]:
    """Where the SLO goodput lies by every search of one configuration: from the lowest passing
    rate found to the highest failing one (inf when one search never failed)."""
    return (min(s.rate for s in searches),
            max(math.inf if s.upper is None else s.upper for s in searches))


def ratio_bounds(a: Sequence[SloGoodput], b: Sequence[SloGoodput]
                 ) -> tuple[float, float] | None:
    """A / B's range from both `bounds`: the search resolution and the spread over repeats
    (not a confidence interval). None when B found no passing rate."""
    (a_lo, a_hi), (b_lo, b_hi) = bounds(a), bounds(b)
    return (a_lo / b_hi, a_hi / b_lo) if b_lo > 0 else None


def markdown(results: Mapping[str, Sequence[SloGoodput]], target: SloTarget,
             baseline: str | None = None) -> str:
    """One row per configuration: the median SLO goodput over repeats, its bounds, and the ratio
    to `baseline` with ratio_bounds (marked * where the range excludes 1)."""
    slo = f"TPOT <= {target.tpot_s * 1000:g} ms" + (
        f", TTFT <= {target.ttft_s * 1000:g} ms" if target.ttft_s is not None else "")
    head = (f"SLO goodput: the highest request rate at which >= {target.attainment:.0%} of "
            f"requests meet {slo}.\n\n| config | SLO goodput req/s (median) | bounds | "
            f"searches | probes | / {baseline or '-'} | range |\n|---|---|---|---|---|---|---|\n")
    rows = []
    base = results.get(baseline) if baseline else None
    for name, searches in results.items():
        if not searches:
            continue
        lo, hi = bounds(searches)
        median = _median([s.rate for s in searches])
        cells = [name, f"{median:.3g}", f"{lo:.3g}..{hi:.3g}", str(len(searches)),
                 str(sum(len(s.probes) for s in searches))]
        rb = ratio_bounds(searches, base) if base else None
        base_median = _median([s.rate for s in base]) if base else 0.0
        if rb is not None and base_median > 0:
            star = " *" if rb[0] > 1 or rb[1] < 1 else ""
            cells += [f"{median / base_median:.3f}", f"{rb[0]:.3f}..{rb[1]:.3f}{star}"]
        else:
            cells += ["-", "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"
