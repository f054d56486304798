"""vLLM worker classes (``--worker-cls``) that capture draft confidences for the scheduler.

The worker runs in its own process; the scheduler in the EngineCore process. Confidences and the
drafting time travel with the draft tokens: as extra attributes of the ``DraftTokenIds`` object,
which vLLM pickles across the process boundary as is. The stop threshold travels the other way as
an attribute of ``SchedulerOutput``.

A step whose K is 0 runs no draft forward (vLLM's proposer would run its first pass anyway);
the draft's KV cache catches up on the next step that drafts (``draft_catchup.py``).
"""

from __future__ import annotations

from typing import Any

from specserve_engine.vllm.capture import DraftCapture
from specserve_engine.vllm.draft_catchup import DraftCatchup, supports_catchup

# Attribute names shared with the scheduler (kept in one place).
CONFIDENCES_ATTR = "specserve_confidences"
DRAFT_SECONDS_ATTR = "specserve_draft_seconds"
STOPPED_EARLY_ATTR = "specserve_stopped_early"
STOP_RULE_ATTR = "specserve_stop_rule"
# Draft positions the step's catch-up recomputed (tokens of earlier K=0 steps): a resume step's
# draft seconds include them, like a small draft prefill.
CATCHUP_TOKENS_ATTR = "specserve_catchup_tokens"

# A K=0 step costs no draft forward with this worker (draft-model speculation on vLLM's V1
# runner, the path `specserve serve` configures): the scheduler prices K=0 at zero draft steps.
# Drafters without the catch-up keep vLLM's behaviour (one draft forward per K=0 step).
SKIPS_DRAFT_WHEN_OFF = True


class DraftConfidenceMixin:
    """Mixed into vLLM's worker class; needs ``model_runner`` with a ``drafter``."""

    model_runner: Any
    _specserve_capture: DraftCapture | None = None
    _specserve_catchup: DraftCatchup | None = None

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)  # type: ignore[misc]
        runner = self.model_runner
        drafter = getattr(runner, "drafter", None)
        if drafter is None or not hasattr(drafter, "_greedy_sample"):
            return  # no speculation, or a proposer that is not a draft model
        # Installed first, so DraftCapture's wrapper (and its timing) is outside the catch-up.
        catchup = DraftCatchup(drafter, runner) if supports_catchup(drafter, runner) else None
        self._specserve_catchup = catchup
        capture = DraftCapture(drafter)
        self._specserve_capture = capture
        original = runner.propose_draft_token_ids

        def propose_draft_token_ids(scheduler_output: Any, *a: Any, **kw: Any) -> Any:
            capture.stop_rule = getattr(scheduler_output, STOP_RULE_ATTR, None)
            return original(scheduler_output, *a, **kw)

        runner.propose_draft_token_ids = propose_draft_token_ids

    def execute_model(self, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        capture = self._specserve_capture
        if capture is not None:
            capture.last_seconds = 0.0  # a step that drafts nothing reports no draft time
        catchup = self._specserve_catchup
        if catchup is not None:
            catchup.note_step(scheduler_output)
        return super().execute_model(scheduler_output, *args, **kwargs)  # type: ignore[misc]

    def take_draft_token_ids(self) -> Any:
        drafts = super().take_draft_token_ids()  # type: ignore[misc]
        capture = self._specserve_capture
        if drafts is None or capture is None:
            return drafts
        catchup = self._specserve_catchup
        skipped = catchup is not None and catchup.skipped_last
        setattr(drafts, CONFIDENCES_ATTR, capture.confidence_rows(len(drafts.req_ids)))
        # A skipped K=0 step drafted nothing; a resume step's catch-up is part of its drafting.
        setattr(drafts, DRAFT_SECONDS_ATTR, 0.0 if skipped else capture.last_seconds)
        setattr(drafts, STOPPED_EARLY_ATTR, capture.stopped_early)
        setattr(drafts, CATCHUP_TOKENS_ATTR, catchup.last_catchup_tokens if catchup else 0)
        return drafts
