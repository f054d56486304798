"""How an engine drives the policy step by step: shared by the vLLM scheduler and the simulator.

Pure pieces of `AdaptiveScheduler` (vllm/scheduler.py) that a simulated engine must repeat
exactly, so the two cannot drift apart:

- `fold_profile`: the start-up policy with a measured profile's step times and calibration;
- `verify_lengths`: how many of each request's drafts are verified (the trim of the step);
- `step_observations`: what one measured step teaches the step-time model;
- `refit_due` / `refit_models`: the refit schedule and what a refit does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from specserve_engine.policy.goodput import EfficiencyModel, lengths_above_threshold
from specserve_engine.policy.params import Policy
from specserve_engine.policy.profile import Profile
from specserve_engine.policy.timing import StepObservation, StepTimeModel

REFIT_EVERY_STEPS = 200
# Refit early and often at first (the calibration starts as the identity, and raw draft
# confidences are biased), then every REFIT_EVERY_STEPS steps.
EARLY_REFITS = (25, 50, 100)


def fold_profile(policy: Policy, profile: Profile, source: str) -> Policy:
    """`policy` with the profile's fitted step times and acceptance calibration as its model.
    An operator-pushed model (one with a source) wins: `policy` is returned as is."""
    if policy.model.source:
        return policy
    timing = StepTimeModel.from_profile(profile)
    update: dict[str, object] = {"target": timing.target, "draft": timing.draft,
                                 "host": timing.host, "source": source}
    if profile.acceptance is not None:
        update["prior_acceptance"] = profile.acceptance.prior_acceptance
        if profile.acceptance.calibration:
            update["calibration"] = profile.acceptance.calibration
    return policy.model_copy(update={"model": policy.model.model_copy(update=update)})


def verify_lengths(model: EfficiencyModel, raws: Sequence[Sequence[float]],
                   rows: Sequence[Sequence[float]], context_len: float) -> list[int]:
    """Per request, how many drafts to verify: the confidence threshold in mode "threshold",
    else `trim` (which keeps every draft outside mode "adaptive")."""
    policy = model.policy
    if policy.mode == "threshold":
        return lengths_above_threshold(raws, policy.threshold_probability)
    return model.trim(rows, context_len)


def step_observations(num_requests: int, num_tokens: int, context_len: float,
                      observed_s: float, draft_s: float, k: int) -> list[StepObservation]:
    """One step measured as `observed_s` (schedule to output), of which `draft_s` drafting `k`
    positions: a target observation (the rest of the step) and, when it drafted, a draft one
    (seconds per draft position). A K=0 step drafts too when the engine has a draft model:
    vLLM's proposer runs one draft forward on every step (its time is one position's)."""
    new = [StepObservation(
        role="target", num_requests=num_requests, num_tokens=num_tokens,
        context_len=context_len, seconds=max(observed_s - draft_s, 1e-6))]
    if draft_s > 0:
        new.append(StepObservation(
            role="draft", num_requests=num_requests, num_tokens=num_requests,
            context_len=context_len, seconds=max(draft_s / max(k, 1), 1e-6)))
    return new


def host_observation(num_requests: int, context_len: float, cycle_s: float,
                     forward_s: float) -> StepObservation:
    """One engine cycle (a step's start to the next's) of which `forward_s` in the forwards:
    the rest is host time (scheduling, output processing, inter-process hops)."""
    return StepObservation(role="host", num_requests=num_requests, num_tokens=num_requests,
                           context_len=context_len, seconds=max(cycle_s - forward_s, 1e-6))


def refit_due(steps: int) -> bool:
    """After the `steps`-th recorded step: refit now?"""
    return steps % REFIT_EVERY_STEPS == 0 or steps in EARLY_REFITS


def refit_models(model: EfficiencyModel, observations: Iterable[StepObservation]) -> None:
    """Refit the step times to the recent observations and the calibration to the outcomes.
    May raise ArithmeticError / ValueError on degenerate data (callers keep the old model)."""
    model.timing.refit(observations)
    model.acceptance.fit_calibration()
