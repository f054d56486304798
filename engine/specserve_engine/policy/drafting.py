"""The adaptive drafter's stop rule: when drafting ends within one step.

The scheduler decides K for the step (`EfficiencyModel.choose_k`); the drafter may still stop
before K, for the whole batch, once one more draft position no longer pays for itself:

- Mode "adaptive": one more position costs one draft step plus B more verify tokens,
      dt = t_draft(B) + t_verify(B * (K + 2) + P) - t_verify(B * (K + 1) + P)
  (P: the step's prefill tokens),
  and gains sum_i c_i,j+1 ~ rate * sum_i c_ij expected tokens (c_ij: request i's probability
  that its first j drafts are all accepted, from the calibrated draft probabilities). It raises
  goodput G only while that gain exceeds G * dt, so drafting stops once
      sum_i c_ij < G * dt / rate,
  or once every request's c_ij is below the policy's confidence floor.
- Mode "threshold" (the confidence-threshold baseline): a request is done at its first draft
  token whose raw probability is below the threshold; drafting stops when all are done.

`DraftStopRule` travels from the scheduler to the worker with each step (it is pickled), and
`DraftProgress` applies it there, one drafted position at a time, on plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from specserve_engine.policy.acceptance import logistic_acceptance
from specserve_engine.policy.goodput import EfficiencyModel, StepPrediction


@dataclass(frozen=True)
class DraftStopRule:
    """When the drafter stops this step."""

    gain_threshold: float  # stop once the batch's summed cumulative acceptance is below this
    floor: float  # ... or once every request's cumulative acceptance is below this
    calibration: tuple[tuple[float, float], ...]  # (slope, intercept) per draft position
    token_floor: float = 0.0  # threshold mode: a request is done at its first raw p below this

    def acceptance(self, position: int, probs: Sequence[float]) -> list[float]:
        """Calibrated acceptance probabilities of draft tokens at `position` (1-based)."""
        slope, intercept = (self.calibration[min(position, len(self.calibration)) - 1]
                            if self.calibration else (1.0, 0.0))
        exp_neg_b = math.exp(-intercept)
        return [logistic_acceptance(q, slope, exp_neg_b) for q in probs]


@dataclass
class DraftProgress:
    """One step's drafting under a `DraftStopRule`: feed each drafted position's probabilities
    (one per request) to `stop_after`, which says whether to stop drafting now."""

    rule: DraftStopRule
    position: int = 0
    cumulative: list[float] = field(default_factory=list)  # c_ij of each request so far
    drafting: list[bool] = field(default_factory=list)  # threshold mode: requests not done

    def stop_after(self, probs: Sequence[float]) -> bool:
        self.position += 1
        rule = self.rule
        if rule.token_floor > 0:
            going = [q >= rule.token_floor for q in probs]
            self.drafting = (going if self.position == 1
                             else [a and b for a, b in zip(self.drafting, going, strict=True)])
            return not any(self.drafting)
        c = rule.acceptance(self.position, probs)
        self.cumulative = (c if self.position == 1
                           else [a * b for a, b in zip(self.cumulative, c, strict=True)])
        return (sum(self.cumulative) < rule.gain_threshold
                or all(x < rule.floor for x in self.cumulative))


def stop_rule(model: EfficiencyModel, prediction: StepPrediction, context_len: float,
              extra_tokens: int = 0) -> DraftStopRule | None:
    """The rule for a step the model predicted as `prediction` (None: draft all K tokens), a
    step that also carries `extra_tokens` prefill tokens (they move the verify cost's knee)."""
    policy = model.policy
    if policy.mode == "threshold" and prediction.k:
        return DraftStopRule(0.0, 0.0, (), token_floor=policy.threshold_probability)
    if policy.mode != "adaptive" or prediction.k <= 1 or not prediction.num_requests:
        return None
    b, k = prediction.num_requests, prediction.k
    timing = model.timing
    dt = (timing.draft_seconds(b, context_len, 1)
          + timing.verify_seconds(b, b * (k + 2) + extra_tokens, context_len)
          - timing.verify_seconds(b, b * (k + 1) + extra_tokens, context_len))
    acceptance = model.acceptance
    rate = max(acceptance.mean_acceptance, 1e-3)
    calibration = tuple((c.slope, c.intercept) for c in acceptance.calibration)
    return DraftStopRule(prediction.goodput * dt / rate, policy.confidence_floor, calibration)
