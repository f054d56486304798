"""The tests' oracle for per-request verify lengths: what a step with lengths K_i is predicted to
give, from the model's timing and policy (the engine itself only predicts uniform K,
`EfficiencyModel.predict_all`, and trims with `EfficiencyModel.trim`)."""

from __future__ import annotations

from collections.abc import Sequence

from specserve_engine.policy.goodput import EfficiencyModel, StepPrediction


def predict_lengths(
    model: EfficiencyModel,
    rows: Sequence[Sequence[float]],
    lengths: Sequence[int],
    context_len: float,
    extra_tokens: int = 0,
    draft_steps: int | None = None,
) -> StepPrediction:
    """Prediction for per-request lengths K_i (the drafter ran `draft_steps`, default max)."""
    b = len(rows)
    steps = max(lengths, default=0) if draft_steps is None else draft_steps
    gained = [sum(row[:k]) for row, k in zip(rows, lengths, strict=True)]
    draft = model.draft_seconds(b, context_len, steps, extra_tokens)
    verify = model.timing.verify_seconds(b, b + sum(lengths) + extra_tokens, context_len)
    host = model.timing.host_seconds(b, context_len)
    step = draft + verify + host
    if not b:
        tpot = 0.0
    elif model.policy.tpot_aggregate == "mean":
        tpot = step / b * sum(1 / (1 + g) for g in gained)
    else:
        tpot = step / (1 + min(gained))
    return StepPrediction(steps, b, b + sum(gained), draft, verify, tpot, host)
