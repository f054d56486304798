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

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def capacity_per_replica(
    policy: Policy,
    acceptance: float | None,
    output_tokens: float,
    context_len: float,
    max_batch: int = 256,
) -> Capacity:
    """Requests/s one replica sustains with predicted TPOT within the policy's TPOT limit.

    Batch sizes are searched by doubling then bisection (predicted TPOT grows with the batch).
    When even batch 1 misses the limit, the batch-1 numbers are returned (the SLO cannot be met
    by adding replicas alone; attainment correction and max replicas bound what happens next).
    """
    model = EfficiencyModel(policy)
    a = acceptance if acceptance is not None else policy.model.prior_acceptance
    a = min(max(a, 0.0), 0.999)
    k_max = max(policy.k_max, 0)
    row = [a ** (j + 1) for j in range(k_max)]
    limit = policy.tpot_limit_seconds

    def at(b: int) -> tuple[bool, Capacity]:
        p = model.choose_k([row] * b, context_len)
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
