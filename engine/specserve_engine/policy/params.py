"""The policy an engine runs by: exactly what the operator pushes (PUT /specserve/policy).

This module is the contract between the operator and the engines. The operator stores a `Policy`
as JSON in a ConfigMap and pushes it to every pod; the engine validates it with these models and
answers 422 with `validation_message(err)` when it does not fit. Field names are stable: add
fields with defaults, never rename one.

A `Policy` has two halves:
- knobs the operator tunes from SLO measurements: `mode`, `k_max`, `static_k`, `slo`,
  `tpot_headroom`, `tpot_aggregate`, `confidence_floor`, `trim_drafts`;
- `model`: the efficiency-model parameters (step-time coefficients of target and draft, draft
  confidence calibration, acceptance prior) fitted from a profile and refitted online.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from specserve_contract import K_LIMIT, MODES


class _Strict(BaseModel):
    """Unknown fields are errors: a typo in a pushed policy must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_CORRECTION_POINTS = 32  # breakpoints of `token_correction`: half-octave buckets to 64k tokens
MAX_CORRECTION_FACTOR = 10.0


class TimingCoefficients(_Strict):
    """Predicted seconds of one forward step of one model (target or draft).

        linear = overhead_s
                 + per_token_s    * max(0, num_tokens - knee_tokens)
                 + per_kv_token_s * num_requests * context_len
                 + per_request_s  * num_requests
        t      = linear * correction(num_tokens)

    `num_tokens` counts every token in the step (decode, the K draft tokens per request being
    verified, prefill chunks). Below `knee_tokens` a step reads the weights once whatever the
    token count (bandwidth-bound), so extra tokens are free; above it each token costs compute.
    `num_requests * context_len` is the KV cache read by attention. All coefficients are >= 0, so
    the linear part never decreases when a step grows.

    `correction` is 1 unless `token_correction` is set: then it is piecewise-linear in the token
    count between the listed (tokens, factor) breakpoints and flat outside them. It exists for
    kernels whose cost moves non-monotonically with the token count (oneDNN/AMX bf16 GEMMs pick
    a different blocking by M, so a step of 24 tokens can cost more than one of 40): with it, a
    bigger step *can* predict as faster, and nothing in the policy may assume otherwise.
    """

    overhead_s: float = Field(default=0.005, ge=0, description="fixed seconds per step")
    per_token_s: float = Field(default=2e-5, ge=0, description="seconds per batched token")
    per_kv_token_s: float = Field(default=0.0, ge=0, description="seconds per KV token read")
    per_request_s: float = Field(default=0.0, ge=0, description="seconds per request in batch")
    knee_tokens: int = Field(default=0, ge=0, description="tokens a step processes for free")
    token_correction: list[tuple[int, float]] = Field(
        default_factory=list, max_length=MAX_CORRECTION_POINTS,
        description="(num_tokens, factor) breakpoints of a multiplicative correction to the "
                    "linear time, strictly increasing token counts, factors in (0, 10]; empty = "
                    "no correction")

    @model_validator(mode="after")
    def _correction_is_a_function_of_tokens(self) -> Self:
        tokens = [n for n, _ in self.token_correction]
        if any(n < 1 for n in tokens):
            raise ValueError("token_correction token counts must be >= 1")
        if any(a >= b for a, b in pairwise(tokens)):
            raise ValueError(
                f"token_correction token counts must strictly increase (got {tokens})")
        # A factor of 0 would make a step free; 10x is far beyond any measured kernel effect,
        # so a bigger factor is a fitting or typing error, not a machine.
        bad = [f for _, f in self.token_correction if not 0 < f <= MAX_CORRECTION_FACTOR]
        if bad:
            raise ValueError(f"token_correction factors must be in (0, {MAX_CORRECTION_FACTOR:g}]"
                             f" (got {bad})")
        return self


NO_HOST_TIME = TimingCoefficients(overhead_s=0.0, per_token_s=0.0)


class LogisticCalibration(_Strict):
    """Acceptance probability of a draft token from the draft model's own probability q.

        P(accepted | q) = sigmoid(slope * logit(q) + intercept)

    slope=1, intercept=0 is the identity (trust the draft's probability as is).
    """

    slope: float = Field(default=1.0, ge=0, le=20, description="on logit(q)")
    intercept: float = Field(default=0.0, ge=-20, le=20)


