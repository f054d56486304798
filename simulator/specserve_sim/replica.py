"""One simulated vLLM engine: its scheduler's batching and SpecServe's policy, step by step.

Scheduling, as vLLM 0.32's `Scheduler.schedule()` does it (read from its source,
docs/simulator.md lists what was relied on): running requests first, in the order they were
admitted, each asking for the rest of its prompt (a prefill chunk) or 1 + its draft tokens (a
decode), cut to the step's token budget (`max_num_batched_tokens`); then waiting requests, first
come first served, while the running set is below `max_num_seqs` and budget is left (chunked
prefill: a long prompt takes what is left and continues next step). K for the step is looked up
with the number of scheduled requests, after admission.

Speculation: the engine's own `StepDriver` (policy/driver.py), called in the order
`AdaptiveScheduler` (vllm/scheduler.py) calls it:
1. schedule: close the previous cycle (its host time, when work remained), adopt a pushed
   policy, `decide(emitting ids, mean computed tokens, prefill tokens)`: the K drafted at the
   end of this step (verified in the next); `stop_rule` for the drafter; open the cycle;
2. the step runs: decodes verify the drafts of the previous step (ground truth: the recorded
   verification each draft was drawn with), prefills that complete emit their first token,
   then the drafter drafts K positions for every request still decoding, stopping early where
   `DraftProgress` says (mode adaptive / threshold);
3. feedback: `forwards_done`, `verified(...)` per verified request, `finished` per finished
   one; `record_step` (the step's observations, refits on the engine's schedule);
4. the new drafts are cut per request by `trim`.
vLLM's own speculation runs one draft forward even at K = 0 (vLLM 0.32's proposer keeps the
draft's KV cache current); SpecServe's worker skips it and catches the draft up when drafting
resumes (vllm/draft_catchup.py), and its policy prices K = 0 so (`draft_steps_when_off`).
vLLM's own speculation (`specserve=False`, the static-K and Dynamic-SD baselines) drafts K =
`engine_k_max` or the Dynamic-SD table's K, for every request, and verifies them all.

Step time = target(B, N, L) + (max(positions, 1) - 1) x draft(B, B, L) + draft(B, B + P, L)
(with a draft model; P the step's prefill tokens, which the draft's first forward also runs
over) + host(B, B, L) from the ground truth, never from the policy's coefficients.

Not modelled: KV-cache capacity (no preemption: vLLM preempts the newest running request when
blocks run out), prefix caching, the API server's tokenisation and streaming (only what the
"host" role measured).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from specserve_engine.policy import Policy, Profile, StepPrediction
from specserve_engine.policy.drafting import DraftProgress
from specserve_engine.policy.driver import (
    StepDriver,
    fold_profile,
    prefill_tokens,
    upcoming_prefill_tokens,
)
from specserve_engine.policy_store import PolicyStore
from specserve_sim.groundtruth import GroundTruth, Verification, VerificationStream, cut
from specserve_sim.interface import ReplicaView, RequestRecord, SimRequest, StepRecord

KTable = tuple[tuple[int, int, int], ...]
# vLLM 0.32's OpenAI-server defaults on CPU (engine/arg_utils.py); an H100 server gets 1024 and
# 8192 (`ReplicaConfig.h100`).
CPU_MAX_NUM_SEQS = 128
CPU_MAX_NUM_BATCHED_TOKENS = 2048
_TOKEN = "simulated"  # the control token the simulated cluster pushes policies with


@dataclass(frozen=True)
class ReplicaConfig:
    """How every replica of a simulated deployment is started (the bench's configurations)."""

    name: str = "adaptive"
    policy: Policy = field(default_factory=Policy)
    engine_k_max: int = 5  # `specserve serve --k-max`; 0: no draft model at all
    specserve: bool = True  # False: vLLM's own speculation (fixed K or `k_table`), no policy
    k_table: KTable | None = None  # vLLM's Dynamic-SD table (first, last batch size, K)
    profile: Profile | None = None  # the policy's starting step times and calibration
    max_num_seqs: int = CPU_MAX_NUM_SEQS
    max_num_batched_tokens: int = CPU_MAX_NUM_BATCHED_TOKENS
    long_prefill_token_threshold: int = 0  # vLLM's default: off
    # SpecServe's worker runs no draft forward at K = 0 and catches the draft's KV up when
    # drafting resumes; vLLM's own speculation (specserve False) runs one. None: as the engine.
    skips_draft_when_off: bool | None = None

    @property
    def skips_k0_draft(self) -> bool:
        if self.skips_draft_when_off is None:
            return self.specserve and self.engine_k_max > 0
        return self.skips_draft_when_off

    def with_gpu_defaults(self) -> ReplicaConfig:
        """vLLM's defaults on an H100-class GPU (>= 70 GiB, not A100)."""
        from dataclasses import replace

        return replace(self, max_num_seqs=1024, max_num_batched_tokens=8192)

    def k_for_batch(self, batch: int) -> int:
        """vLLM's own K for `batch` scheduled requests (no SpecServe policy)."""
        if self.k_table is None:
            return self.engine_k_max
        k = 0
        for first, last, table_k in self.k_table:
            if batch >= first:
                k = table_k  # past the last range the last K carries on (vLLM fills gaps so)
            if first <= batch <= last:
                break
        return min(k, self.engine_k_max)


class _Req:
    """A request inside a replica (vLLM's `Request`, reduced to what the simulation needs)."""

    __slots__ = ("computed", "draft_lag", "first_token", "generated", "lease", "output",
                 "prompt", "request", "spec", "stream")

    def __init__(self, request: SimRequest, stream: VerificationStream,
                 lease: object | None) -> None:
        self.request = request
        self.prompt = request.prompt_tokens
        self.output = request.output_tokens
        self.computed = 0  # tokens whose KV exists (vLLM's num_computed_tokens)
        self.draft_lag = 0  # of those, the ones the draft's KV lacks (skipped K = 0 steps)
        self.generated = 0  # output tokens emitted
        self.first_token: float | None = None
        self.spec: Verification | None = None  # drafts to verify next step (with their outcome)
        self.stream = stream
        self.lease = lease  # the gateway's hold on this replica, released when done


@dataclass(slots=True)
class _Pending:
    """A step computed at its start and applied at its end."""

    reqs: list[_Req]
    counts: list[int]  # tokens scheduled per request
    emitted: list[int]  # output tokens each emits
    tokens: int
    context_len: float
    prediction: StepPrediction | None
    k: int
    seconds: float  # the whole cycle: forwards and host time
    draft_s: float
    host_s: float
    extra_tokens: int = 0  # the step's prefill tokens (beyond 1 + drafts per emitting request)


class Replica:
    """One engine. The cluster calls `add`, `start_step` when idle, `finish_step` at its end."""

    def __init__(self, name: str, config: ReplicaConfig, truth: GroundTruth, seed: int,
                 policy: Policy | None = None) -> None:
        self.name = name
        self.config = config
        self.truth = truth
        self.seed = seed
        self.waiting: deque[_Req] = deque()
        self.running: list[_Req] = []
        self.busy = False
        self.ready = False
        self.draining = False
        self.gone = False
        self.driver: StepDriver | None = None
        self.store: PolicyStore | None = None
        if config.specserve and config.engine_k_max:
            start = policy or config.policy
            start = start.model_copy(update={"k_max": min(start.k_max, config.engine_k_max),
                                             "static_k": min(start.static_k,
                                                             config.engine_k_max)})
            if config.profile is not None:
                start = fold_profile(start, config.profile, "profile")
            self.driver = StepDriver(start, config.engine_k_max,
                                     skips_draft_when_off=config.skips_k0_draft)
            self.store = PolicyStore(start, config.engine_k_max, _TOKEN)
        self._pending: _Pending | None = None
        self._work_left = False  # work remained after the last step: its cycle closes
        self._new_drafts: list[tuple[_Req, Verification]] = []
        self.finished: list[RequestRecord] = []  # collected by the cluster
        self.step_records: list[StepRecord] = []

    # -- requests --

    def add(self, request: SimRequest, lease: object | None = None) -> None:
        rng = random.Random(f"{self.seed}:{request.request_id}")
        self.waiting.append(_Req(request, self.truth.verifications.stream(rng), lease))

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.waiting)

    @property
    def refit_failures(self) -> int:
        return self.driver.refit_failures if self.driver is not None else 0

    def view(self, starting: bool) -> ReplicaView:
        fitted = self.driver.model.fitted_params() if self.driver is not None else None
        return ReplicaView(self.name, self.ready and not self.draining, starting, self.draining,
                           len(self.running), len(self.waiting), fitted)

    # -- policy pushes --

    @property
    def policy(self) -> Policy | None:
        return self.store.policy if self.store is not None else None

    def push(self, policy: Policy) -> bool:
        """A policy PUT, with the engine's own rules (version, k_max); True when adopted."""
        if self.store is None:
            return False
        reply = self.store.put(policy.model_dump_json().encode(), f"Bearer {_TOKEN}")
        return reply.status == 200 and bool(reply.body.get("changed"))

    # -- one step --

    def _schedule(self) -> tuple[list[_Req], list[int]]:
        """vLLM's `schedule()`: the requests of this step and how many tokens each."""
        budget = self.config.max_num_batched_tokens
        threshold = self.config.long_prefill_token_threshold
        reqs: list[_Req] = []
        counts: list[int] = []
        for r in self.running:
            if budget <= 0:
                break
            spec = r.spec
            if r.computed < r.prompt:
                n = r.prompt - r.computed
                if 0 < threshold < n:
                    n = threshold
            elif spec is None:
                n = 1
            else:
                n = 1 + len(spec[0])
                if n > budget:  # vLLM drops the drafts that do not fit the budget
                    r.spec = cut(spec, budget - 1) if budget > 1 else None
            if n > budget:
                n = budget
            budget -= n
            reqs.append(r)
            counts.append(n)
        waiting, running = self.waiting, self.running
        max_seqs = self.config.max_num_seqs
        while waiting and budget > 0 and len(running) < max_seqs:
            r = waiting.popleft()
            n = min(r.prompt, budget, threshold) if threshold > 0 else min(r.prompt, budget)
            running.append(r)
            budget -= n
            reqs.append(r)
            counts.append(n)
        return reqs, counts

    def start_step(self, now: float) -> float:
        """Schedule and cost the next step; returns its duration (the cluster calls
        `finish_step` after it)."""
        driver = self.driver
        if driver is not None:
            driver.close_cycle(now, self._work_left)
            assert self.store is not None
            driver.sync(self.store.policy)
            driver.begin_step()
        reqs, counts = self._schedule()
        b = len(reqs)
        running = self.running
        context_len = sum(r.computed for r in running) / len(running) if running else 0.0
        # What each request emits: 1 + its accepted drafts (decode), its first token (the last
        # prefill chunk), nothing (an earlier chunk); never past its output length.
        emitted = []
        for r, n in zip(reqs, counts, strict=True):
            if r.computed < r.prompt:
                emitted.append(1 if r.computed + n >= r.prompt else 0)
            else:
                e = 1 + r.spec[1] if r.spec is not None else 1
                left = r.output - r.generated
                emitted.append(e if e < left else left)
        tokens = sum(counts)
        # As the engine's scheduler: K for the requests that emit a token, priced with the
        # step's other tokens as prefill.
        emitting = [r for r, e in zip(reqs, emitted, strict=True) if e]
        extra = prefill_tokens(tokens, [len(r.spec[0]) if r.spec is not None
                                        and r.computed >= r.prompt else 0 for r in emitting])
        if emitting:
            context_len = sum(r.computed for r in emitting) / len(emitting)
        prediction: StepPrediction | None = None
        config = self.config
        if not config.engine_k_max:
            k = 0
        elif driver is not None:
            k = driver.decide([r.request.request_id for r in emitting], context_len, extra)
            prediction = driver.prediction
        else:
            k = config.k_for_batch(b)
        steps = self.truth.steps
        forward = steps.step_seconds("target", b, tokens, context_len)
        host = steps.step_seconds("host", b, b, context_len)
        step = _Pending(reqs, counts, emitted, tokens, context_len, prediction, k,
                        forward + host, 0.0, host, extra)
        self._pending = step
        self.busy = True
        if driver is not None:
            driver.open_cycle(now, b, step.tokens)
        if config.engine_k_max:
            self._draft(step, b)
        return step.seconds

    def _draft(self, step: _Pending, b: int) -> None:
        """Draw this step's drafts (for requests that will still decode) and cost the drafter:
        K positions (fewer on an early stop); at K = 0 one forward, or none on an engine that
        skips it (its draft then catches up on the next drafting step: the first forward runs
        over the tokens it skipped too)."""
        k = step.k
        if not k and self.config.skips_k0_draft:
            for r, n in zip(step.reqs, step.counts, strict=True):
                r.draft_lag += n
            step.draft_s = 0.0
            return
        caught_up = 0
        for r in step.reqs:
            caught_up += r.draft_lag
            r.draft_lag = 0
        positions = k
        drafters = [r for r, n, e in zip(step.reqs, step.counts, step.emitted, strict=True)
                    if e and r.generated + e < r.output] if k else []
        if drafters:
            drafts = [r.stream.draw(k) for r in drafters]
            rule = self.driver.stop_rule() if self.driver is not None else None
            if rule is not None:
                progress = DraftProgress(rule)
                for j in range(k - 1):
                    if progress.stop_after([d[0][j] for d in drafts]):
                        positions = j + 1
                        break
            if positions < k:
                drafts = [cut(d, positions) for d in drafts]
            self._new_drafts = list(zip(drafters, drafts, strict=True))
        truth, forwards, ctx = self.truth.steps, max(positions, 1), step.context_len
        if step.extra_tokens or caught_up:
            # The first draft forward also runs over the step's prefill and the skipped tokens
            # (the draft's KV cache).
            step.draft_s = truth.step_seconds("draft", b, b + step.extra_tokens + caught_up,
                                              ctx)
            if forwards > 1:
                step.draft_s += (forwards - 1) * truth.step_seconds("draft", b, b, ctx)
        else:
            step.draft_s = forwards * truth.step_seconds("draft", b, b, ctx)
        step.seconds += step.draft_s
        step.k = positions

    def finish_step(self, now: float) -> list[_Req]:
        """Apply the step that ends at `now`; returns the requests that finished."""
        step = self._pending
        assert step is not None
        self._pending = None
        self.busy = False
        new_drafts, self._new_drafts = self._new_drafts, []
        driver = self.driver
        if driver is not None:
            # The engine measures the forwards (schedule end to outputs): no host time.
            driver.forwards_done(step.seconds - step.host_s)
        observe = driver.verified if driver is not None else None
        drafted = accepted = verifies = 0
        done: list[_Req] = []
        for r, n, e in zip(step.reqs, step.counts, step.emitted, strict=True):
            if r.computed < r.prompt:
                r.computed += n
            else:
                spec = r.spec
                if spec is not None:
                    probs, a = spec
                    drafted += len(probs)
                    accepted += a
                    verifies += 1
                    if observe is not None:
                        observe(r.request.request_id, len(probs), a, probs)
                    r.spec = None
            if e:
                if r.first_token is None:
                    r.first_token = now
                r.generated += e
                # The last sampled token has no KV yet (it is the next step's input).
                r.computed = r.prompt + r.generated - 1
                if r.generated >= r.output:
                    done.append(r)
        if done:
            finished = set(map(id, done))
            self.running = [r for r in self.running if id(r) not in finished]
            for r in done:
                if driver is not None:
                    driver.finished(r.request.request_id)
                q = r.request
                self.finished.append(RequestRecord(q.request_id, q.arrival, r.first_token, now,
                                                   q.prompt_tokens, r.generated, self.name))
        if driver is not None:
            driver.record_step(step.draft_s, step.k)
        # The engine closes a cycle at the next schedule() only when work was left (after an
        # idle engine the gap is waiting, not host work).
        self._work_left = bool(self.running or self.waiting)
        if new_drafts:
            self._set_drafts(step, new_drafts)
        self.step_records.append(StepRecord(
            now, self.name, len(step.reqs), step.k, drafted, accepted, step.seconds,
            step.prediction.step_seconds if step.prediction is not None else 0.0, verifies))
        return done

    def _upcoming_prefill(self, decode_tokens: int) -> int:
        """`AdaptiveScheduler._upcoming_prefill`: the next step's expected prefill tokens."""
        budget = self.config.max_num_batched_tokens
        pending = sum(max(0, r.prompt - r.computed) for r in self.running)
        room = self.config.max_num_seqs - len(self.running)
        for r in self.waiting:
            if pending >= budget - decode_tokens or room <= 0:
                break
            pending += r.prompt - r.computed
            room -= 1
        return upcoming_prefill_tokens(pending, budget, decode_tokens)

    def _set_drafts(self, step: _Pending, new_drafts: list[tuple[_Req, Verification]]) -> None:
        """`AdaptiveScheduler.update_draft_token_ids`: cut each request's drafts."""
        if self.driver is None:
            for r, d in new_drafts:
                r.spec = d
            return
        decode_tokens = sum(1 + len(d[0]) for _, d in new_drafts)
        lengths, _ = self.driver.trim([d[0] for _, d in new_drafts],
                                      self._upcoming_prefill(decode_tokens))
        for (r, d), keep in zip(new_drafts, lengths, strict=True):
            r.spec = cut(d, keep) if keep else None

    # -- lifecycle --

    def abort_all(self) -> list[_Req]:
        """A replica killed without drain: everything it held is lost."""
        lost = [*self.running, *self.waiting]
        self.running, self.waiting = [], deque()
        self._pending = None
        self.busy = False
        return lost

