"""One simulated engine: vLLM's batching limits, chunked prefill, and the policy driven as the
engine drives it."""

import pytest

from specserve_engine.policy import LogisticCalibration, Policy, SloTargets
from specserve_engine.policy.driver import EARLY_REFITS
from specserve_sim.cluster import Cluster
from specserve_sim.replica import Replica, ReplicaConfig
from tests.sim.helpers import requests, truth


def _run(config: ReplicaConfig, reqs, accept_all: bool = False, seed: int = 0):
    gt, steps = truth(accept_all)
    cluster = Cluster(reqs, config, gt, 1, seed=seed)
    return cluster, cluster.run(), steps


def test_batches_stay_within_max_num_seqs_and_the_token_budget() -> None:
    config = ReplicaConfig("K=3", engine_k_max=3, specserve=False, max_num_seqs=4,
                           max_num_batched_tokens=64)
    _, result, steps = _run(config, requests(12, gap=0.0, prompt=100, output=10))
    targets = [q for q in steps.queries if q[0] == "target"]
    assert targets and all(b <= 4 and n <= 64 for _, b, n, _ in targets)
    assert max(s.batch for s in result.steps) == 4
    assert all(r.output_tokens == 10 and r.finish is not None for r in result.requests)


def test_a_long_prompt_is_prefilled_in_chunks_before_its_first_token() -> None:
    config = ReplicaConfig("off", engine_k_max=0, specserve=False, max_num_batched_tokens=64)
    _, result, steps = _run(config, requests(1, prompt=200, output=5))
    chunks = [n for role, _, n, _ in steps.queries if role == "target"]
    assert chunks[:4] == [64, 64, 64, 8] and chunks[4:] == [1] * 4
    # The first token comes with the last chunk, every later step emits one (no drafts).
    rec = result.requests[0]
    step_times = [s.time for s in result.steps]
    assert rec.first_token == step_times[3] and rec.finish == step_times[-1]
    assert rec.tpot == pytest.approx((step_times[-1] - step_times[3]) / 4)


def test_static_k_verifies_k_drafts_and_emits_exactly_the_requested_tokens() -> None:
    config = ReplicaConfig("K=3", engine_k_max=3, specserve=False)
    _, result, _ = _run(config, requests(6, output=30))
    verifying = [s for s in result.steps if s.verifies]
    assert verifying
    assert all(s.drafted == 3 * s.verifies and 0 <= s.accepted <= s.drafted for s in verifying)
    assert all(r.output_tokens == 30 for r in result.requests)
    # Accepted drafts are tokens: fewer decode steps than tokens.
    assert sum(s.accepted for s in result.steps) > 0
    assert len(result.steps) < 6 * 30


def test_all_drafts_accepted_means_k_plus_one_tokens_per_step() -> None:
    config = ReplicaConfig("K=3", engine_k_max=3, specserve=False)
    _, result, _ = _run(config, requests(1, output=41), accept_all=True)
    # One prefill step (first token, drafts 3), then 10 steps of 4 tokens each.
    assert len(result.steps) == 11


def test_the_k_decided_at_one_step_governs_the_drafts_verified_at_the_next() -> None:
    policy = Policy(version=1, mode="static", k_max=5, static_k=1)
    config = ReplicaConfig("static", policy, engine_k_max=5)
    gt, _ = truth()
    cluster = Cluster(requests(1, output=200), config, gt, 1)
    replica = cluster.replicas[0]
    cluster.kernel.at(0.3, lambda: replica.push(policy.model_copy(
        update={"version": 2, "static_k": 4})))
    result = cluster.run()
    ks = [s.k for s in result.steps]
    switch = ks.index(4)
    assert set(ks[:switch]) == {1} and set(ks[switch:-1]) <= {4}
    # The step that decided K=4 still verified one draft; the next verifies four.
    assert result.steps[switch].drafted == 1
    assert result.steps[switch + 1].drafted == 4


def test_the_policy_learns_from_every_verification_and_refits_on_the_engine_schedule() -> None:
    policy = Policy(mode="adaptive", k_max=5, slo=SloTargets(tpot_seconds=0.05))
    config = ReplicaConfig("adaptive", policy)
    cluster, result, _ = _run(config, requests(8, output=60))
    replica = cluster.replicas[0]
    assert replica.driver is not None
    assert replica.driver.steps >= EARLY_REFITS[0]
    # The timing model started from the built-in prior and was refitted to the ground truth.
    assert replica.driver.model.timing.target != policy.model.target
    # Its calibration was refitted from the verified drafts: no longer the identity.
    assert sum(s.accepted for s in result.steps) > 0
    assert replica.driver.model.acceptance.calibration != [LogisticCalibration()]


