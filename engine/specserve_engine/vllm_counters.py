"""Read vLLM's Prometheus text: the speculative-decoding counters as one summary."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from specserve_contract.metrics import (
    VLLM_SPEC_ACCEPTED_TOKENS,
    VLLM_SPEC_DRAFT_TOKENS,
    VLLM_SPEC_DRAFTS,
)


def metric_totals(metrics_text: str) -> dict[str, float]:
    """Sum of every sample by sample name (labels summed away), e.g. ``vllm:..._total``."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


@dataclass(frozen=True)
class SpecDecodeStats:
    drafts: float
    draft_tokens: float
    accepted_tokens: float

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (0 when nothing was proposed)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_per_draft(self) -> float:
        return self.accepted_tokens / self.drafts if self.drafts else 0.0

    def minus(self, earlier: SpecDecodeStats) -> SpecDecodeStats:
        return SpecDecodeStats(
            self.drafts - earlier.drafts,
            self.draft_tokens - earlier.draft_tokens,
            self.accepted_tokens - earlier.accepted_tokens,
        )


def spec_decode_stats(metrics_text: str) -> SpecDecodeStats:
    t = metric_totals(metrics_text)
    return SpecDecodeStats(
        drafts=t.get(VLLM_SPEC_DRAFTS, 0.0),
        draft_tokens=t.get(VLLM_SPEC_DRAFT_TOKENS, 0.0),
        accepted_tokens=t.get(VLLM_SPEC_ACCEPTED_TOKENS, 0.0),
    )
