"""The simulation studies of bench/SIMULATION.md: configurations, and autoscalers, on the GPU model.

Ground truth: step times from the published GPU model (`hardware.HardwareModel`: SpecDecode-
Bench's Llama-3.1-8B/H100 fit), acceptance from verification records of this machine's tiny
models (`--verifications`: the lead's `bench/results/sim-groundtruth/verifications.jsonl`), or,
until those exist, synthetic records (`synthetic_verifications`: draft probabilities ~ Beta(5, 2),
each token accepted with its probability, so a well-calibrated draft accepting about 0.7 per
token). The policy inside each replica starts from a profile of the GPU model taken as
`specserve profile` would (`gpu_profile`: the step times of a grid of batch x tokens x
context), then learns online from the simulated steps.

Load (`shape_load`): the trace's own arrival rate swings about 2.6x over its hour (3.2 to 8.4
req/s per minute). A study that wants a fleet needing `low`..`high` replicas maps the trace's
smoothed rate affinely onto [low, high] x the capacity per replica and realises it by giving
each trace request a seeded number of copies (its lengths kept, copies spread over the gap to
the next arrival), so the shape of the day is the trace's, only deeper.

Time (`TimeScale`): `compress` divides the trace's arrival times, and every control timescale
(loop intervals, query and stabilisation windows, cooldowns, cold start) by the same factor,
which keeps how fast the load moves relative to how fast each controller reacts; engine steps
are not scaled (they are what the GPU does).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from specserve_engine.policy.params import Policy, SloTargets
from specserve_engine.policy.profile import Profile, ProfilePoint
from specserve_operator.autoscale import AutoscaleConfig
from specserve_operator.config import LoopConfig
from specserve_operator.spec import SpecServeDeploymentSpec
from specserve_operator.tuning import TuningConfig
from specserve_sim.baselines import (
    DynamoPlanner,
    FixedReplicas,
    HpaConfig,
    HpaInflight,
    static_k_profile,
    throughput_at_itl,
)
from specserve_sim.cluster import Cluster
from specserve_sim.control import SpecServeController
from specserve_sim.groundtruth import GroundTruth, VerificationSampler
from specserve_sim.hardware import HardwareModel
from specserve_sim.interface import Controller, SimRequest, SimResult
from specserve_sim.replica import ReplicaConfig

K_MAX = 5
STATIC_KS = (1, 2, 3, 5)
# The bench's Dynamic-SD table (trace_replay/runner.py DYNAMIC_SD_TABLE), as (first, last, K).
DYNAMIC_SD: tuple[tuple[int, int, int], ...] = (
    (1, 2, 5), (3, 8, 3), (9, 16, 2), (17, 32, 1), (33, 1024, 0))


# ------------------------------------------------------------------ ground truth and profile


def synthetic_verifications(n: int = 4000, k: int = K_MAX, seed: int = 0) -> VerificationSampler:
    """Stand-in verification records (module doc): probs ~ Beta(5, 2), acceptance by them."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        probs = [min(0.99, max(0.02, rng.betavariate(5.0, 2.0))) for _ in range(k)]
        accepted = 0
        while accepted < k and rng.random() < probs[accepted]:
            accepted += 1
        records.append((probs, k, accepted, f"s{i // 20}"))  # 20 verifications per request
    return VerificationSampler(records, source=f"synthetic Beta(5,2), seed {seed}")


def ground_truth(verifications: Path | None, hardware: HardwareModel | None = None
                 ) -> GroundTruth:
    hw = hardware or HardwareModel()
    if verifications is not None and verifications.exists():
        sampler = VerificationSampler.from_jsonl(verifications)
    else:
        sampler = synthetic_verifications()
    return GroundTruth(hw, sampler, description=f"{hw.name}; acceptance: {sampler.source}")


def gpu_profile(hw: HardwareModel, batches: Sequence[int] = (1, 4, 16, 64, 256, 512),
                ks: Sequence[int] = (0, 1, 3, 5), contexts: Sequence[float] = (256, 1024, 4096)
                ) -> Profile:
    """What `specserve profile` would measure on the GPU: the target step (its host share
    included: the profiler times the whole engine step) and the draft's forward."""
    points = []
    for b in batches:
        for ctx in contexts:
            for k in ks:
                n = b * (k + 1)
                secs = hw.step_seconds("target", b, n, ctx) + hw.step_seconds("host", b, n, ctx)
                points.append(ProfilePoint(role="target", num_requests=b, num_tokens=n,
                                           context_len=ctx, seconds=secs))
            points.append(ProfilePoint(role="draft", num_requests=b, num_tokens=b,
                                       context_len=ctx,
                                       seconds=hw.step_seconds("draft", b, b, ctx)))
    return Profile(target_model="llama-3.1-8b", draft_model="llama-3.2-1b", device=hw.name,
                   points=points)


