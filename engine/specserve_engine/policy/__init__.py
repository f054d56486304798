"""Framework-free policy math: numbers in, decisions out (no vLLM, no torch)."""

from specserve_engine.policy.params import (
    K_LIMIT,
    LogisticCalibration,
    ModelParams,
    Policy,
    SloTargets,
    TimingCoefficients,
    validation_message,
)

__all__ = [
    "K_LIMIT",
    "LogisticCalibration",
    "ModelParams",
    "Policy",
    "SloTargets",
    "TimingCoefficients",
    "validation_message",
]
