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
    # The target must be order 1e8 parameters for speculation to pay at batch 1 on a CPU,
    # and the draft at least 50x smaller for drafting to be cheap.
    assert tiny_models.info["target_parameters"] > 5e7
    assert tiny_models.info["target_parameters"] > 50 * tiny_models.info["draft_parameters"]
    assert (tiny_models.target / "tokenizer.json").is_file()
    assert (tiny_models.draft / "tokenizer.json").read_bytes() == (
        tiny_models.target / "tokenizer.json"
    ).read_bytes()


def test_widened_target_predicts_like_the_core(tiny_models: tiny.TinyModels) -> None:
    """Greedy next tokens of the widened target agree with the HF core it was built from."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models.target)
    target = AutoModelForCausalLM.from_pretrained(tiny_models.target)
    prompt = tiny.heldout_prompts(tiny_models, 1, chars=400, seed=3)[0]
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        logits = target(ids).logits[0]
    # A model whose function was destroyed by the widening would predict near-uniformly.
    top = torch.softmax(logits, -1).max(-1).values
    assert float(top.mean()) > 0.2
