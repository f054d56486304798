"""Deterministic tiny target/draft models for tests, demos and CPU benchmarks.

No model hub is reachable here, so SpecServe makes its own models from text every machine has: the
Python standard library's source. The recipe:

1. Corpus: stdlib ``.py`` files in sorted order; every 10th file (by a stable hash of its path) is
   held out for evaluation prompts, the rest is training text.
2. Tokenizer: byte-level BPE trained on the training text (``tokenizers``), saved as an HF fast
   tokenizer so vLLM loads it from the model directory.
3. A small *core* Llama and a smaller *draft* Llama, both trained from scratch on the same text,
   with fixed seeds and a fixed thread count (bit-for-bit reproducible on one kind of machine).
4. The *target* is the core made wide and deep enough to cost what a real target costs: hidden size
   and MLP width are zero-padded (RMSNorm weights rescaled so the padded model computes the same
   function) and extra layers whose output projections are zero are inserted; then every padded or
   inserted weight gets seeded noise of a small standard deviation. Dense kernels pay for the
   zeros, so the target's step time is that of a ~10^8-parameter model while its predictions are
   those of the trained core: draft/target agreement stays realistic (see README, "Tiny models").

Everything is cached under ``$SPECSERVE_CACHE`` (default: the user cache dir) in a folder named by
the hash of the recipe and the corpus, so a second call is instant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specserve_contract import ENV_CACHE

RECIPE_FORMAT = 2


@dataclass(frozen=True)
class LlamaShape:
    layers: int
    hidden: int
    heads: int
    intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the models; its hash names the cache folder."""

    vocab_size: int = 2048
    corpus_bytes: int = 6_000_000
    seq_len: int = 128
    batch_size: int = 16
    core: LlamaShape = LlamaShape(layers=3, hidden=256, heads=4, intermediate=512)
    draft: LlamaShape = LlamaShape(layers=1, hidden=128, heads=2, intermediate=352)
    target: LlamaShape = LlamaShape(layers=40, hidden=256, heads=4, intermediate=512)
    core_steps: int = 350
    draft_steps: int = 600
    learning_rate: float = 3e-3
    perturbation_std: float = 1e-3
    max_position_embeddings: int = 1024
    dtype: str = "float32"
    seed: int = 0
    threads: int = 2

    def key(self, corpus_digest: str) -> str:
        payload = json.dumps(
            {"format": RECIPE_FORMAT, "recipe": dataclasses.asdict(self), "corpus": corpus_digest},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# A recipe small enough to build in seconds: used by the determinism test.
MICRO_RECIPE = TinyRecipe(
    vocab_size=512,
    corpus_bytes=300_000,
    seq_len=64,
    batch_size=8,
    core=LlamaShape(layers=2, hidden=64, heads=2, intermediate=128),
    draft=LlamaShape(layers=1, hidden=32, heads=1, intermediate=64),
    target=LlamaShape(layers=3, hidden=128, heads=4, intermediate=256),
    core_steps=20,
    draft_steps=20,
)


@dataclass(frozen=True)
class TinyModels:
    """Paths of a built pair; ``target`` and ``draft`` are HF model folders with the tokenizer."""

    root: Path
    target: Path
    draft: Path
    heldout: Path
    info: dict[str, Any]


Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"[specserve tiny] {msg}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "specserve"


# ----------------------------------------------------------------------------------------------
# Corpus


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo"}
    files = [
        p
        for p in root.rglob("*.py")
        if not (skip & set(p.relative_to(root).parts)) and p.stat().st_size > 2000
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _is_heldout(relpath: str) -> bool:
    return int(hashlib.sha256(relpath.encode()).hexdigest(), 16) % 10 == 0


def load_corpus(limit_bytes: int) -> tuple[str, str]:
    """Return (training text, held-out text) from the stdlib source, deterministically."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train: list[str] = []
    heldout: list[str] = []
    size = 0
    for path in _stdlib_files():
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        if _is_heldout(rel):
            if sum(map(len, heldout)) < limit_bytes // 10:
                heldout.append(text)
            continue
        if size < limit_bytes:
            train.append(text)
            size += len(text)
    if size == 0:
        raise RuntimeError(f"no Python source found under {root}: cannot build the tiny models")
    return "\n".join(train)[:limit_bytes], "\n".join(heldout)


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _train_tokenizer(text: str, vocab_size: int, out_dir: Path) -> Any:
    # Rayon threads can change merge order on ties; one thread keeps the BPE merges reproducible.
    os.environ["RAYON_NUM_THREADS"] = "1"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = text.splitlines(keepends=True)
    tok.train_from_iterator((lines[i : i + 1000] for i in range(0, len(lines), 1000)), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    # A minimal chat template so /v1/chat/completions works on the tiny models.
    fast.chat_template = (
        "{% for m in messages %}# {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}# assistant:\n{% endif %}"
    )
    fast.save_pretrained(out_dir)
    return fast


# ----------------------------------------------------------------------------------------------
# Models


def _llama_config(shape: LlamaShape, recipe: TinyRecipe, eos_id: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        head_dim=shape.head_dim,
        max_position_embeddings=recipe.max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        torch_dtype=recipe.dtype,
    )


def _batches(ids: Any, recipe: TinyRecipe, seed: int) -> Iterator[Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = ids.numel() - recipe.seq_len - 1
    while True:
        starts = torch.randint(0, n, (recipe.batch_size,), generator=gen)
        yield torch.stack([ids[s : s + recipe.seq_len + 1] for s in starts.tolist()])


def _train(
    shape: LlamaShape, recipe: TinyRecipe, ids: Any, steps: int, seed: int, name: str,
    eos_id: int, progress: Progress, teacher: Any = None,
) -> Any:
    """Train a Llama of ``shape`` on ``ids``: next-token loss, or distillation from ``teacher``.

    The draft is distilled from the core (KL to the core's next-token distribution), as real
    draft models are: acceptance is agreement with the target, not accuracy on the text.
    """
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(shape, recipe, eos_id))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches = _batches(ids, recipe, seed + 1)
    start = time.monotonic()
    loss_avg = 0.0
    for step in range(steps):
        batch = next(batches)
        if teacher is None:
            # HF shifts labels internally: labels == inputs trains next-token prediction.
            loss = model(input_ids=batch, labels=batch).loss
        else:
            with torch.no_grad():
                target_logp = F.log_softmax(teacher(input_ids=batch).logits, -1)
            logp = F.log_softmax(model(input_ids=batch).logits, -1)
            loss = F.kl_div(logp.flatten(0, 1), target_logp.flatten(0, 1), log_target=True,
                            reduction="batchmean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_avg = loss.item() if step == 0 else 0.95 * loss_avg + 0.05 * loss.item()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            elapsed = time.monotonic() - start
            progress(
                f"{name}: step {step + 1}/{steps}  loss {loss_avg:.3f}  "
                f"({elapsed:.0f}s, eta {elapsed / (step + 1) * (steps - step - 1):.0f}s)"
            )
    model.eval()
    return model


def _widen_core_into_target(core: Any, recipe: TinyRecipe, eos_id: int, seed: int) -> Any:
    """Build the big target that computes (up to small noise) what the trained core computes."""
    import torch
    from transformers import LlamaForCausalLM

    c, t = recipe.core, recipe.target
    if t.head_dim != c.head_dim or t.hidden < c.hidden or t.intermediate < c.intermediate:
        raise ValueError("target shape must keep the core's head_dim and be at least as wide")
    if t.layers < c.layers:
        raise ValueError("target must have at least as many layers as the core")
    gen = torch.Generator().manual_seed(seed)
    target = LlamaForCausalLM(_llama_config(t, recipe, eos_id))
    std = recipe.perturbation_std
    # Zero-padding the residual stream from c.hidden to t.hidden divides its RMS by
    # sqrt(t.hidden / c.hidden); scaling the norm weights down by the same factor undoes that.
    norm_scale = math.sqrt(c.hidden / t.hidden)

    def noise(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    def pad(src: torch.Tensor, dst_shape: torch.Size) -> torch.Tensor:
        out = noise(dst_shape)
        out[tuple(slice(0, n) for n in src.shape)] = src
        return out

    csd = core.state_dict()
    # Core layers are spread evenly over the target's depth; the others start as identity
    # (zero output projections) plus noise.
    core_at = {round(i * (t.layers - 1) / max(1, c.layers - 1)) if c.layers > 1 else 0: i
               for i in range(c.layers)}
    new_sd = {}
    with torch.no_grad():
        for name, param in target.state_dict().items():
            if name.startswith("model.layers."):
                idx = int(name.split(".")[2])
                rest = ".".join(name.split(".")[3:])
                if idx in core_at:
                    src = csd[f"model.layers.{core_at[idx]}.{rest}"]
                    if rest.endswith("layernorm.weight"):
                        new = torch.ones_like(param)
                        new[: c.hidden] = src * norm_scale
                    else:
                        new = pad(src, param.shape)
                elif rest.endswith("layernorm.weight"):
                    new = torch.ones_like(param)
                elif rest.endswith(("o_proj.weight", "down_proj.weight")):
                    new = noise(param.shape)
                else:
                    new = torch.randn(param.shape, generator=gen) * 0.02
            elif name == "model.norm.weight":
                new = torch.ones_like(param)
                new[: c.hidden] = csd[name] * norm_scale
            else:  # embed_tokens, lm_head
                new = pad(csd[name], param.shape)
            new_sd[name] = new
        target.load_state_dict(new_sd)
    return target


def _save(model: Any, tokenizer: Any, out_dir: Path, dtype: str) -> None:
    import torch

    model.to(getattr(torch, dtype)).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def weights_digest(model_dir: Path) -> str:
    """sha256 over the safetensors files and tokenizer of a model folder (for reproducibility)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".safetensors", "tokenizer.json")):
            h.update(name.encode())
            h.update((model_dir / name).read_bytes())
    return h.hexdigest()


def count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for name in os.listdir(model_dir):
        if name.endswith(".safetensors"):
            with safe_open(str(model_dir / name), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    total += math.prod(f.get_slice(key).get_shape())
    return total


def build(
    recipe: TinyRecipe = TinyRecipe(),
    cache_dir: Path | None = None,
    *,
    force: bool = False,
    progress: Progress = _stderr,
) -> TinyModels:
    """Build (or load from cache) the tiny target/draft pair for ``recipe``."""
    train_text, heldout_text = load_corpus(recipe.corpus_bytes)
    digest = hashlib.sha256((train_text + "\0" + heldout_text).encode()).hexdigest()[:16]
    root = (cache_dir or default_cache_dir()) / "models" / recipe.key(digest)
    done = root / "info.json"
    if done.exists() and not force:
        return _models_at(root)

    import torch

    torch.manual_seed(recipe.seed)
    torch.use_deterministic_algorithms(True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    try:
        progress(f"building tiny models into {root} (recipe {root.name})")
        tokenizer = _train_tokenizer(train_text, recipe.vocab_size, tmp / "tokenizer")
        eos_id = tokenizer.eos_token_id
        ids = torch.tensor(tokenizer(train_text)["input_ids"], dtype=torch.long)
        progress(f"tokenizer: vocab {len(tokenizer)}, {ids.numel()} training tokens")
        core = _train(recipe.core, recipe, ids, recipe.core_steps, recipe.seed, "core", eos_id,
                      progress)
        draft = _train(recipe.draft, recipe, ids, recipe.draft_steps, recipe.seed + 100,
                       "draft (distilled from core)", eos_id, progress, teacher=core)
        target = _widen_core_into_target(core, recipe, eos_id, recipe.seed + 200)
        _save(target, tokenizer, tmp / "target", recipe.dtype)
        _save(draft, tokenizer, tmp / "draft", recipe.dtype)
        (tmp / "heldout.txt").write_text(heldout_text, encoding="utf-8")
        info = {
            "recipe": dataclasses.asdict(recipe),
            "corpus_digest": digest,
            "target_parameters": count_parameters(tmp / "target"),
            "draft_parameters": count_parameters(tmp / "draft"),
            "target_digest": weights_digest(tmp / "target"),
            "draft_digest": weights_digest(tmp / "draft"),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(False)
        shutil.rmtree(tmp, ignore_errors=True)
    progress(
        f"done in {info['build_seconds']}s: target {info['target_parameters'] / 1e6:.1f}M params, "
        f"draft {info['draft_parameters'] / 1e6:.2f}M params"
    )
    return _models_at(root)


def mismatched_draft(models: TinyModels) -> Path:
    """The draft with its output rows rotated by one token (built once, next to the pair): as
    fast and as confident as the real draft, and almost never right, so speculation never pays.
    Benchmarks use it for the regime where the best K is 0 whatever the batch: the confidences
    still say "accept", and only the calibration against observed acceptance can say otherwise."""
    out = models.root / "draft-mismatched"
    if (out / "config.json").exists():
        return out
    from safetensors.torch import load_file, save_file

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(models.draft, tmp)
    weights = load_file(str(tmp / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"].roll(1, dims=0).contiguous()
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _models_at(root: Path) -> TinyModels:
    info = json.loads((root / "info.json").read_text())
    return TinyModels(root, root / "target", root / "draft", root / "heldout.txt", info)


def heldout_prompts(models: TinyModels, n: int, chars: int = 200, seed: int = 0) -> list[str]:
    """``n`` prompts cut from held-out stdlib text (never seen in training), deterministically."""
    return text_prompts(models.heldout.read_text(encoding="utf-8"), n, chars, seed)


def text_prompts(text: str, n: int, chars: int = 200, seed: int = 0) -> list[str]:
    """``n`` prompts of about ``chars`` characters from random places of ``text``, deterministic."""
    import random

    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        start = rng.randrange(0, max(1, len(text) - chars))
        # Start at a line boundary so prompts look like real code.
        nl = text.find("\n", start)
        start = nl + 1 if 0 <= nl < start + chars else start
        prompts.append(text[start : start + chars])
    return prompts
