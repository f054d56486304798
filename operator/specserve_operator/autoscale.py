"""Pure autoscaling: observed load and per-replica capacity at the SLO -> desired replicas.

    capacity  = requests/s one replica serves with TPOT within the SLO: the efficiency model
                (the pushed policy's timing and acceptance) finds the largest batch whose
                predicted TPOT meets `tpot_seconds * tpot_headroom` at the K the engine would
                choose, and its goodput divided by output tokens per request
    corrected = capacity * min(1, attainment / target attainment)   (the model was optimistic
                when requests miss the SLO; never inflated when they meet it)
    raw       = ceil(request rate / (corrected * target_utilization)), within min..max

Stabilisation, as the Kubernetes HPA does it: every raw recommendation is remembered for the
longer of the two windows; scaling up goes to the *lowest* recommendation of the short up window
(so one spike does not add pods, a sustained rise does within `up_window_s`), scaling down goes
only to the *highest* recommendation of the long down window (slow). A step up is at most
`max_up_factor` times the current count. A snapshot without data recommends nothing and the
count stays: missing metrics never scale down.

Zero (`decide_zero`, before the rule above; replicas.min 0 only). At zero there are no engine
metrics at all, so the only signal is the gateway's: requests it holds for the model because
no pod is ready.

    at 0      held (or refused, queue full) requests at a gateway in the window -> 1;
              otherwise stay at 0
    above 0   spec.autoscaling.scaleToZeroAfterSeconds set, and idle for that long -> 0; else
              the capacity rule decides, never below 1

Idle means, on every pass for the whole idle time (`idle_since` is the loop's memory of it),
and over the idle window in Prometheus (which also covers passes the operator missed):
engines scraped with nothing running or waiting and no request finished, and a gateway that
knows the model (its held gauge is there) that held nothing and answered nothing. Without the
gateway's series the deployment never goes to zero: nothing could bring it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from specserve_engine.policy.goodput import EfficiencyModel
from specserve_engine.policy.params import Policy
from specserve_operator.prometheus import SloSnapshot


class AutoscaleConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    target_utilization: float = Field(default=0.8, gt=0, le=1)
    up_window_s: float = Field(default=30.0, ge=0)
    down_window_s: float = Field(default=300.0, ge=0)
    max_up_factor: float = Field(default=2.0, ge=1)
    max_batch: int = Field(default=256, ge=1)
    default_output_tokens: float = Field(default=128.0, gt=0)
    default_prompt_tokens: float = Field(default=512.0, ge=0)
    min_attainment_factor: float = Field(default=0.25, gt=0, le=1)
    # Capacity counts the prefill of the requests a replica admits (they share its decode
    # steps); False prices decode steps only (the model before bench/SIMULATION.md's study 2).
    price_prefill: bool = True


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    time: float
    replicas: int


@dataclass(frozen=True)
class Capacity:
    requests_per_s: float
    tokens_per_s: float
    batch: int
    k: int
    tpot_s: float

    def describe(self) -> str:
        return (f"{self.requests_per_s:.3g} req/s per replica (batch {self.batch}, K={self.k}, "
                f"predicted TPOT {self.tpot_s * 1e3:.1f} ms, {self.tokens_per_s:.0f} tok/s)")


class ScaleDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    current: int
    desired: int
    raw: int | None
    reason: str
    history: list[Recommendation]
    idle_since: float | None = None  # see ZeroDecision

    @property
    def changed(self) -> bool:
        return self.desired != self.current


class ZeroDecision(BaseModel):
    """The zero rule's answer: a count (0 or the wake-up count), or None when the capacity
    rule decides (with a floor of 1); `idle_since` is the memory the next pass gets back."""

    model_config = ConfigDict(frozen=True)

    desired: int | None
    reason: str
    idle_since: float | None = None


def gateway_demand(snapshot: SloSnapshot) -> float | None:
    """Requests the gateways held for the model in the window (the peak held at once, or the
    holds that ended, whichever is more); None when no scraped gateway knows the model."""
    if snapshot.gateway_held is None and snapshot.gateway_holds is None:
        return None
    return max(snapshot.gateway_held or 0.0, snapshot.gateway_holds or 0.0)


def _busy(snapshot: SloSnapshot) -> list[str]:
    """What says the model is in use (empty: idle), given engine and gateway data."""
    s = snapshot
    signals = [("requests/s finished", s.request_rate), ("running", s.running),
               ("waiting", s.waiting), ("finished over the idle window", s.engine_requests_idle),
               ("at the gateway over the idle window", s.gateway_requests_idle),
               ("held at the gateway", gateway_demand(s))]
    return [f"{v:.3g} {what}" for what, v in signals if v is not None and v > 0]


def decide_zero(
    snapshot: SloSnapshot,
    current: int,
    min_replicas: int,
    max_replicas: int,
    after_s: float | None,
    idle_since: float | None,
    now: float,
    model: str,
) -> ZeroDecision:
    """Scale from zero on held requests; scale to zero after `after_s` idle (module doc)."""
    if current == 0:
        demand = gateway_demand(snapshot)
        wake = min(max(1, min_replicas), max_replicas)
        if demand is None:
            return ZeroDecision(desired=0, reason=(
                f"at zero: no gateway series for model {model!r} in Prometheus, so no demand "
                "can be seen (the gateway's /metrics must be scraped): stay at 0"))
        if demand > 0:
            return ZeroDecision(desired=wake, reason=(
                f"at zero: {demand:.3g} requests held at the gateway for model {model!r}: "
                f"0 -> {wake}"))
        return ZeroDecision(desired=0, reason=f"at zero: no request held for model {model!r}")
    if after_s is None or min_replicas > 0:
        return ZeroDecision(desired=None, reason="")
    if not snapshot.has_data:
        return ZeroDecision(desired=None, reason="scale to zero: not without engine data")
    if snapshot.gateway_held is None:
        return ZeroDecision(desired=None, reason=(
            f"scale to zero: never without the gateway's series for model {model!r} (nothing "
            "could scale it back)"))
    if snapshot.engine_requests_idle is None:
        return ZeroDecision(desired=None,
                            reason="scale to zero: no engine request count over the idle window")
    busy = _busy(snapshot)
    if busy:
        return ZeroDecision(desired=None, reason="scale to zero: in use (" + ", ".join(busy) + ")")
    since = now if idle_since is None else min(idle_since, now)
    idle_for = now - since
    if idle_for >= after_s:
        return ZeroDecision(desired=0, idle_since=since, reason=(
            f"idle for {idle_for:.0f}s >= {after_s:.0f}s (no request for model {model!r} at the "
            f"engines or the gateway): {current} -> 0"))
    return ZeroDecision(desired=None, idle_since=since,
                        reason=f"scale to zero: idle for {idle_for:.0f}s of {after_s:.0f}s")


def capacity_per_replica(
    policy: Policy,
    acceptance: float | None,
    output_tokens: float,
    context_len: float,
    max_batch: int = 256,
    prompt_tokens: float = 0.0,
) -> Capacity:
    """Requests/s one replica sustains with predicted TPOT within the policy's TPOT limit.

    Batch sizes are searched by doubling then bisection (predicted TPOT grows with the batch).
    When even batch 1 misses the limit, the batch-1 numbers are returned (the SLO cannot be met
    by adding replicas alone; attainment correction and max replicas bound what happens next).

    Prefill shares the decode steps (chunked prefill): in steady state each step finishes
    expected_tokens / output_tokens requests and admits as many, so it also carries
    prompt_tokens x expected_tokens / output_tokens prefill tokens. They are priced into every
    step (`choose_k`'s extra tokens), found by two fixed-point passes (the K chosen moves the
    expected tokens a little). `prompt_tokens` 0 prices decode only, as before.
    """
    model = EfficiencyModel(policy)
    a = acceptance if acceptance is not None else policy.model.prior_acceptance
    a = min(max(a, 0.0), 0.999)
    k_max = max(policy.k_max, 0)
    row = [a ** (j + 1) for j in range(k_max)]
    limit = policy.tpot_limit_seconds

    def at(b: int) -> tuple[bool, Capacity]:
        rows = [row] * b
        p = model.choose_k(rows, context_len)
        if prompt_tokens > 0:
            for _ in range(2):
                extra = round(prompt_tokens * p.expected_tokens / max(output_tokens, 1.0))
                p = model.choose_k(rows, context_len, extra_tokens=extra)
        ok = limit is None or p.tpot_seconds <= limit
        cap = Capacity(p.goodput / max(output_tokens, 1.0), p.goodput, b, p.k, p.tpot_seconds)
        return ok, cap

    ok, best = at(1)
    if not ok:
        return best
    lo, hi = 1, 2
    while hi <= max_batch:
        ok, cap = at(hi)
        if not ok:
            break
        lo, best = hi, cap
        hi *= 2
    hi = min(hi, max_batch + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok, cap = at(mid)
        if ok:
            lo, best = mid, cap
        else:
            hi = mid
    return best


def decide(
    snapshot: SloSnapshot,
    current: int,
    min_replicas: int,
    max_replicas: int,
    capacity: Capacity,
    target_attainment: float,
    history: list[Recommendation],
    now: float,
    config: AutoscaleConfig | None = None,
) -> ScaleDecision:
    c = config or AutoscaleConfig()
    bounded = min(max(current, min_replicas), max_replicas)
    if not snapshot.has_data or snapshot.request_rate is None:
        why = "; ".join(snapshot.reasons) or snapshot.state
        return ScaleDecision(
            current=current, desired=bounded, raw=None, history=history,
            reason=f"no data ({why}): holding {bounded} replicas"
            + ("" if bounded == current else f" (bounds {min_replicas}..{max_replicas})"))

    cap = capacity.requests_per_s
    notes = [f"load {snapshot.request_rate:.3g} req/s", f"capacity {capacity.describe()}"]
    att = snapshot.attainment
    if att is not None and att < target_attainment:
        factor = max(c.min_attainment_factor, att / target_attainment)
        cap *= factor
        notes.append(f"attainment {att:.1%} < {target_attainment:.0%}: capacity x{factor:.2f}")
    elif att is not None:
        notes.append(f"attainment {att:.1%} >= {target_attainment:.0%}")
    need = snapshot.request_rate / max(cap * c.target_utilization, 1e-9)
    raw = min(max(math.ceil(need - 1e-9), min_replicas), max_replicas)
    notes.append(f"raw {raw} (at {c.target_utilization:.0%} utilisation)")

    keep = max(c.up_window_s, c.down_window_s)
    hist = [r for r in history if now - r.time < keep]
    if not hist and raw < bounded:
        # No memory (first pass, operator restart): the current count counts as recommended
        # now, so scaling down still waits a whole down window.
        hist = [Recommendation(time=now, replicas=bounded)]
    hist.append(Recommendation(time=now, replicas=raw))
    if raw > bounded:
        up = min(r.replicas for r in hist if now - r.time <= c.up_window_s)
        desired = max(bounded, min(up, math.ceil(bounded * c.max_up_factor) or 1))
        notes.append(f"scale up to the lowest recommendation of the last {c.up_window_s:.0f}s "
                     f"({up})")
    elif raw < bounded:
        down = max(r.replicas for r in hist if now - r.time <= c.down_window_s)
        desired = min(bounded, down)
        notes.append(f"scale down only to the highest recommendation of the last "
                     f"{c.down_window_s:.0f}s ({down})")
    else:
        desired = bounded
    desired = min(max(desired, min_replicas), max_replicas)
    notes.append(f"{current} -> {desired}" if desired != current else f"stay at {current}")
    return ScaleDecision(current=current, desired=desired, raw=raw, history=hist,
                         reason="; ".join(notes))
