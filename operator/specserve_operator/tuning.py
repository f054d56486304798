"""Pure tuning: an `SloSnapshot` and the current `Policy` -> the next `Policy` (or the same one).

Two loops, both slow and damped on purpose (the engines already adapt K every step; this loop
only moves the ground they stand on):

1. Timing refit. The engines export the step time they predicted and the one they observed
   (`specserve_step_time_{predicted,observed}_seconds`, whole engine cycles). When the mean
   observed time is off the mean predicted one by more than `refit_tolerance`, every timing
   coefficient of target, draft and host is scaled by the ratio, damped
   (`ratio ** refit_damping`) and clamped to `refit_max_ratio` per change, so one noisy window
   cannot swing the model. What is scaled is the model the pods run
   (`measured`: their profile plus online fits, read from a pod), else the last refitted one;
   never the built-in defaults, which would throw away the pods' profile. New or restarted pods
   start with the refitted model (it is written to the ConfigMap).
2. TPOT knobs. TPOT p90 above the target for `over_patience` snapshots in a row tightens the
   constraint the engines plan against: first `tpot_headroom` (the fraction of the TPOT SLO a
   step may use) goes down by `headroom_step` to `headroom_min`, then `confidence_floor` goes up
   by `floor_step` to `floor_max` (fewer long-shot drafts verified). TPOT p90 below
   `relax_below * target` for `under_patience` snapshots relaxes in the reverse order. Between
   the two bands nothing moves (a dead band) and the counters reset, so a TPOT that hovers
   around the target, or alternates, never changes the policy.

`k_max`, `static_k`, `mode` and the SLO itself belong to the spec (see manifests.merge_policy)
and are never changed here. Every change bumps `version` by one. A snapshot without data changes
nothing: the last good policy stays.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, ConfigDict, Field

from specserve_engine.policy.params import ModelParams, Policy, TimingCoefficients
from specserve_operator.prometheus import SloSnapshot

_SCALED = ("overhead_s", "per_token_s", "per_kv_token_s", "per_request_s")


class TuningConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    over_patience: int = Field(default=2, ge=1)
    under_patience: int = Field(default=3, ge=1)
    relax_below: float = Field(default=0.7, gt=0, lt=1)
    headroom_step: float = Field(default=0.1, gt=0)
    headroom_min: float = Field(default=0.5, gt=0, le=1)
    headroom_max: float = Field(default=0.9, gt=0, le=1)
    floor_step: float = Field(default=0.1, gt=0)
    floor_max: float = Field(default=0.5, ge=0, lt=1)
    cooldown_s: float = Field(default=60.0, ge=0, description="least seconds between changes")
    refit_tolerance: float = Field(default=0.15, ge=0)
    refit_damping: float = Field(default=0.5, gt=0, le=1)
    refit_max_ratio: float = Field(default=2.0, gt=1)
    min_steps: int = Field(default=50, ge=1, description="steps in the window needed to refit")


class TuningState(BaseModel):
    """Hysteresis memory, kept in .status between iterations."""

    model_config = ConfigDict(frozen=True)

    over: int = 0
    under: int = 0
    last_change: float | None = None


class TuningDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    policy: Policy
    state: TuningState
    changed: bool
    reasons: list[str]

    @property
    def summary(self) -> str:
        head = f"v{self.policy.version}" + (" (changed)" if self.changed else " (kept)")
        return head + ": " + "; ".join(self.reasons)


def duration_seconds(text: str) -> float:
    """'30s' / '2m' / '500ms' / '1h' -> seconds."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 2m)")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def scale_timing(c: TimingCoefficients, factor: float) -> TimingCoefficients:
    """Every predicted step time x `factor`: the linear coefficients scale, the knee and the
    multiplicative `token_correction` (the kernels' shape over token counts) stay as fitted."""
    return c.model_copy(update={f: getattr(c, f) * factor for f in _SCALED})


def refit_factor(snapshot: SloSnapshot, config: TuningConfig) -> tuple[float | None, str]:
    """The damped factor to scale timing coefficients by (None: no refit) and why."""
    obs, pred, rate = (snapshot.step_observed_mean_s, snapshot.step_predicted_mean_s,
                       snapshot.step_rate)
    if obs is None or pred is None or pred <= 0 or obs <= 0:
        return None, "timing: no predicted/observed step times"
    steps = (rate or 0.0) * duration_seconds(snapshot.window)
    if steps < config.min_steps:
        return None, f"timing: {steps:.0f} steps in window < {config.min_steps}, no refit"
    ratio = obs / pred
    words = f"observed {obs * 1e3:.2f} ms vs predicted {pred * 1e3:.2f} ms (x{ratio:.3f})"
    if abs(math.log(ratio)) <= math.log1p(config.refit_tolerance):
        return None, f"timing: {words}, within {config.refit_tolerance:.0%}"
    clamped = min(max(ratio, 1 / config.refit_max_ratio), config.refit_max_ratio)
    factor = clamped ** config.refit_damping
    return factor, f"timing: {words}, coefficients x{factor:.3f}"


