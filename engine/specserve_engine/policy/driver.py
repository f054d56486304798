"""How an engine drives the policy step by step: one `StepDriver` per engine, shared by the vLLM
scheduler (vllm/scheduler.py) and the simulated replica (specserve_sim/replica.py), so the
simulator cannot drift from the engine. Framework-free: the adapters pass it numbers (request
ids, token counts, clock readings, draft confidences) and act on what it answers.

One step, in the order both engines call it:

1. `close_cycle(now, work_left)` at the step's start: the previous cycle's length, and its part
   outside the forwards as a host-time observation (none after an idle engine);
2. `sync(policy)`: adopt a pushed policy; `begin_step()`;
3. `decide(request_ids, context_len, extra_tokens)`: the K drafted at the end of this step
   (clamped to the engine's K_max) for the requests that emit a token, priced with the step's
   prefill tokens (`prefill_tokens`), with its prediction; `stop_rule()` for the drafter;
4. `open_cycle(started, num_requests, num_tokens)`: the cycle's predicted length;
5. `forwards_done(seconds)` once the forwards return; `verified(...)` per verified request,
   `finished(id)` per finished one;
6. `record_step(draft_seconds, positions)`: the step's observations, and the refit schedule;
7. `trim(confidences, extra_tokens)`: how many of each request's new drafts are verified next
   step, priced with the prefill that step is expected to carry (`upcoming_prefill_tokens`).

Pure pieces it is made of, also used on their own: `fold_profile` (the start-up policy with a
profile), `verify_lengths` (trim / threshold), `step_observations` and `host_observation` (what
a measured step teaches), `refit_due` / `refit_models` (the schedule and what a refit does).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from specserve_engine.policy.drafting import DraftStopRule, stop_rule
from specserve_engine.policy.goodput import (
    EfficiencyModel,
    StepPrediction,
    lengths_above_threshold,
)
from specserve_engine.policy.params import Policy
from specserve_engine.policy.profile import Profile
from specserve_engine.policy.timing import StepObservation, StepTimeModel

REFIT_EVERY_STEPS = 200
OBSERVATION_HISTORY = 512  # the recent observations a refit fits to
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
                   rows: Sequence[Sequence[float]], context_len: float,
                   extra_tokens: int = 0) -> list[int]:
    """Per request, how many drafts to verify: the confidence threshold in mode "threshold",
    else `trim` (which keeps every draft outside mode "adaptive")."""
    policy = model.policy
    if policy.mode == "threshold":
        return lengths_above_threshold(raws, policy.threshold_probability)
    return model.trim(rows, context_len, extra_tokens)


def prefill_tokens(total_tokens: int, spec_tokens_of_emitting: Iterable[int]) -> int:
    """The step's tokens beyond its decodes: `total_tokens` scheduled, less 1 + the verified
    drafts of each request that emits a token this step. What is left is prefill (chunks of
    prompts, a last chunk's tokens but its first)."""
    return max(0, total_tokens - sum(1 + s for s in spec_tokens_of_emitting))


def upcoming_prefill_tokens(pending_prefill: int, token_budget: int, decode_tokens: int) -> int:
    """Prefill tokens the next step will carry: what prompts still need (running requests'
    unprefilled parts, waiting requests' prompts), within the token budget its decodes leave
    (vLLM schedules decodes first, then fills the budget with prefill chunks)."""
    return max(0, min(pending_prefill, token_budget - decode_tokens))


def step_observations(num_requests: int, num_tokens: int, context_len: float,
                      observed_s: float, draft_s: float, k: int,
                      extra_tokens: int = 0) -> list[StepObservation]:
    """One step measured as `observed_s` (schedule to output), of which `draft_s` drafting `k`
    positions: a target observation (the rest of the step) and, when it drafted, a draft one
    (seconds per draft position, at the mean tokens per draft forward: the first one also ran
    over the step's `extra_tokens` prefill tokens). A K=0 step drafts too when the engine runs
    a draft forward anyway (its time is one position's)."""
    new = [StepObservation(
        role="target", num_requests=num_requests, num_tokens=num_tokens,
        context_len=context_len, seconds=max(observed_s - draft_s, 1e-6))]
    if draft_s > 0:
        positions = max(k, 1)
        new.append(StepObservation(
            role="draft", num_requests=num_requests,
            num_tokens=num_requests + round(extra_tokens / positions),
            context_len=context_len, seconds=max(draft_s / positions, 1e-6)))
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


@dataclass(slots=True)
class Cycle:
    """One scheduled step, from its start until the next step's start closes it."""

    started: float
    num_requests: int
    num_tokens: int
    context_len: float
    predicted_seconds: float  # the whole cycle, predicted for the step as scheduled
    extra_tokens: int = 0  # of `num_tokens`, the prefill ones
    k: int = 0  # drafted at the end of the step
    forward_seconds: float | None = None  # the forwards (draft and target), once measured
    seconds: float | None = None  # the whole cycle, once closed
    host: StepObservation | None = None  # its host-time observation, once closed


@dataclass(frozen=True, slots=True)
class StepRecorded:
    """What `record_step` learned from one step."""

    observations: list[StepObservation]
    refitted: bool = False
    refit_error: ArithmeticError | ValueError | None = None  # the models were kept


class StepDriver:
    """The policy's side of one engine, step by step (see the module docstring)."""

    def __init__(self, policy: Policy, engine_k_max: int, *,
                 skips_draft_when_off: bool = False) -> None:
        self.engine_k_max = engine_k_max
        # vLLM 0.32's proposer runs one draft forward even at K = 0 (to keep the draft's KV
        # cache current); SpecServe's worker skips it and catches the cache up when drafting
        # resumes (vllm/draft_catchup.py). K = 0 is priced at what the engine runs.
        self.skips_draft_when_off = skips_draft_when_off
        self.model = EfficiencyModel(
            policy, draft_steps_when_off=0 if skips_draft_when_off or not engine_k_max else 1)
        self.observations: deque[StepObservation] = deque(maxlen=OBSERVATION_HISTORY)
        self.steps = 0  # steps recorded (the refit schedule counts these)
        self.refit_failures = 0
        self.prediction: StepPrediction | None = None  # this step's, once decided
        self.k = 0
        self.context_len = 0.0
        self.extra_tokens = 0  # this step's prefill tokens, as `decide` priced them
        self.cycle: Cycle | None = None
        self._forward_s: float | None = None

    @property
    def policy(self) -> Policy:
        return self.model.policy

    def sync(self, policy: Policy) -> bool:
        """Adopt `policy` (the one a push left in force) unless it already is; True if so."""
        if policy is self.model.policy:
            return False
        self.model.set_policy(policy)
        return True

    def begin_step(self) -> None:
        self.prediction = None
        self.k = 0
        self.extra_tokens = 0
        self._forward_s = None

    def decide(self, request_ids: Sequence[object], context_len: float,
               extra_tokens: int = 0) -> int:
        """K for this step: the goodput-maximising one for the requests that emit a token
        (mean `context_len` computed tokens) in a step that also carries `extra_tokens` prefill
        tokens, within the engine's K_max."""
        self.extra_tokens = extra_tokens
        prediction = self.model.choose_k_for(request_ids, context_len, self._priced(extra_tokens))
        self.prediction, self.context_len = prediction, context_len
        self.k = max(0, min(prediction.k, self.engine_k_max))
        return self.k

    def _priced(self, extra_tokens: int) -> int:
        """The prefill tokens decisions see (none under `price_prefill` false); predictions of
        the cycle always count them."""
        return extra_tokens if self.policy.price_prefill else 0

    def stop_rule(self) -> DraftStopRule | None:
        """When the drafter stops this step (None: it drafts all K, or K was not decided)."""
        if self.prediction is None:
            return None
        return stop_rule(self.model, self.prediction, self.context_len,
                         self._priced(self.extra_tokens))

    # -- the cycle a client waits for --

    def open_cycle(self, started: float, num_requests: int, num_tokens: int) -> Cycle | None:
        """The step as scheduled (None when it schedules nothing)."""
        if not num_requests or not num_tokens:
            self.cycle = None
            return None
        timing, ctx, extra = self.model.timing, self.context_len, self.extra_tokens
        predicted = (self.model.draft_seconds(num_requests, ctx, self.k, extra)
                     + timing.verify_seconds(num_requests, num_tokens, ctx)
                     + timing.host_seconds(num_requests, ctx))
        self.cycle = Cycle(started, num_requests, num_tokens, ctx, predicted, extra, self.k)
        return self.cycle

    def forwards_done(self, seconds: float) -> None:
        """The step's forwards (schedule end to outputs) took `seconds`."""
        self._forward_s = seconds
        if self.cycle is not None:
            self.cycle.forward_seconds = seconds

    def close_cycle(self, now: float, work_left: bool) -> Cycle | None:
        """At the next step's start: the cycle's length and its host part (an observation).
        After an idle engine (`work_left` false) the gap holds waiting, not work: None."""
        cycle, self.cycle = self.cycle, None
        if cycle is None or cycle.forward_seconds is None or not work_left:
            return None
        cycle.seconds = now - cycle.started
        cycle.host = host_observation(cycle.num_requests, cycle.context_len, cycle.seconds,
                                      cycle.forward_seconds)
        self.observations.append(cycle.host)
        return cycle

    # -- feedback --

    def verified(self, request_id: object, drafted: int, accepted: int,
                 probs: Sequence[float] | None) -> None:
        """Request `request_id` had `accepted` of its `drafted` draft tokens accepted."""
        self.model.acceptance.observe(drafted, accepted, request_id=request_id, probs=probs)

    def finished(self, request_id: object) -> None:
        self.model.acceptance.forget(request_id)

    def record_step(self, draft_seconds: float | None, positions: int) -> StepRecorded | None:
        """The step's measured forwards (with `draft_seconds` drafting `positions`) as
        observations, and a refit when one is due. None: nothing to learn (K not decided, no
        measurement, an empty step)."""
        forward, cycle = self._forward_s, self.cycle
        self._forward_s = None
        if forward is None or self.prediction is None or draft_seconds is None or cycle is None:
            return None
        new = step_observations(cycle.num_requests, cycle.num_tokens, cycle.context_len,
                                forward, draft_seconds, positions, cycle.extra_tokens)
        self.observations.extend(new)
        self.steps += 1
        if not refit_due(self.steps) or not self.policy.online_refit:
            return StepRecorded(new)
        try:
            refit_models(self.model, self.observations)
        except (ArithmeticError, ValueError) as exc:
            # Serving must outlive a bad fit: keep the previous coefficients.
            self.refit_failures += 1
            return StepRecorded(new, refit_error=exc)
        return StepRecorded(new, refitted=True)

    def trim(self, confidences: Sequence[Sequence[float]], extra_tokens: int = 0
             ) -> tuple[list[int], list[list[float]]]:
        """Per request, how many of its new drafts (with these raw draft confidences) to verify
        in a next step expected to carry `extra_tokens` prefill tokens, and each request's
        cumulative acceptance row."""
        cumulative = self.model.acceptance.cumulative
        rows = [cumulative(raw) for raw in confidences]
        return (verify_lengths(self.model, confidences, rows, self.context_len,
                               self._priced(extra_tokens)), rows)
