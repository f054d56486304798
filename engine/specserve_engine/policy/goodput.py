"""EfficiencyModel: pick K (and per-request K_i) that maximises goodput under the TPOT SLO.

For a batch of B decoding requests with mean context L, `extra` prefill tokens in the same step,
and c_ij from `AcceptanceModel` (row i = c_i1, c_i2, ... non-increasing), a step where request i
verifies K_i draft tokens and the drafter ran K = max_i K_i steps is predicted as

    tokens(K)   = sum_i (1 + sum_{j <= K_i} c_ij)                 expected tokens emitted
    T(K)        = T_draft(K) + T_verify(K) + t_host(B)            the engine's cycle, see `timing`
    G(K)        = tokens(K) / T(K)                                goodput, tokens / second
    TPOT_i(K)   = T(K) / (1 + sum_{j <= K_i} c_ij)                seconds per token of request i

with T_verify over B + sum_i K_i + extra tokens and the draft's first forward over B + extra
(vLLM's draft-model proposer runs it over every token the target processed). The prefill is
what moves the best K under chunked prefill: its tokens push the target past the knee where a
verified draft token stops being free, and every decoding request waits for them.

The TPOT SLO binds one aggregate of TPOT_i, chosen by `Policy.tpot_aggregate`:
- "worst" (default): max_i TPOT_i, the request that gains least from the drafts. Every request
  pays the full step time but only the confident ones get extra tokens, so this is the number a
  per-request TPOT SLO (and its p99) is about.
- "mean": mean_i TPOT_i, the batch-average per-request TPOT.
(The ratio T(K) / mean_i(1 + sum c_ij) is not offered: it equals B / G(K), so constraining it
never changes the argmax of G.) The bound is `tpot_headroom * slo.tpot_seconds`. When no K meets
it (a batch too slow for the SLO at any K), the highest-goodput K is chosen, the one with the
lowest batch-average time per token, B / G(K): the batch misses the bound whatever K is, and
the sooner it drains, the sooner the requests queued behind it can meet theirs. (Picking the
lowest aggregate TPOT instead looks natural but under "worst" it is K = 0 whenever one request
gains nothing from drafts: measured on AMD EPYC Zen 2, float32, eager, it ran K = 0 on most
steps of batch 17-32 once the load passed the SLO, and SLO goodput fell to off's; see
bench/RESULTS.md.)

Decisions, cheapest first (all pure Python, O(B * K_max) with the inner loops in builtins):
- `choose_k`: the batch-wide K for the next step, from look-ahead rows (drafts do not exist yet).
- `trim`: before verification, per-request K_i that drop low-c tails when that raises G.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from operator import ge, neg

from specserve_engine.policy.acceptance import AcceptanceModel
from specserve_engine.policy.params import ModelParams, Policy, TimingCoefficients
from specserve_engine.policy.timing import StepTimeModel, predict_seconds


@dataclass(frozen=True, slots=True)
class StepPrediction:
    """What the efficiency model expects of one decode step with batch-wide K = `k`."""

    k: int
    num_requests: int
    expected_tokens: float
    draft_seconds: float
    verify_seconds: float
    tpot_seconds: float  # the `Policy.tpot_aggregate` of the per-request TPOTs
    host_seconds: float = 0.0  # the cycle outside the forwards (see `timing`)

    @property
    def step_seconds(self) -> float:
        """The whole cycle: what a client waits between this step's tokens and the next's."""
        return self.draft_seconds + self.verify_seconds + self.host_seconds

    @property
    def goodput(self) -> float:
        """Expected tokens per second of the whole batch."""
        return self.expected_tokens / self.step_seconds if self.step_seconds > 0 else 0.0


def _count_paying_drops(
    values: Sequence[float], expected: float, tokens: int, step: float,
    target: TimingCoefficients,
) -> int:
    """How many of the lowest-c tokens (`values`, ascending) to drop to maximise G.

    After m drops, G_m = (E - P_m) / T_m with P_m the sum of the m lowest values and
    T_m = T - d * min(m, tokens - knee) (d = per-token verify cost; tokens below the knee are
    free). Drop m+1 pays iff values[m] * T_m < d_m * (E - P_m). The values grow with m while G
    grows and d_m can only fall to 0, so the predicate is true up to some m and false after:
    binary search it on prefix sums instead of walking every token.
    """
    d = target.per_token_s
    droppable = min(len(values), max(0, tokens - target.knee_tokens))
    if d <= 0 or droppable == 0:
        return 0
    prefix = [0.0, *accumulate(values)]

    def pays(m: int) -> bool:
        return values[m] * (step - d * m) < d * (expected - prefix[m])

    lo, hi = 0, droppable  # invariant: every m < lo pays; the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if pays(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _count_paying_drops_corrected(
    values: Sequence[float], expected: float, tokens: int, fixed_seconds: float,
    target: TimingCoefficients, num_requests: int, context_len: float,
) -> int:
    """`_count_paying_drops` for a target with a `token_correction`: exact, by scanning.

    With the correction a step's time is not monotonic in its tokens (dropping one can make the
    step slower), so the drop predicate is not monotonic either and a binary search could stop
    at a local optimum. Evaluate G after every number of drops instead: O(len(values)) cheap
    predictions, paid only by models that carry a correction. Ties go to fewer drops.
    """
    best_m, best_g = 0, -1.0
    lost = 0.0
    for m in range(len(values) + 1):
        if m:
            lost += values[m - 1]
        t = fixed_seconds + predict_seconds(target, num_requests, tokens - m, context_len)
        g = (expected - lost) / t if t > 0 else 0.0
        if g > best_g * (1 + 1e-12):
            best_m, best_g = m, g
    return best_m


def _pad(rows: Sequence[Sequence[float]], k: int) -> list[Sequence[float]]:
    """Each row cut or zero-padded to length k (a request with fewer drafts gains nothing more)."""
    return [row[:k] if len(row) >= k else [*row, *([0.0] * (k - len(row)))] for row in rows]


class EfficiencyModel:
    """Goodput-maximising K under the TPOT SLO, from a `StepTimeModel` and an `AcceptanceModel`."""

    def __init__(
        self,
        policy: Policy,
        timing: StepTimeModel | None = None,
        acceptance: AcceptanceModel | None = None,
        *,
        draft_steps_when_off: int = 0,
    ) -> None:
        self.policy = policy
        self.timing = timing or StepTimeModel.from_params(policy.model)
        self.acceptance = acceptance or AcceptanceModel(policy.model)
        # vLLM 0.32's draft-model proposer runs its first draft forward on every step, K=0
        # included (it keeps the draft's KV cache current): an engine with a draft model pays
        # one draft step when it verifies nothing, and K=0 is priced at that.
        self.draft_steps_when_off = draft_steps_when_off

    def draft_seconds(self, num_requests: int, context_len: float, steps: int,
                      extra_tokens: int = 0) -> float:
        """`steps` draft steps, or what the engine drafts anyway when `steps` is 0; the first
        one also over the step's `extra_tokens` (prefill)."""
        return self.timing.draft_seconds(num_requests, context_len,
                                         steps or self.draft_steps_when_off, extra_tokens)

    def set_policy(self, policy: Policy) -> None:
        """Adopt a pushed policy. Its `model` replaces the fitted models only when it changed,
        so a push that only retunes knobs keeps what this engine learned online."""
        if policy.model != self.policy.model:
            self.timing = StepTimeModel.from_params(policy.model)
            self.acceptance = AcceptanceModel(policy.model)
        self.policy = policy

    def fitted_params(self) -> ModelParams:
        """The policy's `model` with what this engine learned online (timing refits, calibration,
        running acceptance): what GET /specserve/policy reports and the operator may push back."""
        refitted = self.policy.model.model_copy(
            update={"target": self.timing.target, "draft": self.timing.draft,
                    "host": self.timing.host})
        return self.acceptance.to_params(refitted)

    # -- predictions --

    def predict_all(
        self,
        rows: Sequence[Sequence[float]],
        context_len: float,
        extra_tokens: int = 0,
        k_max: int | None = None,
        k_min: int = 0,
    ) -> list[StepPrediction]:
        """Predictions for every uniform K in k_min..k_max (every request drafts K tokens)."""
        k_max = self.policy.k_max if k_max is None else k_max
        b = len(rows)
        # Column K-1 of `by_k` holds every request's prefix sum_{j <= K} c_ij (builtins only).
        by_k = list(zip(*map(accumulate, _pad(rows, k_max)), strict=True)) if b and k_max else []
        gained = [0.0, *map(sum, by_k)]  # gained[K] = sum_i sum_{j <= K} c_ij
        mean_tpot = self.policy.tpot_aggregate == "mean"
        least = [0.0, *map(min, by_k)] if not mean_tpot else []
        draft_step = predict_seconds(self.timing.draft, b, b, context_len) if b else 0.0
        # The first draft forward also runs over the step's prefill tokens (see `timing`).
        first_extra = (predict_seconds(self.timing.draft, b, b + extra_tokens, context_len)
                       - draft_step) if b and extra_tokens > 0 else 0.0
        host = self.timing.host_seconds(b, context_len)
        out = []
        for k in range(k_min, k_max + 1):
            steps = k or self.draft_steps_when_off
            draft = steps * draft_step + (first_extra if steps else 0.0)
            verify = predict_seconds(self.timing.target, b, b * (k + 1) + extra_tokens,
                                     context_len)
            step = draft + verify + host
            if not b:
                tpot = 0.0
            elif mean_tpot:
                tpot = step / b * (sum(1 / (1 + s) for s in by_k[k - 1]) if k else b)
            else:
                tpot = step / (1 + least[k])
            out.append(StepPrediction(k, b, b + gained[k], draft, verify, tpot, host))
        return out

    # -- decisions --

    def _best(self, predictions: Sequence[StepPrediction]) -> StepPrediction:
        """Highest goodput among SLO-feasible predictions; when none is feasible, the highest
        goodput of all (the SLO is missed whatever K is: drain the batch soonest, see the
        module docstring). Ties go to the first (smaller) K."""
        # One pass, no allocation: this runs every step.
        limit = self.policy.tpot_limit_seconds
        best: StepPrediction | None = None
        fastest = predictions[0]
        for p in predictions:
            if limit is None or p.tpot_seconds <= limit:
                if best is None or p.goodput > best.goodput:
                    best = p
            elif p.goodput > fastest.goodput:
                fastest = p
        return best if best is not None else fastest

    def choose_k(
        self, rows: Sequence[Sequence[float]], context_len: float, extra_tokens: int = 0
    ) -> StepPrediction:
        """The batch-wide K for the next step (`.k`) and what is predicted for it.

        `rows` are look-ahead c rows (`AcceptanceModel.lookahead`), at least k_max long to let
        every K compete; shorter rows count their missing positions as never accepted.
        Mode "off" gives K=0, "static" gives `static_k`, "threshold" k_max (its drafter stops
        each request by confidence), "adaptive" the best feasible K in 0..k_max (ties go to the
        smaller K).
        """
        mode = self.policy.mode
        if mode == "off" or not rows:
            return self.predict_all(rows, context_len, extra_tokens, k_max=0)[0]
        if mode in ("static", "threshold"):
            k = self.policy.static_k if mode == "static" else self.policy.k_max
            return self.predict_all(rows, context_len, extra_tokens, k_max=k, k_min=k)[0]
        return self._best(self.predict_all(rows, context_len, extra_tokens))

    def choose_k_for(
        self, request_ids: Sequence[object], context_len: float, extra_tokens: int = 0
    ) -> StepPrediction:
        """`choose_k` with look-ahead rows from the acceptance model's per-request rates."""
        rows = self.acceptance.lookahead(request_ids, self.policy.k_max)
        return self.choose_k(rows, context_len, extra_tokens)

    def trim(
        self,
        rows: Sequence[Sequence[float]],
        context_len: float,
        extra_tokens: int = 0,
        draft_steps: int | None = None,
    ) -> list[int]:
        """Per-request verify lengths K_i <= len(row_i) that maximise G (mode "adaptive" with
        `trim_drafts`; otherwise every draft is verified).

        Tokens below the confidence floor are always dropped. Of the rest, the lowest-c draft
        tokens are dropped one by one while that raises G: dropping a token with probability c
        loses c expected tokens and saves the marginal verify cost d of one token, and pays off
        while c < d * G (found by binary search, see `_count_paying_drops`). Rows must be
        non-increasing (cumulative products are); a row that is not is made so by a running
        minimum. The drafter's cost (`draft_steps`, default the
        longest row) is counted in the step, as the next draft runs in the same step. Under a
        linear target model dropping never makes the step slower; under one with a
        `token_correction` it can, and every number of drops is scored instead
        (`_count_paying_drops_corrected`).
        """
        lengths = [len(row) for row in rows]
        if self.policy.mode != "adaptive" or not self.policy.trim_drafts or not rows:
            return lengths
        floor = self.policy.confidence_floor
        b = len(rows)
        monotone = [row if all(map(ge, row, row[1:])) else list(accumulate(row, min))
                    for row in rows]
        # Rows are non-increasing: the tokens at or above the floor are a prefix of each row.
        kept = [bisect_left(row, -floor, key=neg) if floor > 0 else len(row) for row in monotone]
        values = sorted(chain.from_iterable(row[:k] for row, k in zip(monotone, kept, strict=True)))
        steps = max(lengths) if draft_steps is None else draft_steps
        target = self.timing.target
        tokens = b + sum(kept) + extra_tokens
        expected = b + sum(values)
        # Draft and host time do not change with drops: the fixed part of the step.
        fixed = (self.draft_seconds(b, context_len, steps, extra_tokens)
                 + self.timing.host_seconds(b, context_len))
        if target.token_correction:
            dropped = _count_paying_drops_corrected(values, expected, tokens, fixed, target, b,
                                                    context_len)
        else:
            step = fixed + predict_seconds(target, b, tokens, context_len)
            dropped = _count_paying_drops(values, expected, tokens, step, target)
        if not dropped:
            return kept
        # Drop every token with c <= the last dropped value, then give back the extra ties.
        threshold = values[dropped - 1]
        trimmed = [bisect_left(row, -threshold, hi=k, key=neg)
                   for row, k in zip(monotone, kept, strict=True)]
        surplus = sum(kept) - sum(trimmed) - dropped
        for i, row in enumerate(monotone if surplus else ()):
            while surplus > 0 and trimmed[i] < kept[i] and row[trimmed[i]] == threshold:
                trimmed[i] += 1
                surplus -= 1
        return trimmed


def lengths_above_threshold(rows: Sequence[Sequence[float]], threshold: float) -> list[int]:
    """Confidence-threshold drafting (a baseline): per request, the draft tokens before the first
    one whose raw draft probability is below `threshold`."""
    return [next((j for j, p in enumerate(row) if p < threshold), len(row)) for row in rows]
