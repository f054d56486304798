"""Which machine this is, and which dtype vLLM will compute in on it.

Step times and batched numerics both depend on the CPU's instruction set and the dtype: on an
AVX2-only CPU vLLM's float32 GEMMs are compute-bound from the first token, while a CPU with
AVX-512 BF16 / AMX runs bfloat16 weights bandwidth-bound up to tens of tokens (and its batched
bf16 arithmetic is not batch-invariant). A profile measured on one is wrong on the other, so a
profile records `MachineInfo` and the dtype, and `specserve serve` warns when they differ.

`parse_cpuinfo` and `resolve_dtype` are pure; `this_machine` reads /proc/cpuinfo.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

from specserve_engine.policy.profile import MachineInfo

# The ISA flags that change vLLM's CPU kernels (and so the cost structure and numerics).
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def parse_cpuinfo(text: str, arch: str = "") -> MachineInfo:
    """`MachineInfo` from the text of /proc/cpuinfo (the first processor's entry)."""
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return MachineInfo(cpu_model=model or arch or "unknown",
                       isa=[f for f in RELEVANT_FLAGS if f in flags])


@cache
def this_machine() -> MachineInfo:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def has_native_bf16(machine: MachineInfo) -> bool:
    return any(f in machine.isa for f in NATIVE_BF16_FLAGS)


def resolve_dtype(requested: str, checkpoint_dtype: str | None, on_cpu: bool,
                  machine: MachineInfo) -> str:
    """The dtype to hand vLLM, never "auto" on CPU, so it can be reported and recorded.

    vLLM's own "auto" casts a float32 checkpoint to bfloat16 on every x86 CPU. That is the fast
    choice where the CPU has native bf16 (AVX-512 BF16, AMX) and a slow one where it has not
    (AVX2: bf16 is emulated), so "auto" here means bfloat16 there and float32 elsewhere. On GPU
    "auto" stays vLLM's (the engine reports what it picked).
    """
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
    if requested != "auto" or not on_cpu:
        return requested
    if checkpoint_dtype in (None, "float32"):
        return "bfloat16" if has_native_bf16(machine) else "float32"
    return checkpoint_dtype
