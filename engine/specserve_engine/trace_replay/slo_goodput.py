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
(`trace.timed_plan` does) so that the noise is common to all of them.

Intervals. A configuration is searched in R rounds (a fresh engine and arrival seed each). Its
SLO goodput is the mean of the rounds' answers. Ratios compare the capacity estimate: the mean
of the brackets' middles [highest passing rate, lowest failing rate], where a bootstrap
replicate centres: it draws R rounds with replacement and, for each drawn search, a capacity
uniform in its bracket: the capacity lies somewhere in there, so the replicates carry both the
spread over rounds and the search's resolution. (A point at the brackets' lower ends would sit
at the edge of its own interval.) A search that never failed is censored at its highest passing
rate; a ratio with such a side is a bound, printed ">=" or "<=". A / B's replicate b is A's
replicate b over B's (drawn independently: different engines); the 95% interval is the
2.5th..97.5th percentile of 2000 replicates by default, seeded by strings (the same on every
machine). With R = 1 only the resolution shows; with R = 3 the round draws have 10 distinct
multisets, so the interval is coarse. A ratio is marked * where its interval excludes 1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from specserve_engine.trace_replay.bootstrap import Ratio, ratio

DEFAULT_REPLICATES = 2000


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
    # What the clients saw over the probe's completed requests (None: none had the value),
    # and, for an engine that predicts it, the median TPOT it predicted for the same requests:
    # read side by side they say whether the model knew the load it decided K for.
    tpot_p50_s: float | None = None
    tpot_p90_s: float | None = None
    ttft_p50_s: float | None = None
    predicted_tpot_p50_s: float | None = None


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between order statistics; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    lo = math.floor(at)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def probe_of(rate: float, got: Sequence[Latency], target: SloTarget) -> Probe:
    """One probe's verdict and the clients' latency quantiles."""
    a = attainment(got, target)
    tpots = [r.tpot_s for r in got if r.ok and r.tpot_s is not None]
    ttfts = [r.ttft_s for r in got if r.ok and r.ttft_s is not None]
    return Probe(rate, len(got), a, a >= target.attainment, quantile(tpots, 0.5),
                 quantile(tpots, 0.9), quantile(ttfts, 0.5))


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
        probes.append(probe_of(rate, run(rate), target))
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


def bounds(searches: Sequence[SloGoodput]) -> tuple[float, float]:
    """Where the SLO goodput lies by every search of one configuration: from the lowest passing
    rate found to the highest failing one (inf when one search never failed)."""
    return (min(s.rate for s in searches),
            max(math.inf if s.upper is None else s.upper for s in searches))


def mean_rate(searches: Sequence[SloGoodput]) -> float:
    """The SLO goodput of a configuration: its searches' answers (`rate`), averaged over rounds."""
    return sum(s.rate for s in searches) / len(searches)


def capacity(search: SloGoodput) -> float:
    """One search's capacity estimate: the middle of its bracket, where the uniform draws of the
    bootstrap centre, so a ratio's point and its interval agree; a search that never failed is
    censored at its highest passing rate (a lower bound), and one that never passed has none."""
    if search.upper is None or search.rate <= 0:
        return search.rate
    return (search.rate + search.upper) / 2


def mean_capacity(searches: Sequence[SloGoodput]) -> float:
    """The capacity estimate of a configuration, averaged over rounds: what ratios compare."""
    return sum(capacity(s) for s in searches) / len(searches)


def censored(searches: Sequence[SloGoodput]) -> bool:
    """Some round never failed: the configuration's capacity is only bounded below."""
    return any(s.upper is None for s in searches)


def capacity_replicates(searches: Sequence[SloGoodput], replicates: int = DEFAULT_REPLICATES,
                        *, seed: str) -> list[float]:
    """Bootstrap replicates of `mean_capacity` (module docstring, "Intervals"): the rounds drawn
    with replacement, each drawn search's capacity uniform in its bracket [rate, upper] (just `rate`
    when it never failed: a censored search adds no resolution spread)."""
    if not searches:
        return []
    rng = random.Random(f"capacity:{seed}")
    out = []
    for _ in range(replicates):
        picked = rng.choices(searches, k=len(searches))
        out.append(sum(rng.uniform(s.rate, s.rate if s.upper is None else s.upper)
                       for s in picked) / len(picked))
    return out


