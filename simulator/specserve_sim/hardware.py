"""A GPU step-time model from published figures, with the same interface as `StepTimeTable`.

Target: SpecDecode-Bench (arXiv 2601.11580) fitted Llama-3.1-8B on an H100 as

    t_target = 3.93e-8 s x KV tokens + 2.10e-5 s x batched tokens + 5.89e-3 s

plus 1.21 ms per step, which is taken here as the host's share of an engine cycle (scheduling,
sampling, output processing: the "host" role), paid once per step. KV tokens = requests x mean
context.

Draft (an assumption: the paper's fit is for the target only). A Llama-3.2-1B draft, each term
scaled by what drives it:
- per batched token (weight FLOPs): parameter ratio 1.24e9 / 8.03e9 = 0.154;
- per KV token (attention reads): KV bytes per token, 16 layers x 8 KV heads x 64 dims against
  32 x 8 x 128, = 0.25;
- fixed per forward (at small batch mostly reading the weights once): the parameter ratio again,
  with a floor of 0.5 ms for the launches of 16 layers that no weight count removes. That floor is
  a guess of this module, not a measurement; `HardwareModel` takes any other numbers.
Each draft position is one such forward over one token per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from specserve_engine.policy import Profile, ProfilePoint

_PARAMS_8B, _PARAMS_1B = 8.03e9, 1.24e9
_KV_8B, _KV_1B = 32 * 8 * 128, 16 * 8 * 64


@dataclass(frozen=True)
class ForwardCost:
    """Seconds of one forward: fixed + per batched token + per KV token read."""

    fixed_s: float
    per_token_s: float
    per_kv_token_s: float

    def seconds(self, num_requests: int, num_tokens: int, context_len: float) -> float:
        return (self.fixed_s + self.per_token_s * num_tokens
                + self.per_kv_token_s * num_requests * context_len)


# SpecDecode-Bench's fit of Llama-3.1-8B on H100.
LLAMA31_8B_H100 = ForwardCost(fixed_s=5.89e-3, per_token_s=2.10e-5, per_kv_token_s=3.93e-8)
H100_HOST_S = 1.21e-3
# The draft assumption of the module docstring.
LLAMA32_1B_H100 = ForwardCost(
    fixed_s=max(LLAMA31_8B_H100.fixed_s * _PARAMS_1B / _PARAMS_8B, 0.5e-3),
    per_token_s=LLAMA31_8B_H100.per_token_s * _PARAMS_1B / _PARAMS_8B,
    per_kv_token_s=LLAMA31_8B_H100.per_kv_token_s * _KV_1B / _KV_8B,
)


@dataclass(frozen=True)
class HardwareModel:
    """`step_seconds(role, ...)` from per-role forward costs and a fixed host time per step."""

    target: ForwardCost = LLAMA31_8B_H100
    draft: ForwardCost = LLAMA32_1B_H100
    host_s: float = H100_HOST_S
    name: str = "Llama-3.1-8B target, Llama-3.2-1B draft (assumed), H100 (SpecDecode-Bench fit)"

    def step_seconds(self, role: str, num_requests: int, num_tokens: int,
                     context_len: float) -> float:
        if num_requests < 1:
            return 0.0
        if role == "target":
            return self.target.seconds(num_requests, num_tokens, context_len)
        if role == "draft":
            return self.draft.seconds(num_requests, num_tokens, context_len)
        if role == "host":
            return self.host_s
        return 0.0


def grid_profile(model: HardwareModel, batch_sizes: tuple[int, ...] = (1, 4, 16, 64, 256),
                 tokens_per_request: tuple[int, ...] = (1, 2, 4, 6),
                 context_lens: tuple[float, ...] = (256.0, 1024.0, 4096.0)) -> Profile:
    """What `specserve profile` would measure on this hardware, one point per grid cell (target
    forwards, draft forwards, host time per cycle): the simulated policy's starting model,
    fitted by the policy itself."""
    points = []
    for b in batch_sizes:
        for ctx in context_lens:
            for u in tokens_per_request:
                points.append(ProfilePoint(
                    role="target", num_requests=b, num_tokens=b * u, context_len=ctx,
                    seconds=model.step_seconds("target", b, b * u, ctx)))
            for role in ("draft", "host"):
                points.append(ProfilePoint(role=role, num_requests=b, num_tokens=b,
                                           context_len=ctx,
                                           seconds=model.step_seconds(role, b, b, ctx)))
    return Profile(target_model="simulated target", draft_model="simulated draft",
                   device=model.name, points=points)
