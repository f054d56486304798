"""A K=0 step runs no draft forward, and the draft's KV cache catches up when drafting resumes.

One in-process vLLM engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: EngineCore, scheduler and
worker in this process) on the tiny models, with SpecServe's worker and a test scheduler that
forces K per step from a pattern. The worker's ``DraftCatchup`` has two knobs the tests turn:
``skip_when_off`` (False: vLLM's own behaviour, a draft forward at K=0) and ``catch_up``.

- (a) greedy output is identical to no speculation (K=0 on every step) with K going 0 / >0,
- (b) acceptance after resumes matches vLLM's (draft forward kept at K=0), and is clearly worse
  without the catch-up (so the catch-up is what keeps it),
- (c) a K=0 step runs no draft forward; a resume step runs K forwards plus its catch-up calls,
- a prefix-cache hit on blocks the target filled while the draft was skipped is caught up too,
- and, printed: the time of a K=0 step with and without the skip at batch 8 and 32.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from vllm.v1.core.sched.scheduler import Scheduler

from specserve_engine import tiny
from specserve_engine.vllm.draft_catchup import DraftCatchup
from specserve_engine.vllm.worker import CATCHUP_TOKENS_ATTR, DRAFT_SECONDS_ATTR

pytestmark = pytest.mark.engine

K_MAX = 3
MAX_TOKENS = 40
# Small enough that a batch's prompts are prefilled in chunks and a long catch-up is split.
MAX_BATCHED_TOKENS = 256


@dataclass
class StepLog:
    """What the test scheduler saw per step."""

    ks: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    seconds: list[tuple[int, int, float]] = field(default_factory=list)  # (batch, tokens, s)
    draft_seconds: list[float] = field(default_factory=list)
    catchup_tokens: int = 0  # as the scheduler hears it (CATCHUP_TOKENS_ATTR)


class PatternScheduler(Scheduler):
    """vLLM's scheduler with K forced per step: ``pattern[step % len(pattern)]``."""

    pattern: ClassVar[list[int]] = [0]
    instance: ClassVar[PatternScheduler | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step = 0
        self.log = StepLog()
        self._started = 0.0
        self.dynamic_sd_lookup = self  # type: ignore[assignment]  # only indexed: self[n]
        PatternScheduler.instance = self

    def __getitem__(self, batch_size: int) -> int:
        k = self.pattern[self.step % len(self.pattern)]
        self.log.ks.append(k)
        return k

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        self._started = time.perf_counter()
        out = super().schedule(*args, **kwargs)
        self.step += 1
        return out

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        index = model_runner_output.req_id_to_index
        sampled = model_runner_output.sampled_token_ids
        for rid, drafts in scheduler_output.scheduled_spec_decode_tokens.items():
            n = sum(1 for t in drafts if t >= 0)
            if n and rid in index:
                self.log.drafted += n
                self.log.accepted += max(len(sampled[index[rid]]) - 1, 0)
        out = super().update_from_output(scheduler_output, model_runner_output)
        self.log.seconds.append((len(scheduler_output.num_scheduled_tokens),
                                 scheduler_output.total_num_scheduled_tokens,
                                 time.perf_counter() - self._started))
        return out

    def update_draft_token_ids(self, draft_token_ids: Any) -> None:
        self.log.draft_seconds.append(getattr(draft_token_ids, DRAFT_SECONDS_ATTR, -1.0))
        self.log.catchup_tokens += getattr(draft_token_ids, CATCHUP_TOKENS_ATTR, 0)
        super().update_draft_token_ids(draft_token_ids)


@dataclass
class Forwards:
    """Per propose_draft_token_ids call: the step's K, draft forwards run, catch-up calls, and
    the call's seconds (the runner's drafting: input preparation and the drafter)."""

    calls: list[tuple[int, int, int, float]] = field(default_factory=list)
    count: int = 0


@dataclass
class Engine:
    llm: Any
    worker: Any
    catchup: DraftCatchup
    forwards: Forwards

    cached_tokens: list[int] = field(default_factory=list)  # of the last run, per prompt

    def run(self, prompts: list[str], pattern: list[int], *, skip: bool = True,
            catch_up: bool = True, keep_cache: bool = False) -> tuple[list[list[int]], StepLog]:
        from vllm import SamplingParams

        if not keep_cache:
            assert self.llm.reset_prefix_cache()

        PatternScheduler.pattern = pattern
        sched = PatternScheduler.instance
        assert sched is not None
        sched.step, sched.log = 0, StepLog()
        self.catchup.skip_when_off, self.catchup.catch_up = skip, catch_up
        self.forwards.calls.clear()
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        self.cached_tokens = [o.num_cached_tokens or 0 for o in outs]
        return [list(o.outputs[0].token_ids) for o in outs], sched.log


def _install_counters(worker: Any) -> Forwards:
    counts = Forwards()
    runner = worker.model_runner
    model = runner.drafter.model
    forward = model.forward

    def counted_forward(*a: Any, **kw: Any) -> Any:
        counts.count += 1
        return forward(*a, **kw)

    model.forward = counted_forward
    propose = runner.propose_draft_token_ids
    catchup: DraftCatchup = worker._specserve_catchup

    def counted_propose(scheduler_output: Any, *a: Any, **kw: Any) -> Any:
        before, calls = counts.count, catchup.catchup_calls
        started = time.perf_counter()
        try:
            return propose(scheduler_output, *a, **kw)
        finally:
            counts.calls.append((scheduler_output.num_spec_tokens_to_schedule,
                                 counts.count - before, catchup.catchup_calls - calls,
                                 time.perf_counter() - started))

    runner.propose_draft_token_ids = counted_propose
    return counts


@pytest.fixture(scope="module")
def engine(tiny_models: tiny.TinyModels) -> Iterator[Engine]:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    llm = LLM(
        model=str(tiny_models.target), dtype="float32", enforce_eager=True, seed=0,
        max_model_len=512, max_num_seqs=64, max_num_batched_tokens=MAX_BATCHED_TOKENS,
        enable_prefix_caching=True,  # reset before every run unless a test keeps it
        speculative_config={"method": "draft_model", "model": str(tiny_models.draft),
                            "num_speculative_tokens": K_MAX,
                            "num_speculative_tokens_per_batch_size": [[1, 64, K_MAX]]},
        scheduler_cls=f"{__name__}.PatternScheduler",
        worker_cls="specserve_engine.vllm.cpu_worker.SpecServeCPUWorker",
    )
    worker = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker
    catchup = worker._specserve_catchup
    assert isinstance(catchup, DraftCatchup), "the draft-model path should get the catch-up"
    yield Engine(llm, worker, catchup, _install_counters(worker))
    del llm


@pytest.fixture(scope="module")
def prompts(tiny_models: tiny.TinyModels) -> list[str]:
    return tiny.heldout_prompts(tiny_models, 12, seed=11)


# Steps 0.. of each run: K=0 on the prefill (a new request's prompt is skipped too), then
# drafting, off for several steps, back on.
ALTERNATING = [0, 0, 3, 3, 0, 0, 0, 2, 0, 3, 1, 0, 0, 0, 0, 3]


def test_greedy_output_is_unchanged_with_k_going_off_and_on(engine: Engine,
                                                            prompts: list[str]) -> None:
    reference, _ = engine.run(prompts, [0])
    for pattern in (ALTERNATING, ALTERNATING[2:] + ALTERNATING[:2]):
        out, log = engine.run(prompts, pattern)
        assert log.accepted > 0, "drafts were verified and some accepted"
        mismatches = [i for i, (a, b) in enumerate(zip(out, reference, strict=True)) if a != b]
        assert not mismatches, f"pattern {pattern}: output changed for prompts {mismatches}"
    # One request at a time too (no batching effects at all).
    for p, ref in zip(prompts[:3], reference[:3], strict=True):
        out, _ = engine.run([p], ALTERNATING)
        assert out == [ref]


def test_a_k0_step_runs_no_draft_forward(engine: Engine, prompts: list[str]) -> None:
    caught_up, extended = engine.catchup.catchup_tokens, engine.catchup.extended_steps
    _, log = engine.run(prompts, ALTERNATING)
    assert log.catchup_tokens == engine.catchup.catchup_tokens - caught_up > 0
    # Both routes ran: folded into a step's first pass, and (a batch's prompts, more than
    # MAX_BATCHED_TOKENS) separate passes.
    assert engine.catchup.extended_steps > extended
    calls = list(engine.forwards.calls)
    assert any(k == 0 for k, *_ in calls) and any(k > 0 for k, *_ in calls)
    for k, forwards, catchups, _ in calls:
        # K=0: nothing; K>0: the first pass, K-1 more positions, and the catch-up calls.
        assert forwards == (k + catchups if k else 0), (k, forwards, catchups)
    assert sum(c for _, _, c, _ in calls) > 0, "resume steps caught up"
    # The scheduler hears 0 draft seconds for a K=0 step.
    for k, seconds in zip([k for k, *_ in calls], log.draft_seconds, strict=False):
        if k == 0:
            assert seconds == 0.0
    # vLLM's own behaviour, for comparison: one draft forward per K=0 step.
    engine.run(prompts, ALTERNATING, skip=False)
    assert all(f == 1 for k, f, *_ in engine.forwards.calls if k == 0)


def test_acceptance_after_resume_is_as_good_as_never_skipping(engine: Engine,
                                                              prompts: list[str]) -> None:
    pattern = [0, 0, 0, 3, 3, 0, 0, 0, 0, 3, 0, 0, 0, 3, 3]
    rates = {}
    for name, kw in {"kept": {"skip": False}, "catch-up": {},
                     "no catch-up": {"catch_up": False}}.items():
        _, log = engine.run(prompts, pattern, **kw)
        assert log.drafted > 0
        rates[name] = log.accepted / log.drafted
    print(f"\nacceptance per drafted token: {rates}")
    assert abs(rates["catch-up"] - rates["kept"]) <= 0.02
    assert rates["no catch-up"] < rates["kept"] - 0.1


def _zero_draft_kv(engine: Engine) -> None:
    """Blocks the draft never wrote hold zeros, not the draft KV an earlier run left there."""
    drafter = engine.worker.model_runner.drafter
    layers = engine.llm.llm_engine.vllm_config.compilation_config.static_forward_context
    for name in drafter._draft_attn_layer_names:
        cache = layers[name].kv_cache
        for t in cache if isinstance(cache, list | tuple) else [cache]:
            t.zero_()


def test_a_prefix_cache_hit_on_blocks_filled_without_the_draft_is_caught_up(
        engine: Engine, tiny_models: tiny.TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    # Long enough to fill whole KV blocks (only full blocks are cached).
    prompts = tiny.heldout_prompts(tiny_models, 6, chars=1200, seed=13)
    reference, fresh = engine.run(prompts, [K_MAX])  # nothing cached: the draft sees it all
    rates = {"no hit": fresh.accepted / fresh.drafted}
    for name in ("hit, tracked", "hit, assumed current"):
        if name == "hit, assumed current":  # what vLLM assumes of a cached block
            monkeypatch.setattr(engine.catchup, "_is_stale", lambda: (lambda block: False))
        _zero_draft_kv(engine)
        engine.run(prompts, [0])  # prompts computed by the target alone, then cached
        out, log = engine.run(prompts, [K_MAX], keep_cache=True)
        assert min(engine.cached_tokens) > 0, (engine.cached_tokens,
                                               engine.worker.model_runner.drafter.block_size)
        assert out == reference
        rates[name] = log.accepted / log.drafted
    print(f"\nacceptance per drafted token: {rates}")
    assert abs(rates["hit, tracked"] - rates["no hit"]) <= 0.02
    assert rates["hit, assumed current"] < rates["no hit"] - 0.03
