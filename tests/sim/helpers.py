"""Shared pieces of the simulator tests: exact synthetic ground truth, recorded queries."""

from __future__ import annotations

import random

from specserve_engine.trace_replay.trace import TraceRow
from specserve_sim.groundtruth import GroundTruth, StepTimeTable, VerificationSampler
from specserve_sim.interface import SimRequest


class LinearSteps:
    """Exact step times (no table): target = 10 ms + 0.1 ms per token, draft 1 ms, host 1 ms.
    Records every query, so tests can check what the replica scheduled."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, int, int, float]] = []

    def step_seconds(self, role: str, num_requests: int, num_tokens: int,
                     context_len: float) -> float:
        self.queries.append((role, num_requests, num_tokens, context_len))
        return {"target": 0.010 + 1e-4 * num_tokens, "draft": 0.001, "host": 0.001}.get(role, 0.0)


def sampler(accept_all: bool = False, seed: int = 0) -> VerificationSampler:
    """Synthetic verification records with request ids (5 drafts each)."""
    rng = random.Random(seed)
    records = []
    for i in range(20):
        for _ in range(10):
            probs = [rng.uniform(0.3, 1.0) for _ in range(5)]
            accepted = 0
            while accepted < 5 and (accept_all or rng.random() < probs[accepted]):
                accepted += 1
            records.append((probs, 5, accepted, f"r{i}"))
    return VerificationSampler(records, source="synthetic test records")


def truth(accept_all: bool = False) -> tuple[GroundTruth, LinearSteps]:
    steps = LinearSteps()
    return GroundTruth(steps, sampler(accept_all), "synthetic test"), steps


def requests(n: int, gap: float = 0.05, prompt: int = 40, output: int = 20) -> list[SimRequest]:
    return [SimRequest(str(i), i * gap, prompt, output) for i in range(n)]


def trace_rows(n: int = 300, seed: int = 3) -> list[TraceRow]:
    """A synthetic trace (Poisson arrivals, log-normal lengths like the Azure trace's)."""
    rng = random.Random(seed)
    rows, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(1.0)
        rows.append(TraceRow(t, max(1, int(rng.lognormvariate(6.5, 0.7))),
                             max(1, int(rng.lognormvariate(5.0, 0.8)))))
    return rows


def table_from(fn, batches, per_request, contexts, roles=("target",)) -> StepTimeTable:
    """A table whose every grid cell holds fn(b, n, L) exactly."""
    return StepTimeTable([(role, b, b * u, ctx, fn(b, b * u, ctx))
                          for role in roles for b in batches for u in per_request
                          for ctx in contexts])
