"""``--scheduler-cls specserve_engine.vllm.scheduler.AdaptiveScheduler``: SpecServe in vLLM.

vLLM's own scheduler does all the scheduling; this subclass only decides speculation, through the
seams vLLM already has (see docs/vllm-seams.md):

- K per step: vLLM reads ``self.dynamic_sd_lookup[batch_size]`` inside ``schedule()`` (its
  Dynamic-SD table) into ``SchedulerOutput.num_spec_tokens_to_schedule``, the K drafted at the
  end of this step (and verified in the next). We install an object whose ``[batch_size]`` asks
  the EfficiencyModel for the goodput-maximising K of the step as scheduled: vLLM hands the
  step's per-request token counts to ``_make_cached_request_data`` just before the lookup, and
  we keep them, so K is priced with the step's prefill tokens. (Deciding inside the lookup,
  not by overwriting the output afterwards, stays correct where vLLM's async scheduler reads
  the K inside ``schedule()``.)
- Adaptive drafter: a stop threshold rides on ``SchedulerOutput`` to the worker, which stops
  drafting once the batch's expected gain from one more draft token no longer pays for it.
- Confidence prior verifier: drafts arrive with the draft model's confidences
  (``update_draft_token_ids``); each request's list is cut to the length ``trim()`` chooses.
- Feedback: per-request accepted counts (``update_from_output``) calibrate the acceptance model;
  measured step times refit the step-time model: the two forwards, and the *cycle* around them
  (one ``schedule()`` start to the next while work remains), whose rest is the host time a
  client also waits for.

Greedy output stays identical to no speculation: K and trimming only change how many draft
tokens are verified, and vLLM's rejection sampler decides every emitted token. Sampled requests
(temperature > 0) are never verified on vLLM's CPU build: its rejection sampler changes the
sampled distribution (measured: chi-square p < 1e-14 against no speculation, with vLLM's own
fixed-K speculation and no SpecServe code involved), so those requests decode without drafts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import vllm
from vllm.platforms import current_platform
from vllm.sampling_params import SamplingType
from vllm.v1.core.sched.scheduler import Scheduler

from specserve_contract import (
    ENV_CONTROL_HOST,
    ENV_CONTROL_PORT,
    ENV_MODE,
    ENV_POLICY_FILE,
    ENV_PROFILE_FILE,
    ENV_RECORD_CYCLES,
    ENV_RECORD_REQUESTS,
    ENV_RECORD_STEPS,
    ENV_RECORD_VERIFICATIONS,
    ENV_STATIC_K,
    MODES,
)
from specserve_engine.machine import this_machine
from specserve_engine.policy import EfficiencyModel, Policy, Profile, StepObservation
from specserve_engine.policy.cycle_error import CycleRecord
from specserve_engine.policy.driver import (
    EARLY_REFITS,
    REFIT_EVERY_STEPS,
    StepDriver,
    fold_profile,
    prefill_tokens,
    upcoming_prefill_tokens,
)
from specserve_engine.policy_store import PolicyStore, control_token
from specserve_engine.vllm.control import ControlServer
from specserve_engine.vllm.exported_metrics import SpecServeMetrics, batch_range
from specserve_engine.vllm.worker import (
    CONFIDENCES_ATTR,
    DRAFT_SECONDS_ATTR,
    SKIPS_DRAFT_WHEN_OFF,
    STOP_RULE_ATTR,
    STOPPED_EARLY_ATTR,
)

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.engine import EngineCoreOutputs
    from vllm.v1.outputs import DraftTokenIds, ModelRunnerOutput
    from vllm.v1.request import Request

log = logging.getLogger("specserve.scheduler")

# The refit schedule lives with the policy (the simulator follows it too); re-exported here.
__all__ = ["EARLY_REFITS", "REFIT_EVERY_STEPS", "AdaptiveScheduler"]


def initial_policy(engine_k_max: int, environ: dict[str, str]) -> Policy:
    """The policy at start-up: the mounted policy file (operator), else the serve flags."""
    path = environ.get(ENV_POLICY_FILE)
    if path and os.path.isfile(path):
        with open(path) as f:
            policy = Policy.model_validate_json(f.read())
        return policy.model_copy(update={"k_max": min(policy.k_max, engine_k_max),
                                         "static_k": min(policy.static_k, engine_k_max)})
    mode = environ.get(ENV_MODE, "adaptive")
    static_k = int(environ.get(ENV_STATIC_K, str(min(3, engine_k_max))))
    return Policy(mode=mode, k_max=engine_k_max, static_k=min(static_k, engine_k_max))


def with_profile(policy: Policy, environ: dict[str, str]) -> Policy:
    """Fold a measured profile (``specserve profile``: step times, acceptance calibration) into
    the policy's model."""
    path = environ.get(ENV_PROFILE_FILE)
    if not path or not os.path.isfile(path) or policy.model.source:
        return policy  # an operator-pushed model (it has a source) wins over the local profile
    return fold_profile(policy, Profile.load(path), f"profile {os.path.basename(path)}")


