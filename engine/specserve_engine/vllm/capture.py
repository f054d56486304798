"""Worker side: record the draft model's confidence in each token it proposes; stop drafting early.

vLLM's greedy drafter takes ``argmax(compute_logits(h))`` once per draft position
(``SpecDecodeBaseProposer._greedy_sample``) and throws the probabilities away. ``DraftCapture``
wraps that one call on the proposer *instance*: it picks the very same token (the argmax of the
same logits) and also keeps ``softmax(logits)[token]``, the draft's confidence. Per ``propose()``
call the confidences form a ``[batch, K]`` matrix, handed to the scheduler with the draft tokens.

Adaptive drafting: the scheduler sends a ``DraftStopRule`` with each step (an attribute on
``SchedulerOutput``; the rule and its math are in ``policy/drafting.py``). After each drafted
position the confidences go to ``DraftProgress.stop_after``; when it says stop (and K is not yet
reached), the same sample call raises ``_StopDrafting``, so the draft forward of the next
position never runs, and the wrapped ``propose()`` returns the tokens drafted so far (a narrower
``[batch, j]`` result, which vLLM's runner handles like a smaller K). vLLM samples outside its
forward context, after the step's forward, in both of its sample calls (before and inside the
loop of ``SpecDecodeBaseProposer.propose``); the K=1 path returns at that same point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from specserve_engine.policy.drafting import DraftProgress, DraftStopRule


class _StopDrafting(Exception):
    """Raised right after a draft position is sampled (outside vLLM's forward context)."""


class DraftCapture:
    def __init__(self, drafter: Any) -> None:
        self.drafter = drafter
        self.stop_rule: DraftStopRule | None = None  # set per step from the scheduler's output
        self.last_confidences: torch.Tensor | None = None  # [batch, j] of the last propose()
        self.last_seconds = 0.0
        self.stopped_early = 0  # propose() calls cut short, for the scheduler's metrics
        self._tokens: list[torch.Tensor] = []
        self._confidences: list[torch.Tensor] = []
        self._progress: DraftProgress | None = None
        self._original_sample: Callable[[torch.Tensor], torch.Tensor] = drafter._greedy_sample
        self._original_propose: Callable[..., torch.Tensor] = drafter.propose
        drafter._greedy_sample = self._greedy_sample
        drafter.propose = self._propose

    @property
    def supported(self) -> bool:
        # Vocabulary-parallel argmax and heterogeneous vocabularies sample differently: leave
        # them exactly as vLLM does (no confidences, no early stop).
        d = self.drafter
        return not (getattr(d, "use_local_argmax_reduction", False)
                    or getattr(d, "use_heterogeneous_vocab", False))

    def _greedy_sample(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.supported:
            return self._original_sample(hidden_states)
        logits = self.drafter.model.compute_logits(hidden_states)
        tokens = logits.argmax(dim=-1)  # the token vLLM itself would draft
        conf = torch.softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        self._tokens.append(tokens)
        self._confidences.append(conf)
        if (self._progress is not None and self._progress.stop_after(conf.tolist())
                and len(self._tokens) < self.drafter.num_speculative_tokens):
            # Right after sampling position j: the draft forward of position j+1 never runs.
            raise _StopDrafting
        return tokens

    def _propose(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._tokens, self._confidences = [], []
        self._progress = DraftProgress(self.stop_rule) if self.stop_rule is not None else None
        start = time.perf_counter()
        try:
            result = self._original_propose(*args, **kwargs)
        except _StopDrafting:
            result = torch.stack(self._tokens, dim=1)
            self.stopped_early += 1
        self.last_seconds = time.perf_counter() - start
        width = result.shape[1] if result.dim() == 2 else 0
        if self._confidences and width:
            self.last_confidences = torch.stack(self._confidences[:width], dim=1)
        else:
            self.last_confidences = None
        return result

    def confidence_rows(self, num_rows: int) -> list[list[float]] | None:
        """The last propose()'s confidences as Python lists, if they cover ``num_rows`` rows."""
        conf = self.last_confidences
        if conf is None or conf.shape[0] < num_rows:
            return None
        return conf[:num_rows].tolist()
