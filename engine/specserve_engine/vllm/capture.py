"""Worker side: record the draft model's confidence in each token it proposes; stop drafting early.

vLLM's greedy drafter takes ``argmax(compute_logits(h))`` once per draft position
(``SpecDecodeBaseProposer._greedy_sample``) and throws the probabilities away. ``DraftCapture``
wraps that one call on the proposer *instance*: it picks the very same token (the argmax of the
same logits) and also keeps ``softmax(logits)[token]``, the draft's confidence. Per ``propose()``
call the confidences form a ``[batch, K]`` matrix, handed to the scheduler with the draft tokens.

Adaptive drafting: the scheduler sends a stop threshold with each step (an attribute on
``SchedulerOutput``). When the batch's summed cumulative confidence falls below it (one more
draft position would not pay for itself), or every request is below the confidence floor, the
next sample call raises ``_StopDrafting``; the wrapped ``propose()`` catches it and returns the
tokens drafted so far (a narrower ``[batch, j]`` result, which vLLM's runner handles like a
smaller K). Confidences are calibrated with the scheduler's per-position logistic map first (the
same map ``AcceptanceModel.calibrate`` applies), so the rule compares acceptance probabilities.
The confidence-threshold baseline (policy mode "threshold") instead ends drafting once every
request has proposed a token with raw draft probability below the threshold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class DraftStopRule:
    """When the drafter stops this step; sent by the scheduler with each step's output."""

    gain_threshold: float  # stop once the batch's summed cumulative acceptance is below this
    floor: float  # ... or once every request's cumulative acceptance is below this
    calibration: list[tuple[float, float]]  # (slope, intercept) per draft position
    token_floor: float = 0.0  # threshold mode: a request is done at its first raw p below this


class _StopDrafting(Exception):
    """Raised between draft positions (outside vLLM's forward context) to end drafting."""


class DraftCapture:
    def __init__(self, drafter: Any) -> None:
        self.drafter = drafter
        self.stop_rule: DraftStopRule | None = None  # set per step from the scheduler's output
        self.last_confidences: torch.Tensor | None = None  # [batch, j] of the last propose()
        self.last_seconds = 0.0
        self.stopped_early = 0  # propose() calls cut short, for the scheduler's metrics
        self._tokens: list[torch.Tensor] = []
        self._confidences: list[torch.Tensor] = []
        self._cumulative: torch.Tensor | None = None
        self._drafting: torch.Tensor | None = None  # threshold mode: requests not yet done
        self._stop_next = False
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
        if self._stop_next:
            raise _StopDrafting
        logits = self.drafter.model.compute_logits(hidden_states)
        tokens = logits.argmax(dim=-1)  # the token vLLM itself would draft
        conf = torch.softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        self._tokens.append(tokens)
        self._confidences.append(conf)
        rule = self.stop_rule
        if rule is not None and rule.token_floor > 0:
            going = conf >= rule.token_floor
            self._drafting = going if self._drafting is None else self._drafting & going
            if not bool(self._drafting.any()):
                self._stop_next = True
        elif rule is not None:
            slope, intercept = rule.calibration[min(len(self._tokens), len(rule.calibration)) - 1]
            q = conf.clamp(1e-6, 1 - 1e-6)
            c = torch.sigmoid(slope * torch.log(q / (1 - q)) + intercept)
            cum = c if self._cumulative is None else self._cumulative * c
            self._cumulative = cum
            if float(cum.sum()) < rule.gain_threshold or bool((cum < rule.floor).all()):
                self._stop_next = True
        return tokens

    def _propose(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._tokens, self._confidences = [], []
        self._cumulative, self._drafting, self._stop_next = None, None, False
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
