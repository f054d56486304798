"""What one per-step decision costs on this machine: the policy must stay far below a step."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from specserve_engine.policy.goodput import EfficiencyModel
from specserve_engine.policy.params import Policy


def decision_cost_seconds(
    num_requests: int, k_max: int = 8, repeats: int = 50, seed: int = 0
) -> dict[str, float]:
    """Median seconds of each per-step decision for a batch of `num_requests` requests.

    - "choose_k": look-ahead rows from per-request rates, then `choose_k` (once per step);
    - "calibrate": c rows from k_max draft probabilities per request (once per step);
    - "trim": `trim` of those rows (once per step).
    """
    rng = random.Random(seed)
    policy = Policy(k_max=k_max, static_k=min(3, k_max), slo={"tpot_seconds": 0.05})
    model = EfficiencyModel(policy)
    ids = list(range(num_requests))
    for rid in ids:  # give every request some history so rates differ
        drafted = rng.randint(1, k_max or 1)
        model.acceptance.observe(drafted, rng.randint(0, drafted), rid)
    probs = [[rng.random() ** 0.3 for _ in range(k_max)] for _ in ids]
    context_len = 512.0

    def median(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    rows = model.acceptance.cumulative_batch(probs)
    return {
        "choose_k": median(lambda: model.choose_k_for(ids, context_len)),
        "calibrate": median(lambda: model.acceptance.cumulative_batch(probs)),
        "trim": median(lambda: model.trim(rows, context_len)),
    }