def _tighten(p: Policy, c: TuningConfig) -> tuple[Policy, str | None]:
    if p.tpot_headroom > c.headroom_min + 1e-9:
        h = round(max(c.headroom_min, p.tpot_headroom - c.headroom_step), 4)
        return p.model_copy(update={"tpot_headroom": h}), f"tpot_headroom {p.tpot_headroom} -> {h}"
    if p.confidence_floor < c.floor_max - 1e-9:
        f = round(min(c.floor_max, p.confidence_floor + c.floor_step), 4)
        return (p.model_copy(update={"confidence_floor": f}),
                f"confidence_floor {p.confidence_floor} -> {f}")
    return p, None


def _relax(p: Policy, c: TuningConfig) -> tuple[Policy, str | None]:
    if p.confidence_floor > 1e-9:
        f = round(max(0.0, p.confidence_floor - c.floor_step), 4)
        return (p.model_copy(update={"confidence_floor": f}),
                f"confidence_floor {p.confidence_floor} -> {f}")
    if p.tpot_headroom < c.headroom_max - 1e-9:
        h = round(min(c.headroom_max, p.tpot_headroom + c.headroom_step), 4)
        return p.model_copy(update={"tpot_headroom": h}), f"tpot_headroom {p.tpot_headroom} -> {h}"
    return p, None


def decide(
    snapshot: SloSnapshot,
    policy: Policy,
    state: TuningState,
    now: float,
    config: TuningConfig | None = None,
    measured: ModelParams | None = None,
) -> TuningDecision:
    """The next policy. Unchanged (same version) unless the snapshot has data and a rule fires.

    `measured`: the efficiency-model parameters a pod reports (GET /specserve/policy, "fitted").
    """
    c = config or TuningConfig()
    if not snapshot.has_data:
        why = "; ".join(snapshot.reasons) or snapshot.state
        return TuningDecision(policy=policy, state=state, changed=False,
                              reasons=[f"no data ({why}): policy kept"])
    reasons: list[str] = []
    new = policy
    cooling = state.last_change is not None and now - state.last_change < c.cooldown_s

    # 1. timing refit
    factor, why = refit_factor(snapshot, c)
    base = measured or (new.model if new.model.source else None)
    if factor is not None and cooling:
        why += " (deferred: cooldown)"
        factor = None
    elif factor is not None and base is None:
        why += " (no model measured by the pods yet: not refitted)"
        factor = None
    reasons.append(why)
    if factor is not None and base is not None:
        model: ModelParams = base.model_copy(update={
            "target": scale_timing(base.target, factor),
            "draft": scale_timing(base.draft, factor),
            "host": scale_timing(base.host, factor),
            "source": f"operator refit x{factor:.3f} at {now:.0f}",
        })
        new = new.model_copy(update={"model": model})

    # 2. TPOT knobs (adaptive mode with a TPOT target only)
    over, under = state.over, state.under
    target, p90 = policy.slo.tpot_seconds, snapshot.tpot_p90_s
    if policy.mode != "adaptive" or target is None:
        reasons.append(f"tpot: mode {policy.mode}, no knobs to tune")
    elif p90 is None:
        reasons.append("tpot: no requests in window, knobs kept")
    else:
        words = f"p90 {p90 * 1e3:.1f} ms vs target {target * 1e3:.0f} ms"
        if p90 > target:
            over, under = over + 1, 0
            band = f"over target ({over}/{c.over_patience})"
        elif p90 < c.relax_below * target:
            over, under = 0, under + 1
            band = f"well inside ({under}/{c.under_patience})"
        else:
            over = under = 0
            band = "in dead band"
        move: str | None = None
        if over >= c.over_patience or under >= c.under_patience:
            if cooling:
                band += ", deferred: cooldown"
            elif over >= c.over_patience:
                new, move = _tighten(new, c)
                over = 0
                band += ", tighten: " + (move or "already at the tightest (scale out instead)")
            else:
                new, move = _relax(new, c)
                under = 0
                band += ", relax: " + (move or "already relaxed fully")
        reasons.append(f"tpot: {words}, {band}")

    changed = new != policy
    if changed:
        new = new.model_copy(update={"version": policy.version + 1})
    # Policy(**) revalidates (model_copy does not): a tuned policy must still be one the
    # engines accept.
    new = Policy.model_validate(new.model_dump())
    return TuningDecision(
        policy=new,
        state=TuningState(over=over, under=under,
                          last_change=now if changed else state.last_change),
        changed=changed,
        reasons=reasons,
    )
