"""Which machine and dtype an engine runs on; the warning for a profile measured elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from specserve_engine import tiny
from specserve_engine.machine import parse_cpuinfo, resolve_dtype, this_machine
from specserve_engine.policy import MachineInfo, Profile
from specserve_engine.serving import UserError, profile_warning

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx fma avx2 bmi2 sha_ni
processor\t: 1
model name\t: AMD EPYC
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""


def test_cpuinfo_gives_the_model_name_and_the_flags_vllm_kernels_depend_on() -> None:
    epyc, xeon = parse_cpuinfo(EPYC), parse_cpuinfo(XEON)
    assert epyc == MachineInfo(cpu_model="AMD EPYC", isa=["avx2"])
    assert xeon.cpu_model.startswith("Intel(R) Xeon(R)")
    assert xeon.isa == ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"]
    assert parse_cpuinfo("", "aarch64").cpu_model == "aarch64"


def test_auto_dtype_is_bf16_only_where_the_cpu_computes_bf16_natively() -> None:
    epyc, xeon = parse_cpuinfo(EPYC), parse_cpuinfo(XEON)
    assert resolve_dtype("auto", "float32", True, epyc) == "float32"
    assert resolve_dtype("auto", "float32", True, xeon) == "bfloat16"
    assert resolve_dtype("auto", "bfloat16", True, epyc) == "bfloat16"  # the checkpoint's own
    assert resolve_dtype("bfloat16", "float32", True, epyc) == "bfloat16"  # asked for
    assert resolve_dtype("auto", "float32", False, epyc) == "auto"  # GPU: vLLM decides
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8", "float32", True, epyc)


def test_a_profile_names_what_differs_from_the_engine_it_is_loaded_into() -> None:
    epyc, xeon = parse_cpuinfo(EPYC), parse_cpuinfo(XEON)
    profile = Profile(machine=xeon, dtype="bfloat16")
    assert profile.mismatch(xeon, "bfloat16") is None
    other_cpu = profile.mismatch(epyc, "bfloat16")
    assert other_cpu and "Xeon" in other_cpu and "AMD EPYC" in other_cpu
    other_dtype = profile.mismatch(xeon, "float32")
    assert other_dtype and "bfloat16" in other_dtype and "float32" in other_dtype
    assert "does not say" in (Profile().mismatch(epyc, "float32") or "")
    # A profile round-trips with what it records.
    assert Profile.model_validate_json(profile.model_dump_json()) == profile


def test_profile_warning_says_what_to_do_and_a_broken_profile_is_one_clear_error(
    tmp_path: Path,
) -> None:
    foreign = tmp_path / "foreign.json"
    Profile(machine=MachineInfo(cpu_model="Some Other CPU", isa=["avx2", "amx_bf16"]),
            dtype="bfloat16").save(foreign)
    warning = profile_warning(foreign, "float32")
    assert warning and "Some Other CPU" in warning and "specserve profile" in warning
    here = tmp_path / "here.json"
    Profile(machine=this_machine(), dtype="float32").save(here)
    assert profile_warning(here, "float32") is None
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"version": 1, "points": [{"role": "nope"}]}))
    with pytest.raises(UserError, match="is not a SpecServe profile"):
        profile_warning(broken, "float32")


def test_serve_refuses_a_broken_profile_in_one_line(tmp_path: Path,
                                                   tiny_models: tiny.TinyModels) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    res = subprocess.run(
        [sys.executable, "-m", "specserve_engine.cli", "serve", "--model",
         str(tiny_models.target), "--draft", str(tiny_models.draft), "--profile", str(broken)],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "is not a SpecServe profile" in res.stderr and "Traceback" not in res.stderr
