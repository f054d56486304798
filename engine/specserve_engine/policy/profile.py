"""Profile: measured step times of the target and draft models on this hardware, and how
often the target accepts the draft's tokens.

`specserve profile` drives the engine through a grid of batch sizes x context lengths (and, for
the target, several tokens per request, as when verifying K+1 tokens) and writes one point per
grid cell: the median seconds of one forward step over `repeats` runs. `StepTimeModel` fits
its coefficients to these points. It then drafts on diverse prompts and stores the acceptance
calibration fitted to the outcomes (`acceptance`), so an engine starts calibrated instead of
learning the calibration online from the identity, which under-drafts for its first minute.

JSON shape (`Profile.save` / `Profile.load`):

    {"version": 1, "target_model": "...", "draft_model": "...", "device": "...",
     "machine": {"cpu_model": "AMD EPYC", "isa": ["avx2"], "accelerator": ""},
     "dtype": "float32", "meta": {"vllm": "0.32.0"},
     "points": [{"role": "target", "num_requests": 8, "num_tokens": 32,
                 "context_len": 512.0, "seconds": 0.0213, "repeats": 5}, ...],
     "acceptance": {"calibration": [{"slope": 0.4, "intercept": 2.0}, ...],
                    "prior_acceptance": 0.62, "outcomes": 950, "k": 5}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from specserve_contract import K_LIMIT
from specserve_engine.policy.params import LogisticCalibration

Role = Literal["target", "draft", "host"]


class ProfilePoint(BaseModel):
    """One measured step: `num_requests` requests, `num_tokens` tokens in total."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    num_requests: int = Field(ge=1)
    num_tokens: int = Field(ge=1, description="all tokens in the step, >= num_requests")
    context_len: float = Field(ge=0, description="mean KV context length per request")
    seconds: float = Field(gt=0, description="median step time")
    repeats: int = Field(default=1, ge=1, description="measurements behind the median")

    @model_validator(mode="after")
    def _at_least_one_token_per_request(self) -> Self:
        if self.num_tokens < self.num_requests:
            raise ValueError(
                f"num_tokens ({self.num_tokens}) must be >= num_requests ({self.num_requests})")
        return self


class AcceptanceProfile(BaseModel):
    """Acceptance fitted to the verifications of a static-K run on diverse prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calibration: list[LogisticCalibration] = Field(default_factory=list, max_length=K_LIMIT)
    prior_acceptance: float = Field(gt=0, lt=1, description="mean per-token acceptance")
    outcomes: int = Field(ge=0, description="verified drafts behind the fit")
    k: int = Field(ge=1, le=K_LIMIT, description="draft length of the calibration run")


class MachineInfo(BaseModel):
    """Where a profile was measured: what its step times (and batched numerics) depend on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_model: str = Field(description="the CPU's model name, as /proc/cpuinfo gives it")
    isa: list[str] = Field(default_factory=list,
                           description="the ISA flags vLLM's CPU kernels depend on, if present")
    accelerator: str = Field(default="", description="GPU name; empty on CPU")

    def describe(self) -> str:
        flags = ", ".join(self.isa) or "no AVX2"
        return f"{self.accelerator} on {self.cpu_model}" if self.accelerator else \
            f"{self.cpu_model} ({flags})"


class Profile(BaseModel):
    """All measured points of one (target, draft, hardware) combination."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    target_model: str = ""
    draft_model: str = ""
    device: str = ""
    # Empty in profiles written before these were recorded: their origin is unknown.
    machine: MachineInfo | None = None
    dtype: str = Field(default="", description="the dtype vLLM computed in")
    meta: dict[str, str] = Field(default_factory=dict)
    points: list[ProfilePoint] = Field(default_factory=list)
    acceptance: AcceptanceProfile | None = None

    def mismatch(self, machine: MachineInfo, dtype: str) -> str | None:
        """Why this profile's step times may not hold for an engine on `machine` in `dtype`
        (None when they were measured on the same kind of machine in the same dtype)."""
        problems = []
        if self.machine is None or not self.dtype:
            problems.append("it does not say which machine and dtype it was measured with")
        else:
            if (self.machine.cpu_model, self.machine.isa, self.machine.accelerator) != (
                    machine.cpu_model, machine.isa, machine.accelerator):
                problems.append(f"it was measured on {self.machine.describe()}, this engine "
                                f"runs on {machine.describe()}")
            if dtype and self.dtype != dtype:
                problems.append(f"it was measured in {self.dtype}, this engine runs {dtype}")
        return "; ".join(problems) or None

    def for_role(self, role: Role) -> list[ProfilePoint]:
        return [p for p in self.points if p.role == role]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.model_validate_json(Path(path).read_text())
