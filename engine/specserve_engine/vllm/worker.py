"""vLLM worker classes (``--worker-cls``) that capture draft confidences for the scheduler.

The worker runs in its own process; the scheduler in the EngineCore process. Confidences and the
drafting time travel with the draft tokens: as extra attributes of the ``DraftTokenIds`` object,
which vLLM pickles across the process boundary as is. The stop threshold travels the other way as
an attribute of ``SchedulerOutput``.
"""

from __future__ import annotations

from typing import Any

from specserve_engine.vllm.capture import DraftCapture

# Attribute names shared with the scheduler (kept in one place).
CONFIDENCES_ATTR = "specserve_confidences"
DRAFT_SECONDS_ATTR = "specserve_draft_seconds"
STOPPED_EARLY_ATTR = "specserve_stopped_early"
STOP_RULE_ATTR = "specserve_stop_rule"


class DraftConfidenceMixin:
    """Mixed into vLLM's worker class; needs ``model_runner`` with a ``drafter``."""

    model_runner: Any
    _specserve_capture: DraftCapture | None = None

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)  # type: ignore[misc]
        runner = self.model_runner
        drafter = getattr(runner, "drafter", None)
        if drafter is None or not hasattr(drafter, "_greedy_sample"):
            return  # no speculation, or a proposer that is not a draft model
        capture = DraftCapture(drafter)
        self._specserve_capture = capture
        original = runner.propose_draft_token_ids

        def propose_draft_token_ids(scheduler_output: Any, *a: Any, **kw: Any) -> Any:
            capture.stop_rule = getattr(scheduler_output, STOP_RULE_ATTR, None)
            return original(scheduler_output, *a, **kw)

        runner.propose_draft_token_ids = propose_draft_token_ids

    def take_draft_token_ids(self) -> Any:
        drafts = super().take_draft_token_ids()  # type: ignore[misc]
        capture = self._specserve_capture
        if drafts is None or capture is None:
            return drafts
        setattr(drafts, CONFIDENCES_ATTR, capture.confidence_rows(len(drafts.req_ids)))
        setattr(drafts, DRAFT_SECONDS_ATTR, capture.last_seconds)
        setattr(drafts, STOPPED_EARLY_ATTR, capture.stopped_early)
        return drafts
