"""The trace-replay bench's configurations as simulated replicas (trace_replay/runner.py).

Each bench configuration is one `specserve serve` command line; here it is the `ReplicaConfig`
that behaves the same way:
- "off": no draft model;
- "K=k": vLLM's own speculation with `--k-max k --no-specserve` (K = k every step, no trim);
- "dynamic-sd": vLLM's Dynamic-SD table (`runner.DYNAMIC_SD_TABLE`), K_max 5, no SpecServe;
- "threshold-0.6": SpecServe in mode threshold, K_max 5 (the engine's start-up policy from
  `--mode threshold`; its step-time model is unused by that mode);
- "adaptive": SpecServe with the bench's policy file (mode adaptive, K_max 5, the TPOT SLO) and
  the step-time profile the bench passed (`--profile`, else the model folder's).
"""

from __future__ import annotations

from specserve_engine.policy import Policy, Profile, SloTargets
from specserve_engine.serving import parse_k_table
from specserve_engine.trace_replay.runner import DYNAMIC_SD_TABLE, K_MAX, STATIC_KS
from specserve_sim.replica import ReplicaConfig

BENCH_CONFIGS = ("off", *(f"K={k}" for k in STATIC_KS), "dynamic-sd", "threshold-0.6",
                 "adaptive")


def bench_config(name: str, tpot_slo_s: float, profile: Profile | None = None,
                 policy: Policy | None = None) -> ReplicaConfig:
    """The replica a bench configuration starts (`policy`: the adaptive policy file's)."""
    if name == "off":
        return ReplicaConfig(name, Policy(mode="off", k_max=0, static_k=0), engine_k_max=0,
                             specserve=False)
    if name.startswith("K=") and name[2:].isdigit():
        k = int(name[2:])
        return ReplicaConfig(name, Policy(mode="static", k_max=k, static_k=k), engine_k_max=k,
                             specserve=False)
    if name == "dynamic-sd":
        return ReplicaConfig(name, Policy(mode="static", k_max=K_MAX, static_k=K_MAX),
                             engine_k_max=K_MAX, specserve=False,
                             k_table=parse_k_table(DYNAMIC_SD_TABLE))
    if name == "threshold-0.6":
        return ReplicaConfig(name, Policy(mode="threshold", k_max=K_MAX, static_k=3),
                             engine_k_max=K_MAX, profile=profile)
    if name == "adaptive":
        start = policy or Policy(mode="adaptive", k_max=K_MAX,
                                 slo=SloTargets(tpot_seconds=tpot_slo_s))
        return ReplicaConfig(name, start, engine_k_max=K_MAX, profile=profile)
    raise ValueError(f"unknown bench configuration {name!r}; known: {', '.join(BENCH_CONFIGS)}")