def engine_description(dtype: object) -> dict[str, object]:
    """The dtype vLLM computes in and the machine it runs on (GET /specserve/policy)."""
    machine = this_machine()
    if not current_platform.is_cpu():
        machine = machine.model_copy(update={"accelerator": current_platform.get_device_name()})
    return {"dtype": str(dtype).removeprefix("torch."), "machine": machine.model_dump()}


class UnsupportedVllm(RuntimeError):
    """This vLLM does not have the seam SpecServe steers K through."""


def check_dynamic_sd_lookup(lookup: object, version: str) -> None:
    """SpecServe replaces vLLM's Dynamic-SD table, which vLLM 0.32 builds as a list indexed by
    batch size from `num_speculative_tokens_per_batch_size` (serving.py always sets one) and
    reads as ``lookup[batch_size]`` in ``schedule()``. Another shape means another vLLM whose
    scheduler may read it differently: refuse to start rather than steer K wrongly."""
    if isinstance(lookup, list) and all(isinstance(k, int) for k in lookup):
        return
    raise UnsupportedVllm(
        f"SpecServe needs vLLM's Dynamic-SD lookup (Scheduler.dynamic_sd_lookup, a list of K "
        f"per batch size, as in vLLM 0.32); vLLM {version} has {type(lookup).__name__} there. "
        "Run the vLLM minor version SpecServe is tested with (see constraints.txt), or "
        "--no-specserve for vLLM's own speculation.")


class _KLookup:
    """Stands in for vLLM's Dynamic-SD table: ``lookup[batch_size]`` -> K for this step."""

    def __init__(self, scheduler: AdaptiveScheduler) -> None:
        self.scheduler = scheduler

    def __getitem__(self, batch_size: int) -> int:
        return self.scheduler.decide_k(batch_size)


class AdaptiveScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine_k_max = int(self.num_spec_tokens or 0)
        env = dict(os.environ)
        policy = with_profile(initial_policy(self.engine_k_max, env), env)
        # The per-step policy glue, shared with the simulator (policy/driver.py).
        # SpecServe's worker runs no draft forward at K=0 (vllm/draft_catchup.py).
        self.driver = StepDriver(policy, self.engine_k_max,
                                 skips_draft_when_off=SKIPS_DRAFT_WHEN_OFF)
        self.store = PolicyStore(policy, self.engine_k_max, control_token(env))
        self.store.fitted = self.model.fitted_params()
        self.store.engine_info = engine_description(self.vllm_config.model_config.dtype)
        self.metrics = SpecServeMetrics()
        self._set_policy_metrics(policy)
        self._step_started: float | None = None
        # This step's (tokens per request, drafts per request), from vLLM inside schedule().
        self._scheduled_now: tuple[dict[str, int], dict[str, list[int]]] | None = None
        self._work_left = False  # unfinished requests after the last step: no idle gap follows
        # Requests past their first token -> predicted seconds of the cycles since then.
        self._decoding: dict[str, float] = {}
        self._verified_confidences: dict[str, list[float]] = {}
        # `specserve profile` reads these lines: steps (features, seconds) and verifications.
        record = env.get(ENV_RECORD_STEPS)
        self._record_file = open(record, "a") if record else None  # noqa: SIM115
        record = env.get(ENV_RECORD_VERIFICATIONS)
        self._verify_file = open(record, "a") if record else None  # noqa: SIM115
        record = env.get(ENV_RECORD_REQUESTS)
        self._request_file = open(record, "a") if record else None  # noqa: SIM115
        # Predicted and measured cycles (policy/cycle_error.py reads them).
        record = env.get(ENV_RECORD_CYCLES)
        self._cycle_file = open(record, "a") if record else None  # noqa: SIM115
        self.control: ControlServer | None = None
        port = env.get(ENV_CONTROL_PORT)
        if port and self.engine_k_max:
            host = env.get(ENV_CONTROL_HOST, "127.0.0.1")
            self.control = ControlServer(self.store, self.metrics.text, host, int(port)).start()
            log.info("SpecServe control port on %s:%s (policy v%d, mode %s, K_max %d)",
                     host, port, policy.version, policy.mode, self.engine_k_max)
        # See the module docstring: speculation must not change what a sampled request samples.
        self.verify_sampled = not current_platform.is_cpu()
        if self.engine_k_max:
            check_dynamic_sd_lookup(getattr(self, "dynamic_sd_lookup", None), vllm.__version__)
            # A non-None lookup also stops vLLM padding new requests with placeholder drafts.
            self.dynamic_sd_lookup = _KLookup(self)

    @property
    def model(self) -> EfficiencyModel:
        return self.driver.model

    # -- policy --

    def _set_policy_metrics(self, policy: Policy) -> None:
        self.metrics.policy_version.set(policy.version)
        for mode in MODES:
            self.metrics.policy_mode.labels(mode).set(1.0 if mode == policy.mode else 0.0)

    # -- the per-step decision --

    def schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        started = time.perf_counter()
        driver = self.driver
        closed = driver.close_cycle(started, self._work_left)
        if closed is not None and closed.host is not None:
            self.metrics.step_observed.observe(closed.seconds or 0.0)
            self.metrics.step_predicted.observe(closed.predicted_seconds)
            self._write_records([closed.host])
            if self._cycle_file is not None:
                self._cycle_file.write(json.dumps(dataclasses.asdict(CycleRecord(
                    closed.num_requests, closed.num_tokens, closed.extra_tokens, closed.k,
                    closed.predicted_seconds, closed.seconds or 0.0))) + "\n")
                self._cycle_file.flush()
        if driver.sync(self.store.policy):
            self._set_policy_metrics(driver.policy)
        driver.begin_step()
        self._scheduled_now = None
        output = super().schedule(*args, **kwargs)  # calls decide_k through the K lookup
        if driver.prediction is not None:
            setattr(output, STOP_RULE_ATTR, driver.stop_rule())
        self._step_started = time.perf_counter()
        cycle = driver.open_cycle(started, len(output.num_scheduled_tokens),
                                  output.total_num_scheduled_tokens)
        if cycle is not None:
            decoding = self._decoding
            for rid in output.num_scheduled_tokens:
                if rid in decoding:
                    decoding[rid] += cycle.predicted_seconds
        return output

    def _note_decoding(self, scheduled: list[Request]) -> None:
        """Requests that got their first token start counting predicted cycles; finished ones
        report predicted TPOT = predicted seconds after the first token / tokens after it,
        the engine-side twin of what vLLM and clients measure. `scheduled` are the step's
        requests, taken before vLLM frees the finished ones."""
        decoding = self._decoding
        for request in scheduled:
            rid = request.request_id
            if request.is_finished():
                predicted = decoding.pop(rid, None)
                n = request.num_output_tokens
                if predicted is not None and n > 1:
                    self._report_request_tpot(predicted / (n - 1), n)
            elif rid not in decoding and request.num_output_tokens >= 1:
                decoding[rid] = 0.0

    def _report_request_tpot(self, tpot: float, output_tokens: int) -> None:
        self.metrics.request_tpot_predicted.observe(tpot)
        if self._request_file is not None:
            self._request_file.write(json.dumps(
                {"predicted_tpot_seconds": tpot, "output_tokens": output_tokens}) + "\n")
            self._request_file.flush()

    def _make_cached_request_data(self, running_reqs: Any, resumed_reqs: Any,
                                  num_scheduled_tokens: dict[str, int],
                                  spec_decode_tokens: dict[str, list[int]],
                                  *args: Any, **kwargs: Any) -> Any:
        # vLLM calls this once per schedule(), with the step's token counts, just before it
        # looks K up: keep them for decide_k.
        self._scheduled_now = (num_scheduled_tokens, spec_decode_tokens)
        return super()._make_cached_request_data(running_reqs, resumed_reqs,
                                                 num_scheduled_tokens, spec_decode_tokens,
                                                 *args, **kwargs)

    def decide_k(self, batch_size: int) -> int:
        """Called by vLLM inside ``schedule()`` with the number of scheduled requests: K for
        the requests that emit a token this step (decodes and last prefill chunks), priced
        with the step's other tokens as prefill."""
        ids: list[str] = []
        computed = 0
        spec_counts: list[int] = []
        total = 0
        if self._scheduled_now is not None:
            scheduled, spec = self._scheduled_now
            requests = self.requests
            for rid, n in scheduled.items():
                total += n
                request = requests.get(rid)
                # Caught up with its tokens once this step's are computed: it samples a token.
                if request is None or request.num_computed_tokens + n < request.num_tokens:
                    continue
                ids.append(rid)
                computed += request.num_computed_tokens
                spec_counts.append(len(spec.get(rid, ())))
        else:  # not seen (another vLLM): every running request decodes, no prefill priced
            ids = [r.request_id for r in self.running]
            computed = sum(r.num_computed_tokens for r in self.running)
        context_len = computed / len(ids) if ids else 0.0
        extra = prefill_tokens(total, spec_counts)
        k = self.driver.decide(ids, context_len, extra)
        prediction = self.driver.prediction
        assert prediction is not None
        m = self.metrics
        m.steps.inc()
        m.k.observe(k)
        m.k_last.set(k)
        m.steps_by_batch.labels(batch_range(batch_size), str(k)).inc()
        m.batch_size.set(batch_size)
        m.goodput.set(prediction.goodput)
        if extra:
            m.steps_with_prefill.labels(str(k)).inc()
        if k == 0:
            m.steps_off.inc()
        return k

    # -- feedback from the worker --

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput
                           ) -> dict[int, EngineCoreOutputs]:
        driver = self.driver
        if self._step_started is not None:
            driver.forwards_done(time.perf_counter() - self._step_started)
            self._step_started = None
        spec = scheduler_output.scheduled_spec_decode_tokens
        if spec:
            index = model_runner_output.req_id_to_index
            sampled = model_runner_output.sampled_token_ids
            total_drafted = total_accepted = 0
            for rid, drafts in spec.items():
                i = index.get(rid)
                drafted = sum(1 for t in drafts if t >= 0)
                if i is None or not drafted:
                    continue
                # Measured before super(), which may cut sampled tokens at a stop string.
                accepted = max(len(sampled[i]) - 1, 0)
                probs = self._verified_confidences.pop(rid, None)
                driver.verified(rid, drafted, accepted, probs)
                if self._verify_file is not None and probs is not None:
                    # The request id lets the simulator replay one request's verifications in
                    # order (acceptance is strongly per request); readers ignore unknown keys.
                    self._verify_file.write(json.dumps(
                        {"probs": probs, "drafted": drafted, "accepted": accepted,
                         "request_id": rid}) + "\n")
                total_drafted += drafted
                total_accepted += accepted
            if self._verify_file is not None:
                self._verify_file.flush()
            self.metrics.drafted.inc(total_drafted)
            self.metrics.accepted_observed.inc(total_accepted)
        requests = self.requests
        scheduled = [requests[rid] for rid in scheduler_output.num_scheduled_tokens
                     if rid in requests]
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        for rid in scheduler_output.finished_req_ids:
            driver.finished(rid)
            self._verified_confidences.pop(rid, None)
            self._decoding.pop(rid, None)
        self._note_decoding(scheduled)
        self._work_left = self.has_unfinished_requests()
        return outputs

    def update_draft_token_ids(self, draft_token_ids: DraftTokenIds) -> None:
        super().update_draft_token_ids(draft_token_ids)
        confidences = getattr(draft_token_ids, CONFIDENCES_ATTR, None)
        draft_seconds = getattr(draft_token_ids, DRAFT_SECONDS_ATTR, None)
        self.metrics.drafts_stopped_early.set(getattr(draft_token_ids, STOPPED_EARLY_ATTR, 0))
        # Positions actually drafted: fewer than the K decided when the drafter stopped early.
        positions = max(map(len, draft_token_ids.draft_token_ids), default=0)
        self._record_step(draft_seconds, positions)
        if not self.verify_sampled:
            self._drop_sampled_drafts(draft_token_ids.req_ids)
        if confidences is None:
            return
        ids, raws = [], []
        for rid, conf in zip(draft_token_ids.req_ids, confidences, strict=False):
            request = self.requests.get(rid)
            if request is None or not request.spec_token_ids:
                continue
            ids.append(rid)
            raws.append(conf[: len(request.spec_token_ids)])
        if not ids:
            return
        decode_tokens = sum(1 + len(raw) for raw in raws)
        lengths, rows = self.driver.trim(raws, self._upcoming_prefill(decode_tokens))
        predicted = 0.0
        for rid, raw, row, keep in zip(ids, raws, rows, lengths, strict=True):
            request = self.requests[rid]
            dropped = len(request.spec_token_ids) - keep
            if dropped > 0:
                request.spec_token_ids = request.spec_token_ids[:keep]
                self.metrics.trimmed.inc(dropped)
            self.metrics.request_k.observe(keep)
            predicted += sum(row[:keep])
            self._verified_confidences[rid] = list(raw[:keep])
        self.metrics.accepted_predicted.inc(predicted)

    def _upcoming_prefill(self, decode_tokens: int) -> int:
        """Prefill tokens the next step is expected to carry next to `decode_tokens`: the
        unprefilled parts of running requests, then waiting prompts while vLLM would admit
        them (`max_num_seqs`), within the token budget."""
        budget = self.max_num_scheduled_tokens - decode_tokens
        pending = 0
        for request in self.running:  # decoding ones have their prompt computed
            pending += max(0, request.num_prompt_tokens - request.num_computed_tokens)
        room = self.max_num_running_reqs - len(self.running)
        for request in self.waiting:
            if pending >= budget or room <= 0:
                break
            pending += request.num_tokens - request.num_computed_tokens
            room -= 1
        return upcoming_prefill_tokens(pending, self.max_num_scheduled_tokens, decode_tokens)

    def _drop_sampled_drafts(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            request = self.requests.get(rid)
            if (request is not None and request.spec_token_ids
                    and request.sampling_params is not None
                    and request.sampling_params.sampling_type != SamplingType.GREEDY):
                self.metrics.trimmed.inc(len(request.spec_token_ids))
                request.spec_token_ids = []

    def _record_step(self, draft_seconds: float | None, positions: int) -> None:
        """Keep (features, measured time) pairs; the driver refits every few hundred steps."""
        recorded = self.driver.record_step(draft_seconds, positions)
        if recorded is None:
            return
        self._write_records(recorded.observations)
        if recorded.refit_error is not None:
            log.error("SpecServe refit failed; keeping the previous model: %r",
                      recorded.refit_error)
        elif recorded.refitted:
            self.store.fitted = self.model.fitted_params()
            self.metrics.refits.inc()

    def _write_records(self, observations: list[StepObservation]) -> None:
        if self._record_file is not None:
            for o in observations:
                self._record_file.write(json.dumps(dataclasses.asdict(o)) + "\n")
            self._record_file.flush()

    def shutdown(self) -> None:
        if self.control is not None:
            self.control.stop()
        super().shutdown()
