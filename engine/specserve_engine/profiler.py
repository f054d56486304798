"""`specserve profile`: measure this hardware's step-time curves with the real engine.

The engine itself is the instrument: SpecServe's scheduler times every step (schedule -> output,
minus the drafting time the worker measures) and, with ``SPECSERVE_RECORD_STEPS`` set, appends
one JSON line per step with its features (requests, batched tokens, mean context). The profiler
drives the engine through a grid — static K (set at runtime through the policy endpoint) x
context length x batch size — and folds the recorded steps into a `Profile` (median per cell),
which `StepTimeModel.from_profile` fits.

Then it measures acceptance: static K on prompts cut from random places of the text (the grid's
prompts share one prefix, hence one continuation, so they would calibrate for that text alone);
the engine records every verification (``SPECSERVE_RECORD_VERIFICATIONS``) and `fit_acceptance`
turns them into the profile's calibration and mean acceptance. The same command runs on a GPU
pod at start-up.
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from specserve_contract import (
    ENV_CONTROL_TOKEN,
    ENV_RECORD_STEPS,
    ENV_RECORD_VERIFICATIONS,
    POLICY_PATH,
)
from specserve_engine.launcher import ServerProcess, free_port
from specserve_engine.policy import (
    AcceptanceProfile,
    MachineInfo,
    Policy,
    Profile,
    ProfilePoint,
    fit_acceptance,
)
from specserve_engine.serving import on_cpu_build

CONTEXT_BUCKET = 32  # tokens: steps whose mean context differs by less are one cell
CALIBRATION_BATCH = 8  # calibration prompts sent at once

Progress = Callable[[str], None]


def aggregate(records: Sequence[dict], min_repeats: int = 2) -> list[ProfilePoint]:
    """Recorded steps -> one point per (role, requests, tokens, context bucket): the median."""
    cells: dict[tuple[str, int, int, int], list[float]] = defaultdict(list)
    contexts: dict[tuple[str, int, int, int], list[float]] = defaultdict(list)
    for r in records:
        key = (r["role"], r["num_requests"], r["num_tokens"],
               round(r["context_len"] / CONTEXT_BUCKET))
        cells[key].append(r["seconds"])
        contexts[key].append(r["context_len"])
    return [
        ProfilePoint(role=role, num_requests=b, num_tokens=n,  # type: ignore[arg-type]
                     context_len=statistics.fmean(contexts[key]),
                     seconds=statistics.median(secs), repeats=len(secs))
        for key, secs in sorted(cells.items())
        if len(secs) >= min_repeats
        for role, b, n, _ in [key]
    ]


def _prompt_ids(model_dir: Path, text: str, context_len: int, count: int) -> list[list[int]]:
    """``count`` prompts of ``context_len`` tokens sharing all but their last 8 tokens.

    vLLM's prefix cache then computes the shared part once: a CPU prefills a few hundred tokens
    per second, and the profile is about decode steps at a given context, not about prefill.
    """
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    tail = min(8, context_len)
    prefix = ids[: context_len - tail]
    rest = ids[context_len - tail :]
    return [prefix + rest[i * tail : (i + 1) * tail] for i in range(count)]


class StepRecorder:
    """A running engine (static mode, step recording on) driven through (K, context, batch) cells.

    ``with StepRecorder(model, draft, k_max) as rec: rec.run_cell(k, ctx, b)``; ``rec.records()``
    returns every recorded step as a dict (`StepObservation` fields), ``rec.verifications()``
    every verified draft as (draft probabilities, drafted, accepted).
    """

    def __init__(self, model: Path, draft: Path, k_max: int, prompt_text: str,
                 new_tokens: int = 16, extra_args: Sequence[str] = ()) -> None:
        self.model, self.k_max, self.text, self.new_tokens = model, k_max, prompt_text, new_tokens
        self.token = secrets.token_hex(16)
        self.control_port = free_port()
        self.record = Path(tempfile.mkstemp(prefix="specserve-steps-", suffix=".jsonl")[1])
        self.verify_record = Path(
            tempfile.mkstemp(prefix="specserve-verifications-", suffix=".jsonl")[1])
        self.server = ServerProcess(
            ["--model", str(model), "--draft", str(draft), "--k-max", str(k_max),
             "--mode", "static", "--static-k", "0", "--control-port", str(self.control_port),
             "--served-model-name", "profiled", *extra_args],
            env={ENV_CONTROL_TOKEN: self.token,
                 ENV_RECORD_STEPS: str(self.record),
                 ENV_RECORD_VERIFICATIONS: str(self.verify_record)},
            name="profile",
        )
        self._prompts: dict[int, list[list[int]]] = {}
        self._version = 0

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def __enter__(self) -> StepRecorder:
        self.server.start().wait_ready()
        return self

    def keep_records(self, folder: Path) -> None:
        """Copy the raw records (steps.jsonl, verifications.jsonl) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.record, folder / "steps.jsonl")
        shutil.copyfile(self.verify_record, folder / "verifications.jsonl")

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.record.unlink(missing_ok=True)
        self.verify_record.unlink(missing_ok=True)

    def set_policy(self, **fields: object) -> None:
        self._version += 1
        policy = Policy(version=self._version, k_max=self.k_max, **fields)  # type: ignore[arg-type]
        r = httpx.put(f"{self.control_url}{POLICY_PATH}", content=policy.model_dump_json(),
                      headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        r.raise_for_status()

    def generate(self, prompts: Sequence[list[int] | str],
                 new_tokens: int | None = None) -> None:
        def one(ids: list[int] | str) -> None:
            r = httpx.post(f"{self.server.url}/v1/completions", timeout=600, json={
                "model": "profiled", "prompt": ids, "max_tokens": new_tokens or self.new_tokens,
                "temperature": 0, "ignore_eos": True})
            r.raise_for_status()

        with ThreadPoolExecutor(len(prompts)) as pool:
            list(pool.map(one, prompts))

    def prompts(self, context_len: int, count: int) -> list[list[int]]:
        if len(self._prompts.get(context_len, ())) < count:
            self._prompts[context_len] = _prompt_ids(self.model, self.text, context_len, count)
        return self._prompts[context_len][:count]

    def engine_info(self) -> dict:
        """What the engine reports about itself: the dtype it computes in, its machine."""
        r = httpx.get(f"{self.control_url}{POLICY_PATH}", timeout=10)
        r.raise_for_status()
        return r.json()["engine"]

    def run_cell(self, k: int, context_len: int, batch_size: int) -> None:
        self.set_policy(mode="static", static_k=k)
        self.generate(self.prompts(context_len, batch_size))

    def records(self) -> list[dict]:
        return _read_jsonl(self.record)

    def verifications(self) -> list[tuple[list[float], int, int]]:
        return [(v["probs"], v["drafted"], v["accepted"]) for v in _read_jsonl(self.verify_record)]

    def calibrate(self, k: int, prompts: Sequence[str], new_tokens: int,
                  progress: Progress) -> AcceptanceProfile | None:
        """Draft K tokens per step on ``prompts`` and fit the acceptance to what was verified."""
        self.set_policy(mode="static", static_k=k)
        skip = len(self.verifications())
        for start in range(0, len(prompts), CALIBRATION_BATCH):
            self.generate(prompts[start : start + CALIBRATION_BATCH], new_tokens)
            progress(f"acceptance: {min(start + CALIBRATION_BATCH, len(prompts))}/{len(prompts)}"
                     " prompts")
        calibration, mean, count = fit_acceptance(self.verifications()[skip:])
        if not count:
            return None
        return AcceptanceProfile(calibration=calibration, prior_acceptance=mean, outcomes=count,
                                 k=k)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_profile(
    model: Path,
    draft: Path,
    output: Path,
    *,
    prompt_text: str,
    batch_sizes: Sequence[int] = (1, 4, 16, 32),
    k_values: Sequence[int] = (0, 1, 3, 5),
    context_lens: Sequence[int] = (64, 384),
    new_tokens: int = 16,
    calibration_prompts: int = 24,
    calibration_tokens: int = 48,
    extra_args: Sequence[str] = (),
    raw_records: Path | None = None,
    progress: Progress = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> Profile:
    """Time the (K, context, batch) grid, then fit the acceptance on ``calibration_prompts``
    prompts (0: skip) drafted with the largest K; write the profile to ``output`` (and the raw
    records into the folder ``raw_records``, if given)."""
    from specserve_engine.tiny import text_prompts

    cells = [(k, c, b) for k in k_values for c in context_lens for b in batch_sizes]
    k_max = max(max(k_values), 1)
    recorder = StepRecorder(model, draft, k_max, prompt_text, new_tokens, extra_args)
    progress(f"starting the engine (log: {recorder.server.log_path}) ...")
    started = time.monotonic()
    with recorder:
        engine = recorder.engine_info()
        machine = MachineInfo.model_validate(engine["machine"])
        progress(f"measuring on {machine.describe()} in {engine['dtype']}")
        recorder.generate(recorder.prompts(context_lens[0], 1))  # warm-up (compilation, caches)
        for done, (k, ctx, b) in enumerate(cells, start=1):
            recorder.run_cell(k, ctx, b)
            elapsed = time.monotonic() - started
            progress(f"[{done}/{len(cells)}] K={k} context={ctx} batch={b}  "
                     f"({elapsed:.0f}s, eta {elapsed / done * (len(cells) - done):.0f}s)")
        records = recorder.records()
        acceptance = None
        if calibration_prompts > 0:
            acceptance = recorder.calibrate(
                k_max, text_prompts(prompt_text, calibration_prompts, seed=1),
                calibration_tokens, progress)
        if raw_records is not None:
            recorder.keep_records(raw_records)
            progress(f"raw records in {raw_records}/")
    profile = Profile(
        target_model=str(model), draft_model=str(draft),
        device="cpu" if on_cpu_build() else "gpu",
        machine=machine, dtype=engine["dtype"],
        meta={"k_values": ",".join(map(str, k_values)), "steps_recorded": str(len(records))},
        points=aggregate(records), acceptance=acceptance,
    )
    if not profile.for_role("target") or not profile.for_role("draft"):
        raise RuntimeError(f"the engine recorded no usable steps ({len(records)} records)")
    output.parent.mkdir(parents=True, exist_ok=True)
    profile.save(output)
    found = (f"; acceptance {acceptance.prior_acceptance:.2f} per token, calibrated on "
             f"{len(acceptance.calibration)} positions from {acceptance.outcomes} verifications"
             if acceptance else "")
    progress(f"wrote {output}: {len(profile.points)} points from {len(records)} steps{found}")
    return profile