def test_threshold_mode_verifies_only_drafts_above_the_threshold() -> None:
    policy = Policy(mode="threshold", k_max=5, threshold_probability=0.6)
    _, result, _ = _run(ReplicaConfig("threshold-0.6", policy), requests(4, output=40))
    assert any(s.drafted < 5 * s.verifies for s in result.steps if s.verifies)
    assert all(r.output_tokens == 40 for r in result.requests)


def test_pushes_follow_the_engine_rules() -> None:
    gt, _ = truth()
    cluster = Cluster([], ReplicaConfig("adaptive", Policy(version=3), engine_k_max=5), gt, 1)
    replica = cluster.replicas[0]
    assert not replica.push(Policy(version=2))  # stale version
    assert not replica.push(Policy(version=4, k_max=8, static_k=3))  # above the engine's K_max
    assert replica.push(Policy(version=4, mode="off"))
    assert replica.policy is not None and replica.policy.mode == "off"


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    config = ReplicaConfig("adaptive", Policy(slo=SloTargets(tpot_seconds=0.05)))
    runs = [_run(config, requests(10, output=50), seed=s)[1] for s in (0, 0, 1)]
    finish = [[r.finish for r in run.requests] for run in runs]
    assert finish[0] == finish[1]
    assert finish[0] != finish[2]


def test_a_draft_model_engine_pays_one_draft_forward_at_k0_and_off_pays_none() -> None:
    table = ((1, 1, 2), (2, 1024, 0))  # Dynamic-SD: K=2 alone, K=0 in any batch of two or more
    with_draft = ReplicaConfig("dynamic-sd", engine_k_max=2, specserve=False, k_table=table)
    _, result, steps = _run(with_draft, requests(6, gap=0.0, output=20))
    k0 = [s for s in result.steps if s.k == 0 and s.batch >= 2]
    assert k0 and not any(s.drafted for s in k0[1:])
    drafts = sum(1 for q in steps.queries if q[0] == "draft")
    # At least one draft forward per step, K=0 included; a step with prefill and K >= 2 asks
    # the ground truth twice (its first forward runs over the prefill too).
    assert len(result.steps) <= drafts <= 2 * len(result.steps)
    _, off_result, off_steps = _run(ReplicaConfig("off", engine_k_max=0, specserve=False),
                                    requests(6, gap=0.0, output=20))
    assert off_result.steps and not any(q[0] == "draft" for q in off_steps.queries)


def test_the_policy_sees_forwards_and_host_time_as_the_engine_measures_them() -> None:
    config = ReplicaConfig("adaptive", Policy(slo=SloTargets(tpot_seconds=0.05)))
    cluster, _, _ = _run(config, requests(4, gap=0.0, output=30))
    driver = cluster.replicas[0].driver
    assert driver is not None
    observations = list(driver.observations)
    host = [o for o in observations if o.role == "host"]
    target = [o for o in observations if o.role == "target"]
    # LinearSteps: host is 1 ms per cycle; the target observation is the forward less drafting.
    assert host and all(o.seconds == pytest.approx(0.001) for o in host)
    assert target and all(o.seconds == pytest.approx(0.010 + 1e-4 * o.num_tokens)
                          for o in target)


def test_an_engine_that_skips_the_k0_draft_forward_catches_the_draft_up_when_it_drafts() -> None:
    """SpecServe's worker (vllm/draft_catchup.py): K = 0 steps run no draft forward; the first
    drafting step after them runs the draft over every token it skipped."""
    off = Policy(mode="off")
    kept = ReplicaConfig("adaptive", off, engine_k_max=2, skips_draft_when_off=False)
    skipping = ReplicaConfig("adaptive", off, engine_k_max=2, skips_draft_when_off=True)
    _, kept_run, kept_steps = _run(kept, requests(3, gap=0.0, prompt=20, output=12))
    _, skip_run, skip_steps = _run(skipping, requests(3, gap=0.0, prompt=20, output=12))
    assert sum(q[0] == "draft" for q in kept_steps.queries) == len(kept_run.steps)
    assert not any(q[0] == "draft" for q in skip_steps.queries)
    assert skip_run.end_time < kept_run.end_time
    # Speculation resumes after K = 0 steps: the first drafting forward runs over the lag.
    gt, steps = truth(False)
    replica = Replica("r", skipping, gt, 0)
    for r in requests(2, gap=0.0, prompt=20, output=30):
        replica.add(r)
    now = 0.0
    for _ in range(4):  # the prefill step and three decodes, all at K = 0
        now += replica.start_step(now)
        replica.finish_step(now)
    assert not any(q[0] == "draft" for q in steps.queries)
    assert replica.push(Policy(version=1, mode="static", k_max=2, static_k=2))
    now += replica.start_step(now)
    replica.finish_step(now)
    first = next(q for q in steps.queries if q[0] == "draft")
    assert first[2] == 2 + (2 * 20 + 2 * 3)  # 1 per request + the prompts and 3 decodes each
