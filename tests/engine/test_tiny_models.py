"""The tiny models are reproducible, cached, and look like real HF causal LMs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from specserve_engine import tiny


def test_build_is_deterministic(tmp_path: Path) -> None:
    quiet = lambda _msg: None  # noqa: E731
    first = tiny.build(tiny.MICRO_RECIPE, tmp_path / "a", progress=quiet)
    second = tiny.build(tiny.MICRO_RECIPE, tmp_path / "b", progress=quiet)
    assert first.info["target_digest"] == second.info["target_digest"]
    assert first.info["draft_digest"] == second.info["draft_digest"]
    # The digest recorded at build time is the digest of what is on disk.
    assert tiny.weights_digest(second.target) == first.info["target_digest"]


def test_second_build_comes_from_the_cache(tmp_path: Path) -> None:
    quiet = lambda _msg: None  # noqa: E731
    tiny.build(tiny.MICRO_RECIPE, tmp_path, progress=quiet)
    t0 = time.monotonic()
    again = tiny.build(tiny.MICRO_RECIPE, tmp_path, progress=quiet)
    assert time.monotonic() - t0 < 5
    assert again.info["build_seconds"] > 0


def test_target_is_a_widened_core_and_draft_is_small(tiny_models: tiny.TinyModels) -> None:
    recipe = tiny.TinyRecipe()
    cfg = json.loads((tiny_models.target / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_hidden_layers"] == recipe.target.layers
    assert cfg["hidden_size"] == recipe.target.hidden
    # The target must cost a real model's step time (tens of millions of parameters over many
    # layers), and the draft must be at least 30x smaller for drafting to be cheap.
    assert tiny_models.info["target_parameters"] > 2e7
    assert tiny_models.info["target_parameters"] > 30 * tiny_models.info["draft_parameters"]
    assert (tiny_models.target / "tokenizer.json").is_file()
    assert (tiny_models.draft / "tokenizer.json").read_bytes() == (
        tiny_models.target / "tokenizer.json"
    ).read_bytes()


def test_target_keeps_the_trained_core_function(tiny_models: tiny.TinyModels) -> None:
    """The enlarged target still models held-out code (a destroyed function would be near
    uniform: cross-entropy ln(2048) = 7.6 nats per token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models.target)
    target = AutoModelForCausalLM.from_pretrained(tiny_models.target)
    text = "".join(tiny.heldout_prompts(tiny_models, 4, chars=600, seed=3))
    ids = torch.tensor([tok(text)["input_ids"][:512]])
    with torch.no_grad():
        loss = target(ids, labels=ids).loss.item()
    assert loss < 5.0, f"held-out cross-entropy {loss:.2f} nats/token"


def test_the_mismatched_draft_is_the_draft_with_its_outputs_rotated(
    tiny_models: tiny.TinyModels,
) -> None:
    """Same weights, same confidence, next token id: a draft whose proposals the target almost
    never accepts (bench/crossover.py --draft mismatched)."""
    from safetensors.torch import load_file

    path = tiny.mismatched_draft(tiny_models)
    assert tiny.mismatched_draft(tiny_models) == path  # built once
    real = load_file(str(tiny_models.draft / "model.safetensors"))
    wrong = load_file(str(path / "model.safetensors"))
    assert real.keys() == wrong.keys()
    assert all((real[k] == wrong[k]).all() for k in real if k != "lm_head.weight")
    assert (wrong["lm_head.weight"] == real["lm_head.weight"].roll(1, dims=0)).all()
    assert (path / "config.json").read_bytes() == (tiny_models.draft / "config.json").read_bytes()
