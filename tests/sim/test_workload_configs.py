"""The bench's requests and configurations, as the simulator replays them."""

from pathlib import Path

import pytest

from specserve_engine.trace_replay.runner import standard_configs
from specserve_engine.trace_replay.trace import plan_requests
from specserve_sim.configs import BENCH_CONFIGS, bench_config
from specserve_sim.workload import bench_level, native, offered_rate
from tests.sim.helpers import trace_rows


def test_a_bench_level_is_the_bench_plan() -> None:
    rows = trace_rows()
    plan = plan_requests(rows, rate=2.0, count=30, start=7, max_prompt_tokens=256,
                         max_output_tokens=128)
    sim = bench_level(rows, rate=2.0, count=30, start=7, max_prompt_tokens=256,
                      max_output_tokens=128)
    assert [(int(s.request_id), s.arrival, s.prompt_tokens, s.output_tokens) for s in sim] == \
        [(p.index, p.send_at_s, p.prompt_tokens, p.output_tokens) for p in plan]


def test_native_keeps_lengths_and_divides_gaps() -> None:
    rows = trace_rows(50)
    slow, fast = native(rows), native(rows, speedup=4.0)
    assert [s.prompt_tokens for s in slow] == [r.prompt_tokens for r in rows]
    assert [f.arrival * 4 for f in fast] == pytest.approx([s.arrival for s in slow])
    assert offered_rate(fast) == pytest.approx(4 * offered_rate(slow))
    clipped = native(rows, max_model_len=300)
    assert all(r.prompt_tokens + r.output_tokens <= 300 for r in clipped)


def test_every_bench_configuration_has_a_simulated_replica() -> None:
    names = [c.name for c in standard_configs(Path("draft"), Path("policy.json"))]
    assert sorted(names) == sorted(BENCH_CONFIGS)
    k3 = bench_config("K=3", 0.06)
    assert (k3.engine_k_max, k3.specserve, k3.k_for_batch(100)) == (3, False, 3)
    table = bench_config("dynamic-sd", 0.06)
    assert table.k_for_batch(1) > table.k_for_batch(64) == 0
    adaptive = bench_config("adaptive", 0.06)
    assert adaptive.specserve and adaptive.policy.slo.tpot_seconds == 0.06
    assert bench_config("off", 0.06).engine_k_max == 0
    with pytest.raises(ValueError, match="unknown"):
        bench_config("K=3-ish", 0.06)
