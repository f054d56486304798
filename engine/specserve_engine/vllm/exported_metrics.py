"""specserve_* Prometheus metrics, exported on the control port (not mixed into vLLM's /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from specserve_contract.metrics import (
    ACCEPTED_TOKENS_OBSERVED,
    ACCEPTED_TOKENS_PREDICTED,
    BATCH_SIZE,
    DRAFT_TOKENS_TRIMMED,
    DRAFT_TOKENS_VERIFIED,
    DRAFTS_STOPPED_EARLY,
    GOODPUT_ESTIMATE,
    MODEL_REFITS,
    POLICY_MODE,
    POLICY_VERSION,
    REQUEST_K,
    REQUEST_TPOT_PREDICTED,
    SPECULATIVE_K,
    SPECULATIVE_K_LAST,
    STEP_TIME_OBSERVED,
    STEP_TIME_PREDICTED,
    STEPS,
    STEPS_BY_BATCH,
    STEPS_SPECULATION_OFF,
    STEPS_WITH_PREFILL,
)
from specserve_engine.policy.cycle_error import batch_range

__all__ = ["SpecServeMetrics", "batch_range"]

K_BUCKETS = tuple(float(k) + 0.5 for k in range(17))  # K is an integer 0..16
STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                1.0, 2.0, 5.0)
# vLLM 0.32's own vllm:request_time_per_output_token_seconds buckets, so the two compare.
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)


class SpecServeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.k = Histogram(SPECULATIVE_K, "K chosen for a step (0 = no speculation)",
                           buckets=K_BUCKETS, registry=r)
        self.k_last = Gauge(SPECULATIVE_K_LAST, "K chosen for the latest step",
                            registry=r)
        self.request_k = Histogram(REQUEST_K,
                                   "Draft tokens a request sends to verification after trimming",
                                   buckets=K_BUCKETS, registry=r)
        self.batch_size = Gauge(BATCH_SIZE, "Requests in the latest step", registry=r)
        self.policy_version = Gauge(POLICY_VERSION, "Version of the policy in force",
                                    registry=r)
        self.policy_mode = Gauge(POLICY_MODE, "Policy mode in force (1 = this)",
                                 ["mode"], registry=r)
        self.step_predicted = Histogram(STEP_TIME_PREDICTED,
                                        "Predicted engine cycle (draft + verify + host)",
                                        buckets=STEP_BUCKETS, registry=r)
        self.step_observed = Histogram(STEP_TIME_OBSERVED,
                                       "Observed engine cycle: one step's start to the next's",
                                       buckets=STEP_BUCKETS, registry=r)
        self.request_tpot_predicted = Histogram(
            REQUEST_TPOT_PREDICTED,
            "Per finished request: predicted cycle seconds after its first token / tokens after "
            "it (compare vllm:request_time_per_output_token_seconds)",
            buckets=TPOT_BUCKETS, registry=r)
        self.accepted_predicted = Counter(ACCEPTED_TOKENS_PREDICTED,
                                          "Draft tokens predicted to be accepted", registry=r)
        self.accepted_observed = Counter(ACCEPTED_TOKENS_OBSERVED,
                                         "Draft tokens accepted", registry=r)
        self.drafted = Counter(DRAFT_TOKENS_VERIFIED,
                               "Draft tokens sent to verification", registry=r)
        self.trimmed = Counter(DRAFT_TOKENS_TRIMMED,
                               "Draft tokens dropped before verification by the verifier",
                               registry=r)
        self.goodput = Gauge(GOODPUT_ESTIMATE,
                             "Predicted goodput of the latest step", registry=r)
        self.steps = Counter(STEPS, "Decode steps decided", registry=r)
        self.steps_by_batch = Counter(STEPS_BY_BATCH,
                                      "Steps decided, by batch-size range and K chosen",
                                      ["batch", "k"], registry=r)
        self.steps_with_prefill = Counter(
            STEPS_WITH_PREFILL, "Steps decided that carry prefill tokens, by K chosen (K is "
            "priced with them)", ["k"], registry=r)
        self.steps_off = Counter(STEPS_SPECULATION_OFF,
                                 "Steps decided with K=0 (speculation switched off)", registry=r)
        self.drafts_stopped_early = Gauge(DRAFTS_STOPPED_EARLY,
                                          "Draft passes cut short by the adaptive drafter",
                                          registry=r)
        self.refits = Counter(MODEL_REFITS, "Online refits of timing/calibration",
                              registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