def step_seconds_fn(hw: HardwareModel) -> Callable[[int, int, float], float]:
    """One static-K decode step of `b` requests on the GPU model (target + K drafts + host)."""
    def step(b: int, k: int, ctx: float) -> float:
        n = b * (k + 1)
        return (hw.step_seconds("target", b, n, ctx) + k * hw.step_seconds("draft", b, b, ctx)
                + hw.step_seconds("host", b, n, ctx))
    return step


# ------------------------------------------------------------------ configurations


def bench_configs(slo: SloTargets, profile: Profile) -> list[ReplicaConfig]:
    """The bench's configurations (docs/architecture.md, "Benchmark baselines") as simulated
    replicas, GPU defaults."""
    base = Policy(slo=slo, k_max=K_MAX)
    out = [ReplicaConfig(name="off", policy=base.model_copy(update={"mode": "off"}),
                         engine_k_max=0, specserve=False)]
    out += [ReplicaConfig(name=f"K={k}", policy=base, engine_k_max=k, specserve=False)
            for k in STATIC_KS]
    out += [
        ReplicaConfig(name="dynamic-sd", policy=base, engine_k_max=K_MAX, specserve=False,
                      k_table=DYNAMIC_SD),
        ReplicaConfig(name="threshold-0.6", policy=base.model_copy(update={"mode": "threshold"}),
                      engine_k_max=K_MAX, profile=profile),
        ReplicaConfig(name="adaptive", policy=base, engine_k_max=K_MAX, profile=profile),
    ]
    return [c.with_gpu_defaults() for c in out]


# ------------------------------------------------------------------ load


def smoothed_rate(arrivals: Sequence[float], at: float, half_width_s: float) -> float:
    """Arrivals per second within `half_width_s` of `at` (arrivals sorted)."""
    import bisect
    lo = bisect.bisect_left(arrivals, at - half_width_s)
    hi = bisect.bisect_right(arrivals, at + half_width_s)
    span = min(at + half_width_s, arrivals[-1]) - max(at - half_width_s, arrivals[0])
    return (hi - lo) / max(span, 1e-9)


def shape_load(requests: Sequence[SimRequest], low_rate: float, high_rate: float,
               smooth_s: float = 150.0, seed: int = 0) -> list[SimRequest]:
    """The trace with its smoothed rate mapped affinely onto [low_rate, high_rate] (module doc).

    Each request gets m copies in expectation, m = target rate / trace rate at its arrival
    (floor, plus one more with the fractional part's probability)."""
    arrivals = [r.arrival for r in requests]
    rates = [smoothed_rate(arrivals, a, smooth_s) for a in arrivals]
    lo, hi = min(rates), max(rates)
    rng = random.Random(seed)
    out: list[SimRequest] = []
    for i, (r, rate) in enumerate(zip(requests, rates, strict=True)):
        frac = (rate - lo) / (hi - lo) if hi > lo else 1.0
        want = low_rate + frac * (high_rate - low_rate)
        m = want / max(rate, 1e-9)
        copies = int(m) + (1 if rng.random() < m - int(m) else 0)
        gap = (arrivals[i + 1] - r.arrival) if i + 1 < len(arrivals) else 1.0 / max(rate, 1e-9)
        for j in range(copies):
            at = r.arrival + (gap * j / copies if j else 0.0)
            out.append(SimRequest(f"{r.request_id}.{j}", at, r.prompt_tokens, r.output_tokens))
    out.sort(key=lambda q: q.arrival)
    return out


