"""`specserve serve` rejects bad input with one clear line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from specserve_engine.serving import ServeConfig, UserError, vllm_serve_argv


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "specserve_engine.cli", "serve", *args],
        capture_output=True, text=True, timeout=120,
    )


def test_missing_model_dir(tmp_path: Path) -> None:
    res = _serve("--model", str(tmp_path / "nope"), "--draft", "none")
    assert res.returncode == 2
    assert "does not exist" in res.stderr
    assert "Traceback" not in res.stderr


def test_not_a_causal_lm(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    res = _serve("--model", str(tmp_path), "--draft", "none")
    assert res.returncode == 2
    assert "not a causal LM" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("k", ["0", "17", "-1"])
def test_k_max_out_of_range(k: str) -> None:
    res = _serve("--k-max", k)
    assert res.returncode == 2
    assert "--k-max" in res.stderr


def test_draft_with_other_vocab_is_refused(tiny_models, tmp_path: Path) -> None:
    draft = tmp_path / "draft"
    draft.mkdir()
    cfg = json.loads((tiny_models.draft / "config.json").read_text())
    cfg["vocab_size"] = cfg["vocab_size"] + 1
    (draft / "config.json").write_text(json.dumps(cfg))
    (draft / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="share a tokenizer"):
        ServeConfig(model=tiny_models.target, draft=str(draft)).resolved()


def test_argv_carries_the_speculative_config(tiny_models) -> None:
    cfg = ServeConfig(model=tiny_models.target, draft=str(tiny_models.draft), k_max=4).resolved()
    argv = vllm_serve_argv(cfg)
    spec = json.loads(argv[argv.index("--speculative-config") + 1])
    assert spec == {"method": "draft_model", "model": str(tiny_models.draft),
                    "num_speculative_tokens": 4,
                    "num_speculative_tokens_per_batch_size": [[1, 1024, 4]]}
    assert argv[argv.index("--scheduler-cls") + 1].endswith("AdaptiveScheduler")
    baseline = vllm_serve_argv(ServeConfig(model=tiny_models.target, draft=str(tiny_models.draft),
                                           k_max=4, specserve=False).resolved())
    assert "--scheduler-cls" not in baseline
    plain = vllm_serve_argv(ServeConfig(model=tiny_models.target, draft="none").resolved())
    assert "--speculative-config" not in plain


def test_cached_profile_is_used_unless_profile_none(tiny_models, tmp_path: Path) -> None:
    from specserve_engine.cli import _serve_config, build_parser

    model = tmp_path / "target"
    model.mkdir()
    for f in tiny_models.target.iterdir():
        if f.name != "specserve-profile.json":
            (model / f.name).symlink_to(f)
    cached = model / "specserve-profile.json"
    cached.write_text("{}")

    def profile_for(*flags: str) -> Path | None:
        args = build_parser().parse_args(["serve", "--model", str(model), "--draft", "none",
                                          *flags])
        return _serve_config(args).resolved().profile_file

    assert profile_for() == cached
    assert profile_for("--profile", "none") is None
    assert profile_for("--profile", str(cached)) == cached


def test_k_table_is_vllms_dynamic_sd_table_for_the_baseline(tiny_models) -> None:
    from specserve_engine.serving import parse_k_table

    table = parse_k_table("5-16:2,1-4:3,17-1024:0")
    assert table == ((1, 4, 3), (5, 16, 2), (17, 1024, 0))
    cfg = ServeConfig(model=tiny_models.target, draft=str(tiny_models.draft), k_max=3,
                      specserve=False, k_table=table).resolved()
    argv = vllm_serve_argv(cfg)
    spec = json.loads(argv[argv.index("--speculative-config") + 1])
    assert spec["num_speculative_tokens_per_batch_size"] == [[1, 4, 3], [5, 16, 2], [17, 1024, 0]]
    for bad in ("1-4", "2-4:3", "1-4:3,6-9:1", "1-4:-1", "a-b:c"):
        with pytest.raises(UserError, match="--k-table"):
            parse_k_table(bad)
    with pytest.raises(UserError, match="--no-specserve"):
        ServeConfig(model=tiny_models.target, draft=str(tiny_models.draft), k_max=3,
                    k_table=table).resolved()


def test_bad_k_table_is_one_clear_line() -> None:
    result = _serve("--k-table", "1-4:x", "--no-specserve")
    assert result.returncode == 2
    assert "--k-table entry '1-4:x'" in result.stderr and "Traceback" not in result.stderr


def test_negative_calibration_prompts_is_one_clear_line(tiny_models) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "specserve_engine.cli", "profile", "--calibration-prompts", "-1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--calibration-prompts must be >= 0" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--data-parallel-size", "2"], ["-dp", "4"],
                                  ["--data-parallel-size=2"], ["--data_parallel_size", "2"]])
def test_data_parallel_is_refused_with_the_reason(args: list[str]) -> None:
    """Each data-parallel rank is an EngineCore process of its own: each would bind the one
    control port, and a pushed policy would reach one rank only (docs/vllm-seams.md)."""
    with pytest.raises(UserError, match="one vLLM EngineCore per engine pod") as refused:
        ServeConfig(extra_vllm_args=["--max-model-len", "512", *args]).resolved()
    assert str(refused.value).startswith(args[0].split("=")[0] + ":")
    assert "SPECSERVE_CONTROL_PORT" in str(refused.value)


def test_data_parallel_is_refused_before_vllm_starts() -> None:
    res = _serve("--", "-dp", "2")
    assert res.returncode == 2
    assert "-dp: SpecServe needs one vLLM EngineCore per engine pod" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_plain_vllm_baseline_may_use_data_parallelism(tiny_models) -> None:
    cfg = ServeConfig(model=tiny_models.target, draft=str(tiny_models.draft), specserve=False,
                      extra_vllm_args=["-dp", "2"]).resolved()
    assert vllm_serve_argv(cfg)[-2:] == ["-dp", "2"]