class ModelParams(_Strict):
    """Efficiency-model parameters: what the policy needs to predict step times and acceptance."""

    target: TimingCoefficients = Field(
        default_factory=lambda: TimingCoefficients(overhead_s=0.010, per_token_s=5e-5))
    draft: TimingCoefficients = Field(
        default_factory=lambda: TimingCoefficients(overhead_s=0.002, per_token_s=5e-6))
    host: TimingCoefficients = Field(
        default=NO_HOST_TIME,
        description="seconds of an engine cycle outside the two forwards (scheduling, output "
                    "processing, inter-process hops), per step; features: requests, context "
                    "(its token count is the request count); zero = not measured")
    calibration: list[LogisticCalibration] = Field(
        default_factory=list, max_length=K_LIMIT,
        description="per draft position (first entry = position 1); positions past the end use "
                    "the last entry; empty = identity")
    prior_acceptance: float = Field(
        default=0.7, gt=0, lt=1,
        description="per-token acceptance assumed for a request with no history")
    prior_strength: float = Field(
        default=8.0, ge=0,
        description="weight of the prior, in draft tokens, against a request's own history")
    source: str = Field(
        default="", max_length=500,
        description="provenance, free text; empty = the built-in defaults, which an engine "
                    "never adopts in place of the model it runs")


class SloTargets(_Strict):
    """Latency targets; None means unconstrained."""

    ttft_seconds: float | None = Field(default=None, gt=0)
    tpot_seconds: float | None = Field(default=None, gt=0)


class Policy(_Strict):
    """Everything an engine needs to pick K every step. Versioned: engines ack the version."""

    version: int = Field(default=0, ge=0)
    # "threshold" is a baseline for benchmarks (confidence-threshold drafting), not a policy the
    # operator offers.
    mode: Literal[MODES] = "adaptive"  # type: ignore[valid-type]
    k_max: int = Field(default=5, ge=0, le=K_LIMIT, description="largest K ever used")
    static_k: int = Field(default=3, ge=0, le=K_LIMIT, description="K used in mode 'static'")
    slo: SloTargets = Field(default_factory=SloTargets)
    tpot_headroom: float = Field(
        default=0.9, gt=0, le=1,
        description="fraction of the TPOT SLO a step's predicted TPOT may use")
    tpot_aggregate: Literal["worst", "mean"] = Field(
        default="worst",
        description="which request's predicted TPOT must meet the SLO: the slowest one in the "
                    "batch, or the mean over the batch")
    confidence_floor: float = Field(
        default=0.0, ge=0, lt=1,
        description="draft tokens whose cumulative acceptance probability is below this are "
                    "never verified")
    trim_drafts: bool = Field(
        default=True,
        description="mode 'adaptive': per request, drop low-confidence draft tails before "
                    "verification (the confidence prior verifier); false verifies every draft "
                    "(the drafter-only ablation)")
    price_prefill: bool = Field(
        default=True,
        description="price the prefill tokens a step carries into K, the stop rule and "
                    "trimming; false prices the decode batch alone (the policy before issue "
                    "#22, kept for side-by-side benchmarks)")
    online_refit: bool = Field(
        default=True,
        description="the engine refits its step-time model and draft calibration from its own "
                    "steps; false keeps `model` as given (a frozen model, e.g. for an A/B of "
                    "models or a test)")
    threshold_probability: float = Field(
        default=0.6, gt=0, lt=1,
        description="mode 'threshold': each request drafts up to k_max tokens and stops at the "
                    "first one the draft model gave a probability below this")
    model: ModelParams = Field(default_factory=ModelParams)

    @model_validator(mode="after")
    def _static_k_within_k_max(self) -> Self:
        if self.static_k > self.k_max:
            raise ValueError(f"static_k ({self.static_k}) must be <= k_max ({self.k_max})")
        return self

    @property
    def tpot_limit_seconds(self) -> float | None:
        """The predicted-TPOT bound a step must meet, or None when there is no TPOT SLO."""
        if self.slo.tpot_seconds is None:
            return None
        return self.slo.tpot_seconds * self.tpot_headroom


def validation_message(err: ValidationError) -> str:
    """One line per problem, `field.path: message (got value)`, for a 422 response body."""
    lines = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "policy"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown}")
    return "; ".join(lines)
