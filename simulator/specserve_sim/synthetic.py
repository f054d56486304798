"""Synthetic ground truth from seeded formulas: a stand-in for tests and the speed run only.

Nothing measured here; no simulated claim may rest on these. They have the shape of the real
records (`SPECSERVE_RECORD_STEPS` / `SPECSERVE_RECORD_VERIFICATIONS` lines) so every code path
that reads the real files runs on them:
- steps: a CPU-like engine, target = 20 ms + 0.15 ms per batched token + KV reads, a draft at
  a tenth of that, 2 ms of host time per step, each with 5% log-normal noise;
- verifications: 200 requests, each with its own difficulty, drafting 5 tokens per step; the
  draft's confidence q is informative but over-confident (acceptance = q ** 1.5).
"""

from __future__ import annotations

import math
import random

from specserve_sim.groundtruth import GroundTruth, StepTimeTable, VerificationSampler


def _noisy(rng: random.Random, seconds: float) -> float:
    return seconds * math.exp(rng.gauss(0.0, 0.05))


def step_records(seed: int = 0) -> list[dict]:
    """Step records over batch 1..64, 1..6 tokens per request and prefill chunks."""
    rng = random.Random(f"synthetic-steps:{seed}")
    out = []
    for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        for per_request in (1, 2, 3, 4, 6):
            for ctx in (32.0, 96.0, 192.0, 320.0):
                for _ in range(3):
                    n = b * per_request + (rng.choice((0, 0, 0, 128, 256)) if b < 16 else 0)
                    c = ctx * math.exp(rng.gauss(0.0, 0.1))
                    out.append({"role": "target", "num_requests": b, "num_tokens": n,
                                "context_len": c,
                                "seconds": _noisy(rng, 0.020 + 1.5e-4 * n + 4e-7 * b * c)})
                    out.append({"role": "host", "num_requests": b, "num_tokens": n,
                                "context_len": c, "seconds": _noisy(rng, 0.002 + 2e-5 * b)})
            out.append({"role": "draft", "num_requests": b, "num_tokens": b, "context_len": ctx,
                        "seconds": _noisy(rng, 0.002 + 1.5e-5 * b + 4e-8 * b * ctx)})
    return out


def verification_records(seed: int = 0, requests: int = 200, steps: int = 20,
                         k: int = 5) -> list[dict]:
    """Per request, `steps` verifications of `k` drafts; acceptance = q ** 1.5."""
    rng = random.Random(f"synthetic-verifications:{seed}")
    out = []
    for i in range(requests):
        ease = rng.betavariate(5, 2)  # per request: how predictable its text is
        for _ in range(steps):
            probs = [min(max(ease + rng.gauss(0, 0.15), 0.02), 0.999) for _ in range(k)]
            accepted = 0
            while accepted < k and rng.random() < probs[accepted] ** 1.5:
                accepted += 1
            out.append({"probs": probs, "drafted": k, "accepted": accepted,
                        "request_id": f"synthetic-{i}"})
    return out


def ground_truth(seed: int = 0) -> GroundTruth:
    rows = step_records(seed)
    table = StepTimeTable(((r["role"], r["num_requests"], r["num_tokens"], r["context_len"],
                            r["seconds"]) for r in rows), source="synthetic")
    sampler = VerificationSampler(((v["probs"], v["drafted"], v["accepted"], v["request_id"])
                                   for v in verification_records(seed)), source="synthetic")
    return GroundTruth(table, sampler, "synthetic (seeded formulas, not measured)")