def capacity_ratio(a: Sequence[SloGoodput], b: Sequence[SloGoodput], *,
                   replicates: int = DEFAULT_REPLICATES, seed: str = "0") -> Ratio:
    """A / B of the mean SLO goodput with its 95% percentile interval. A and B ran on different
    engines, so their replicates are drawn independently (seeds `seed:a` and `seed:b`)."""
    return _ratio(a, b, capacity_replicates(a, replicates, seed=f"{seed}:a"),
                  capacity_replicates(b, replicates, seed=f"{seed}:b"))


def _ratio(a: Sequence[SloGoodput], b: Sequence[SloGoodput], reps_a: Sequence[float],
           reps_b: Sequence[float]) -> Ratio:
    return ratio(mean_capacity(a), mean_capacity(b), reps_a, reps_b)


def bound_mark(a: Sequence[SloGoodput], b: Sequence[SloGoodput]) -> str:
    """How to read A / B when a side never failed: ">=" (A is a lower bound), "<=" (B is), "?"
    (both: no bound either way), "" (both bracketed)."""
    return {(False, False): "", (True, False): ">= ", (False, True): "<= ",
            (True, True): "? "}[censored(a), censored(b)]


# The ablation of SpecServe's components, each row adding one to the row before it.
ABLATION = (("static, best K", None), ("+ adaptive K per step", "adaptive-drafter"),
            ("+ per-request draft trimming", "adaptive-verifier"),
            ("+ TPOT SLO in the policy", "adaptive"))
STATIC_KS = ("K=1", "K=2", "K=3", "K=5")
REFERENCE = "adaptive"
HIGHLIGHTED = "dynamic-sd"


def best_static(results: Mapping[str, Sequence[SloGoodput]],
                names: Sequence[str] = STATIC_KS) -> str | None:
    """The static K with the highest mean capacity over its rounds (the first on a tie)."""
    present = [n for n in names if results.get(n)]
    return max(present, key=lambda n: mean_capacity(results[n])) if present else None


def _interval(r: Ratio, mark: str = "") -> str:
    if r.value is None:
        return "- | -"
    if r.interval is None:
        return f"{mark}{r.value:.3f} | -"
    star = " *" if r.significant else ""
    return f"{mark}{r.value:.3f} | {r.interval.lo:.3f}..{r.interval.hi:.3f}{star}"


def slo_text(target: SloTarget) -> str:
    return f"TPOT <= {target.tpot_s * 1000:g} ms" + (
        f", TTFT <= {target.ttft_s * 1000:g} ms" if target.ttft_s is not None else "")


