"""`specserve plan`: trace + SLO + hardware model -> replicas needed per load level.

For each load level (requests/s) the table gives the replicas a deployment needs so that
predicted TPOT stays within the SLO, with adaptive speculation (K chosen per batch by the
engine's own efficiency model, as the operator's autoscaler computes capacity) and without it
(K = 0), and the saving. Capacity per replica is `autoscale.capacity_per_replica`: the largest
batch whose predicted TPOT meets `tpot_seconds * tpot_headroom`, at the K the engine would
choose, divided into requests/s by the trace's mean output length; the count is
`ceil(rate / (capacity * target_utilization))`, exactly the operator's raw recommendation. The
step times are the hardware model's, as a profile of it gives them to the policy.

It is a planning table, not a simulation: queueing, prefill bursts and cold starts are what
`specserve simulate` and bench/sim_studies.py add. Read the counts as the floor a platform team
provisions against, and the ratio between the two columns as what speculation is worth there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from specserve_engine.policy.params import ModelParams, Policy, SloTargets
from specserve_engine.policy.timing import fit_coefficients
from specserve_operator.autoscale import AutoscaleConfig, Capacity, capacity_per_replica
from specserve_sim.hardware import HardwareModel
from specserve_sim.interface import SimRequest


def hardware_params(hw: HardwareModel, batches: Sequence[int] = (1, 4, 16, 64, 256, 512),
                    ks: Sequence[int] = (0, 1, 3, 5),
                    contexts: Sequence[float] = (256.0, 1024.0, 4096.0)) -> ModelParams:
    """The policy's timing model fitted to the hardware model's step times on a profile grid
    (the target's step includes the host's share, as the profiler times a whole step)."""
    target = [(b, b * (k + 1), c, hw.step_seconds("target", b, b * (k + 1), c)
               + hw.step_seconds("host", b, b * (k + 1), c))
              for b in batches for k in ks for c in contexts]
    draft = [(b, b, c, hw.step_seconds("draft", b, b, c)) for b in batches for c in contexts]
    return ModelParams(target=fit_coefficients(target), draft=fit_coefficients(draft),
                       source=f"fit to {hw.name}")


@dataclass(frozen=True)
class PlanRow:
    rate: float
    adaptive: int
    off: int
    adaptive_capacity: Capacity
    off_capacity: Capacity

    @property
    def saving(self) -> float:
        return 1.0 - self.adaptive / self.off if self.off else 0.0


def replicas_for(rate: float, capacity: Capacity, utilization: float) -> int:
    """The operator's raw count: ceil(rate / (capacity x utilisation)), at least 1."""
    return max(1, math.ceil(rate / max(capacity.requests_per_s * utilization, 1e-9) - 1e-9))


def plan(requests: Sequence[SimRequest], rates: Sequence[float], tpot_s: float,
         acceptance: float, model: ModelParams, k_max: int = 5, tpot_headroom: float = 0.9,
         config: AutoscaleConfig | None = None) -> list[PlanRow]:
    """One row per load level (module doc). `requests` give the mean lengths."""
    if not requests:
        raise ValueError("no requests to plan for")
    c = config or AutoscaleConfig()
    out_tok = sum(r.output_tokens for r in requests) / len(requests)
    prompt = sum(r.prompt_tokens for r in requests) / len(requests)
    context = prompt + out_tok / 2  # as slo_loop.scale_decision: mid-generation context
    slo = SloTargets(tpot_seconds=tpot_s)
    adaptive = Policy(k_max=k_max, slo=slo, tpot_headroom=tpot_headroom, model=model)
    off = adaptive.model_copy(update={"mode": "off"})
    prefill = prompt if c.price_prefill else 0.0
    cap_a = capacity_per_replica(adaptive, acceptance, out_tok, context, c.max_batch,
                                 prompt_tokens=prefill)
    cap_o = capacity_per_replica(off, acceptance, out_tok, context, c.max_batch,
                                 prompt_tokens=prefill)
    return [PlanRow(r, replicas_for(r, cap_a, c.target_utilization),
                    replicas_for(r, cap_o, c.target_utilization), cap_a, cap_o)
            for r in rates]


def markdown(rows: Sequence[PlanRow], header: str = "") -> str:
    lines = [header] if header else []
    if rows:
        a, o = rows[0].adaptive_capacity, rows[0].off_capacity
        lines.append(f"Capacity per replica: adaptive {a.describe()}; no speculation "
                     f"{o.describe()}.\n")
    lines.append("| load req/s | replicas, adaptive speculation | replicas, no speculation "
                 "| saving |")
    lines.append("|---|---|---|---|")
    lines += [f"| {r.rate:g} | {r.adaptive} | {r.off} | {r.saving:.0%} |" for r in rows]
    return "\n".join(lines) + "\n"


def default_rates(requests: Sequence[SimRequest], levels: int = 8,
                  top: float | None = None) -> list[float]:
    """Load levels from the trace's own mean rate up to `top` (default 64x it), doubling."""
    if len(requests) < 2:
        return [1.0]
    span = requests[-1].arrival - requests[0].arrival
    base = (len(requests) - 1) / span if span > 0 else 1.0
    out, r = [], base
    while len(out) < levels and (top is None or r <= top * (1 + 1e-9)):
        out.append(round(r, 2))
        r *= 2
    return out
