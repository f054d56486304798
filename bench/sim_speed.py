"""How fast is the simulator? The whole conversation trace on 32 GPU replicas.

The Azure conversation trace (19,366 requests, native lengths) with its gaps divided by
`--speedup` (default 100: ~550 req/s, about what 32 replicas of the H100 model serve with the
TPOT p99 near a 50 ms SLO; `--replicas` to check that fewer miss it), SpecServe adaptive on the
published H100 model (hardware.py), acceptance from the recorded verifications when they exist
(bench/results/sim-groundtruth/verifications.jsonl), else synthetic ones.

    python bench/sim_speed.py [--replicas 32] [--speedup 100] [--profile-hot-loop]
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import time
from pathlib import Path

from specserve_engine.machine import this_machine
from specserve_engine.policy import Policy, SloTargets
from specserve_engine.trace_replay.trace import load_trace
from specserve_sim import synthetic, workload
from specserve_sim.cluster import Cluster
from specserve_sim.command import summary_text
from specserve_sim.groundtruth import GroundTruth, VerificationSampler
from specserve_sim.hardware import HardwareModel, grid_profile
from specserve_sim.replica import ReplicaConfig

RECORDED = Path("bench/results/sim-groundtruth/verifications.jsonl")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default="../shared/traces/azure_llm_conv_2023.csv")
    p.add_argument("--replicas", type=int, default=32)
    p.add_argument("--speedup", type=float, default=100.0)
    p.add_argument("--tpot-slo-ms", type=float, default=50.0)
    p.add_argument("--profile-hot-loop", action="store_true", help="run under cProfile")
    args = p.parse_args()
    hw = HardwareModel()
    sampler = (VerificationSampler.from_jsonl(RECORDED) if RECORDED.is_file()
               else synthetic.ground_truth().verifications)
    truth = GroundTruth(hw, sampler, f"{hw.name}; acceptance {sampler.source}")
    requests = workload.native(load_trace(Path(args.trace)), speedup=args.speedup)
    slo = args.tpot_slo_ms / 1000
    config = ReplicaConfig("adaptive", Policy(k_max=5, slo=SloTargets(tpot_seconds=slo)),
                           profile=grid_profile(hw)).with_gpu_defaults()
    cluster = Cluster(requests, config, truth, args.replicas, keep_steps=True)
    profiler = cProfile.Profile() if args.profile_hot_loop else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = cluster.run()
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - started
    print(f"{len(requests)} requests at {workload.offered_rate(requests):.0f} req/s on "
          f"{args.replicas} replicas; CPU {this_machine().cpu_model}, Python "
          f"{platform.python_version()}")
    print(summary_text(result, slo, wall, truth.description, config.name))
    print(f"wall {wall:.1f} s ({wall / max(len(result.steps), 1) * 1e6:.0f} us per engine step)")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