def markdown(results: Mapping[str, Sequence[SloGoodput]], target: SloTarget, *,
             title: str, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> str:
    """One (workload, arrivals, SLO) cell of the matrix: a row per configuration (the mean SLO
    goodput over rounds, the capacity estimate the ratios compare, min..max, the brackets'
    extent, adaptive / config with the bootstrap interval, ">=" / "<=" where a side never
    failed), the headline ratios (adaptive / best static K, adaptive / dynamic-sd), and the
    ablation table when its rows are there. Replicates are seeded by `seed` and the
    configuration's name, so one configuration's replicates are the same in every ratio."""
    results = {name: list(s) for name, s in results.items() if s}
    reps = {name: capacity_replicates(s, replicates, seed=f"{seed}:{name}")
            for name, s in results.items()}
    ref = results.get(REFERENCE)

    def vs(a: str, b: str) -> Ratio:
        return _ratio(results[a], results[b], reps[a], reps[b])

    text = [f"### {title}\n",
            f"SLO goodput: the highest request rate at which >= {target.attainment:.0%} of "
            f"requests meet {slo_text(target)}; mean over rounds. Capacity: the middle of each "
            f"round's bracket (passing .. failing rate), averaged; ratios compare it.\n",
            f"| config | SLO goodput req/s | capacity req/s | min..max over rounds | brackets "
            f"| rounds | probes | TPOT p50 ms at the answer (predicted) "
            f"| {REFERENCE} / config | 95% interval |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, searches in results.items():
        lo, hi = bounds(searches)
        never_failed = " (never failed)" if censored(searches) else ""
        cells = [f"**{name}**" if name == REFERENCE else name, f"{mean_rate(searches):.3g}",
                 (">= " if never_failed else "") + f"{mean_capacity(searches):.3g}",
                 f"{min(s.rate for s in searches):.3g}..{max(s.rate for s in searches):.3g}",
                 f"{lo:.3g}..{hi:.3g}{never_failed}", str(len(searches)),
                 str(sum(len(s.probes) for s in searches)), _tpot_at_answer(searches)]
        text.append("| " + " | ".join(cells) + " | "
                    + (_interval(vs(REFERENCE, name), bound_mark(ref, searches))
                       if ref and name != REFERENCE else "- | -")
                    + " |")
    best = best_static(results)
    if ref:
        heads = [f"**{REFERENCE} / {label}: "
                 f"{bound_mark(ref, results[name])}{_headline(vs(REFERENCE, name))}**"
                 + (" *" if vs(REFERENCE, name).significant else "")
                 for label, name in ((f"best static K ({best})", best),
                                     (HIGHLIGHTED, HIGHLIGHTED))
                 if name in results]
        if heads:
            text += ["", " · ".join(heads)]
    rows = [(step, best if name is None else name) for step, name in ABLATION]
    rows = [(step, name) for step, name in rows if name is not None and name in results]
    if len(rows) >= 2 and any(name != REFERENCE and name != best for _, name in rows):
        text += ["", "Ablation: each row adds one SpecServe component to the row above.", "",
                 "| step | config | capacity req/s | gain over the row above | 95% interval |",
                 "|---|---|---|---|---|"]
        previous = None
        for step, name in rows:
            gain = (_interval(vs(name, previous), bound_mark(results[name], results[previous]))
                    if previous else "- | -")
            text.append(f"| {step} | {name} | {mean_capacity(results[name]):.3g} | {gain} |")
            previous = name
    return "\n".join(text) + "\n"


def _tpot_at_answer(searches: Sequence[SloGoodput]) -> str:
    """The clients' median TPOT in the probe at each round's answer, and the engine's own
    prediction for the same requests where it made one (rounds separated by commas)."""
    cells = []
    for s in searches:
        at = [p for p in s.probes if p.rate == s.rate and p.meets]
        if not at or at[0].tpot_p50_s is None:
            continue
        predicted = at[0].predicted_tpot_p50_s
        cells.append(f"{at[0].tpot_p50_s * 1000:.0f}"
                     + (f" ({predicted * 1000:.0f})" if predicted is not None else ""))
    return ", ".join(cells) or "-"


def _headline(r: Ratio) -> str:
    if r.value is None:
        return "-"
    if r.interval is None:
        return f"{r.value:.3f}"
    return f"{r.value:.3f} [{r.interval.lo:.3f}, {r.interval.hi:.3f}]"


def search_json(s: SloGoodput) -> dict:
    return {**asdict(s), "converged": s.converged}


def search_from_json(data: Mapping) -> SloGoodput:
    return SloGoodput(float(data["rate"]), None if data["upper"] is None else float(data["upper"]),
                      tuple(Probe(**p) for p in data["probes"]))


# --- the matrix: which engines run which searches, and how long it takes -----------------------

@dataclass(frozen=True)
class SearchKey:
    workload: str
    arrivals: str
    tpot_slo_ms: float


@dataclass(frozen=True)
class EngineRun:
    """One engine start: a configuration in one round, and every search it runs."""

    config: str
    round: int
    policy_slo_ms: float | None  # the TPOT SLO in its policy file (SLO-bound configs only)
    searches: tuple[SearchKey, ...]


def engine_runs(configs: Sequence[str], slo_bound: Collection[str], *,
                workloads: Sequence[str], arrivals: Sequence[str], slos_ms: Sequence[float],
                rounds: int) -> list[EngineRun]:
    """The matrix as engine starts, one at a time: every configuration runs all its searches
    (each workload x arrivals x SLO) on one engine per round, except that a configuration whose
    policy carries the SLO (`slo_bound`, e.g. adaptive) needs an engine per SLO. Odd rounds run
    the configurations in reverse order, so slow drift of the machine favours none."""
    runs = []
    for rnd in range(rounds):
        for config in configs if rnd % 2 == 0 else list(configs)[::-1]:
            slos: list[float | None] = list(slos_ms) if config in slo_bound else [None]
            for policy_slo in slos:
                keys = tuple(SearchKey(w, a, slo) for w in workloads for a in arrivals
                             for slo in slos_ms if policy_slo in (None, slo))
                runs.append(EngineRun(config, rnd, policy_slo, keys))
    return runs


EXPONENTIAL_PROBES = 3  # typical: the first rate passes, the next passes, the one after fails


def expected_probes(*, growth: float, rel_tol: float, max_probes: int) -> int:
    """Probes a search typically runs: the exponential phase (EXPONENTIAL_PROBES, an assumption:
    more when the start rate is far from the answer) then the bisection, which narrows a
    `growth`-wide bracket to rel_tol in ceil(log2(ln growth / ln(1 + rel_tol))) probes."""
    bisect = math.ceil(math.log2(math.log(growth) / math.log1p(rel_tol))) \
        if growth > 1 + rel_tol else 0
    return min(max_probes, EXPONENTIAL_PROBES + bisect)


def estimate_s(runs: Sequence[EngineRun], *, probes_per_search: float, probe_s: float,
               engine_start_s: float) -> float:
    """Seconds the matrix takes: engine starts plus searches x probes x probe duration."""
    searches = sum(len(r.searches) for r in runs)
    return len(runs) * engine_start_s + searches * probes_per_search * probe_s


@dataclass(frozen=True)
class Found:
    """One search's result in the matrix."""

    key: SearchKey
    config: str
    round: int
    search: SloGoodput


def found_json(f: Found) -> dict:
    return {**asdict(f.key), "config": f.config, "round": f.round, **search_json(f.search)}


def found_from_json(data: Mapping) -> Found:
    return Found(SearchKey(data["workload"], data["arrivals"], float(data["tpot_slo_ms"])),
                 data["config"], int(data["round"]), search_from_json(data))


def matrix_markdown(found: Sequence[Found], *, describe: str, ttft_s: float | None = None,
                    attainment: float = 0.9, replicates: int = DEFAULT_REPLICATES,
                    seed: int = 0) -> str:
    """A `markdown` table per (workload, arrivals, SLO), in the order the searches ran, each
    titled with `describe` (CPU, dtype, mode); configurations in the order they first ran,
    rounds in round order."""
    groups: dict[SearchKey, dict[str, list[tuple[int, SloGoodput]]]] = {}
    for f in found:
        groups.setdefault(f.key, {}).setdefault(f.config, []).append((f.round, f.search))
    parts = []
    for key, by_config in groups.items():
        target = SloTarget(key.tpot_slo_ms / 1000, ttft_s, attainment)
        results = {name: [s for _, s in sorted(runs, key=lambda r: r[0])]
                   for name, runs in by_config.items()}
        parts.append(markdown(results, target, replicates=replicates, seed=seed,
                              title=f"{key.workload}, {key.arrivals} arrivals, "
                                    f"{slo_text(target)} ({describe})"))
    return "\n".join(parts)


def read_results(data: Mapping) -> tuple[dict, list[Found]]:
    """bench/slo_goodput.py's JSON back: its meta and every search. Files written before the
    matrix existed (one SLO, the conversation shape, Poisson arrivals; `results` by
    configuration, a list of rounds) read as that one cell."""
    meta = dict(data["meta"])
    if "searches" in data:
        return meta, [found_from_json(f) for f in data["searches"]]
    slo = meta.get("slo", {})
    meta.setdefault("ttft_slo_s", slo.get("ttft_s"))
    meta.setdefault("attainment", slo.get("attainment", 0.9))
    key = SearchKey("conversation", "poisson", float(slo["tpot_s"]) * 1000)
    return meta, [Found(key, name, rnd, search_from_json(s))
                  for name, searches in data["results"].items()
                  for rnd, s in enumerate(searches)]