def rate_series(requests: Sequence[SimRequest], bin_s: float) -> list[tuple[float, float]]:
    """(bin end, arrivals per second) over the run."""
    if not requests:
        return []
    end = requests[-1].arrival
    counts = [0] * (int(end // bin_s) + 1)
    for r in requests:
        counts[int(r.arrival // bin_s)] += 1
    return [((i + 1) * bin_s, c / bin_s) for i, c in enumerate(counts)]


# ------------------------------------------------------------------ metrics


@dataclass(frozen=True)
class RunSummary:
    name: str
    requests: int
    finished: int
    ttft_attainment: float
    tpot_attainment: float
    attainment: float  # both targets
    ttft_p90_s: float | None
    tpot_p90_s: float | None
    replica_seconds: float
    scaling_events: int
    mean_k: float | None
    goodput_tok_s: float


def _p(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summarise(name: str, result: SimResult, tpot_s: float, ttft_s: float) -> RunSummary:
    """Attainment over every request of the run: one that never finished misses both."""
    reqs = result.requests
    n = max(len(reqs), 1)
    ttft_ok = [r.ttft is not None and r.ttft <= ttft_s for r in reqs]
    tpot_ok = [r.finish is not None and (r.tpot is None or r.tpot <= tpot_s) for r in reqs]
    done = [r for r in reqs if r.finish is not None]
    steps = result.steps
    request_steps = sum(s.batch for s in steps)
    span = max(result.end_time, 1e-9)
    return RunSummary(
        name=name, requests=len(reqs), finished=len(done),
        ttft_attainment=sum(ttft_ok) / n, tpot_attainment=sum(tpot_ok) / n,
        attainment=sum(a and b for a, b in zip(ttft_ok, tpot_ok, strict=True)) / n,
        ttft_p90_s=_p([r.ttft for r in done if r.ttft is not None], 0.9),
        tpot_p90_s=_p([r.tpot for r in done if r.tpot is not None], 0.9),
        replica_seconds=result.replica_seconds, scaling_events=len(result.scaling),
        mean_k=sum(s.drafted for s in steps) / request_steps if request_steps else None,
        goodput_tok_s=sum(r.output_tokens for r in done) / span)


def table(rows: Sequence[RunSummary], target: float) -> str:
    """Markdown: one row per run; `meets` = both-target attainment >= target."""
    head = ("| run | requests | TTFT att. | TPOT att. | both | meets | TTFT p90 s | TPOT p90 ms "
            "| replica-s | scaling events | mean K | goodput tok/s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)
    lines = [
        f"| {r.name} | {r.requests} | {r.ttft_attainment:.1%} | {r.tpot_attainment:.1%} | "
        f"{r.attainment:.1%} | {'yes' if r.attainment >= target else 'no'} | "
        f"{f(r.ttft_p90_s, '.2f')} | "
        f"{f(None if r.tpot_p90_s is None else r.tpot_p90_s * 1e3, '.1f')}"
        f" | {r.replica_seconds:.0f} | {r.scaling_events} | {f(r.mean_k, '.2f')} | "
        f"{r.goodput_tok_s:.0f} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def saving(rows: Sequence[RunSummary], ours: str, target: float) -> tuple[str | None, float | None]:
    """(best baseline meeting the target, fraction of its replica-seconds `ours` saves);
    None when no baseline meets it (or `ours` does not)."""
    mine = next(r for r in rows if r.name == ours)
    others = [r for r in rows if r.name != ours and not r.name.startswith("specserve")
              and r.attainment >= target]
    if not others or mine.attainment < target:
        return (min(others, key=lambda r: r.replica_seconds).name if others else None), None
    best = min(others, key=lambda r: r.replica_seconds)
    return best.name, 1.0 - mine.replica_seconds / best.replica_seconds


# ------------------------------------------------------------------ study setup


@dataclass(frozen=True)
class TimeScale:
    compress: float = 1.0

    def s(self, seconds: float) -> float:
        return seconds / self.compress

    def window(self, seconds: float) -> str:
        return f"{self.s(seconds):.6g}s"


def operator_loop(ts: TimeScale, price_prefill: bool = True) -> LoopConfig:
    """The operator's defaults (30 s loop, 2m window, tuning and autoscale windows), scaled;
    `price_prefill` False is the autoscaler's decode-only capacity (before)."""
    tuning, auto = TuningConfig(), AutoscaleConfig()
    return LoopConfig(
        window=ts.window(120.0),
        tuning=tuning.model_copy(update={"cooldown_s": ts.s(60.0)}),
        autoscale=auto.model_copy(update={"up_window_s": ts.s(auto.up_window_s),
                                          "down_window_s": ts.s(auto.down_window_s),
                                          "price_prefill": price_prefill}))


def deployment_spec(tpot_ms: int, ttft_ms: int, attainment: float, lo: int, hi: int,
                    initial: int) -> SpecServeDeploymentSpec:
    return SpecServeDeploymentSpec.model_validate({
        "model": {"target": "meta-llama/Llama-3.1-8B-Instruct",
                  "draft": "meta-llama/Llama-3.2-1B-Instruct"},
        "speculation": {"mode": "adaptive", "kMax": K_MAX},
        "slo": {"tpotP90Ms": tpot_ms, "ttftP90Ms": ttft_ms, "ttftP99Ms": max(ttft_ms, 5000),
                "attainment": attainment},
        "replicas": {"min": lo, "max": hi, "initial": initial},
        "autoscaling": {"mode": "builtin"},
    })


def capacity_req_s(hw: HardwareModel, k: int, acceptance: float, tpot_s: float,
                   context: float, output_tokens: float) -> float:
    """Requests/s one replica serves at static K with mean ITL within `tpot_s` (the profile a
    platform team would measure before deploying)."""
    prof = static_k_profile(step_seconds_fn(hw), k, acceptance, context,
                            [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024])
    return throughput_at_itl(prof, tpot_s) / output_tokens


@dataclass(frozen=True)
class AutoscaleStudy:
    """Controllers compared in study 2, on the same requests and ground truth."""

    requests: list[SimRequest]
    config: ReplicaConfig
    truth: GroundTruth
    spec: SpecServeDeploymentSpec
    ts: TimeScale
    cold_start_s: float
    hw: HardwareModel
    acceptance: float
    context: float
    output_tokens: float
    static_k: int = 3

    def controllers(self, peak: int) -> dict[str, Callable[[], Controller]]:
        ts, spec = self.ts, self.spec
        lo, hi = spec.replicas.min, spec.replicas.max
        tpot_s = spec.slo.tpot_p90_ms / 1e3
        prof = static_k_profile(step_seconds_fn(self.hw), self.static_k, self.acceptance,
                                self.context, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
        # HPA target: the concurrency at which the static-K profile's ITL meets the SLO
        # (what a platform team would set from the same pre-deployment profile).
        ok = [p for p in prof if p.itl_s <= tpot_s]
        per_pod = float(max(p.batch for p in ok)) if ok else 1.0
        loop, decode_only = operator_loop(ts), operator_loop(ts, price_prefill=False)
        return {
            f"fixed peak ({peak})": lambda: FixedReplicas(peak, interval_s=ts.s(30.0)),
            f"hpa in-flight ({per_pod:.0f}/pod)": lambda: HpaInflight(
                HpaConfig(target_per_pod=per_pod, min_replicas=lo, max_replicas=hi,
                          down_window_s=ts.s(300.0)), interval_s=ts.s(15.0)),
            f"dynamo planner (K={self.static_k})": lambda: DynamoPlanner(
                prof, tpot_s, min_replicas=lo, max_replicas=hi, interval_s=ts.s(60.0)),
            "specserve (before: ConfigMap capacity, decode only)": lambda: SpecServeController(
                spec, loop=decode_only, interval_s=ts.s(30.0), capacity_from_pods=False),
            "specserve (pods' capacity, decode only)": lambda: SpecServeController(
                spec, loop=decode_only, interval_s=ts.s(30.0)),
            "specserve joint": lambda: SpecServeController(
                spec, loop=loop, interval_s=ts.s(30.0)),
        }

    def run(self, controller: Controller, initial: int, seed: int = 0) -> SimResult:
        return Cluster(self.requests, self.config, self.truth, initial_replicas=initial,
                       controller=controller, cold_start_s=self.ts.s(self.cold_start_s),
                       seed=seed, keep_steps=True).run()


def at_rate(requests: Sequence[SimRequest], rate: float, count: int) -> list[SimRequest]:
    """The first `count` requests with their arrival pattern scaled to `rate` req/s."""
    head = list(requests[:count])
    span = head[-1].arrival - head[0].arrival if len(head) > 1 else 0.0
    scale = (len(head) - 1) / (rate * span) if span > 0 else 0.0
    t0 = head[0].arrival
    return [replace(r, arrival=(r.arrival - t0) * scale) for r in head]


def simulated_capacity_req_s(
    requests: Sequence[SimRequest], config: ReplicaConfig, truth: GroundTruth, *,
    tpot_s: float, ttft_s: float, attainment: float, count: int = 400, lo: float = 0.25,
    hi: float = 256.0, probes: int = 9, seed: int = 0,
) -> float:
    """Requests/s one replica serves with `attainment` of requests within both SLOs: SLO
    goodput (DistServe's definition) of one simulated replica, by bisection on a log scale
    over the trace's first `count` requests at scaled rates. Sizes the studies' load by what a
    replica really does, prefills included; a decode-only profile (`capacity_req_s`)
    overestimates it when prompts are long."""

    def meets(rate: float) -> bool:
        result = Cluster(at_rate(requests, rate, count), config, truth, initial_replicas=1,
                         controller=None, seed=seed).run()
        return summarise("probe", result, tpot_s, ttft_s).attainment >= attainment

    if not meets(lo):
        return lo
    for _ in range(probes):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def with_slo(config: ReplicaConfig, slo: SloTargets) -> ReplicaConfig:
    return replace(config, policy=config.policy.model_copy(update={"slo": slo}))


def needed_replicas(rate: float, capacity: float) -> int:
    return max(1, math.ceil(rate / capacity - 1e-9))
