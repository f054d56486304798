"""Framework-free policy math: numbers in, decisions out (no vLLM, no torch).

- `params`: `Policy` / `ModelParams`, the contract the operator pushes to engines.
- `profile`: `Profile`, measured step times and acceptance (the JSON `specserve profile` writes).
- `timing`: `StepTimeModel`, predicted draft and verify step times, refitted online.
- `model_error`: the fitted timing model's error per (batch, K) cell of a profile.
- `acceptance`: `AcceptanceModel`, c_ij from calibrated draft confidences and acceptance history.
- `goodput`: `EfficiencyModel`, K (and per-request K_i) maximising goodput under the TPOT SLO.
- `cost`: `decision_cost_seconds`, what the per-step decisions cost on this machine.
"""

from specserve_contract import K_LIMIT
from specserve_engine.policy.acceptance import AcceptanceModel, fit_acceptance
from specserve_engine.policy.cost import decision_cost_seconds
from specserve_engine.policy.goodput import (
    EfficiencyModel,
    StepPrediction,
    lengths_above_threshold,
)
from specserve_engine.policy.params import (
    LogisticCalibration,
    ModelParams,
    Policy,
    SloTargets,
    TimingCoefficients,
    validation_message,
)
from specserve_engine.policy.profile import AcceptanceProfile, MachineInfo, Profile, ProfilePoint
from specserve_engine.policy.timing import StepObservation, StepTimeModel, fit_coefficients

__all__ = [
    "K_LIMIT",
    "AcceptanceModel",
    "AcceptanceProfile",
    "EfficiencyModel",
    "LogisticCalibration",
    "MachineInfo",
    "ModelParams",
    "Policy",
    "Profile",
    "ProfilePoint",
    "SloTargets",
    "StepObservation",
    "StepPrediction",
    "StepTimeModel",
    "TimingCoefficients",
    "decision_cost_seconds",
    "fit_acceptance",
    "fit_coefficients",
    "lengths_above_threshold",
    "validation_message",
]
