"""The simulation studies (bench/SIMULATION.md) on the GPU model: tables, JSON and plots.

    python bench/sim_studies.py configs     every bench configuration, one replica, whole trace
    python bench/sim_studies.py autoscale   fixed / HPA / Dynamo-style planner / SpecServe

Acceptance comes from `--verifications` (this machine's tiny models' verification records,
bench/results/sim-groundtruth/verifications.jsonl) or synthetic records until those exist;
step times from the published H100 model (specserve_sim.hardware). See studies.py for the load
shaping and the time compression.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from specserve_engine.policy.params import SloTargets
from specserve_engine.trace_replay.trace import load_trace
from specserve_sim import studies, workload
from specserve_sim.baselines import FixedReplicas
from specserve_sim.cluster import Cluster
from specserve_sim.hardware import HardwareModel
from specserve_sim.interface import SimResult

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_conv_2023.csv"
OUT = ROOT / "bench" / "results" / "simulation"
VERIFICATIONS = ROOT / "bench" / "results" / "sim-groundtruth" / "verifications.jsonl"


def _plot_series(results: dict[str, SimResult], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    for name, res in results.items():
        t = [p.time for p in res.series]
        axes[0].plot(t, [p.arrivals_per_s for p in res.series], label=name, lw=0.8)
        axes[1].plot(t, [p.ready + p.starting for p in res.series], label=name, lw=1.0)
        axes[2].plot(t, [p.mean_k if p.mean_k is not None else float("nan")
                         for p in res.series], label=name, lw=0.8)
        axes[3].plot(t, [p.attainment if p.attainment is not None else float("nan")
                         for p in res.series], label=name, lw=0.8)
    for ax, label in zip(axes, ("arrivals/s", "replicas (ready+starting)", "mean K",
                                "TPOT attainment"), strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("simulated seconds")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _requests(args: argparse.Namespace) -> list:
    rows = load_trace(args.trace)
    return workload.native(rows, speedup=args.compress, count=args.count,
                           max_model_len=args.max_model_len)


def run_configs(args: argparse.Namespace) -> str:
    hw = HardwareModel()
    truth = studies.ground_truth(args.verifications, hw)
    slo = SloTargets(tpot_seconds=args.tpot_ms / 1e3, ttft_seconds=args.ttft_ms / 1e3)
    reqs = _requests(args)
    profile = studies.gpu_profile(hw)
    rows, results = [], {}
    for cfg in studies.bench_configs(slo, profile):
        if args.only and cfg.name not in args.only:
            continue
        t0 = time.time()
        res = Cluster(reqs, cfg, truth, initial_replicas=args.replicas,
                      controller=FixedReplicas(args.replicas, interval_s=10.0), seed=args.seed,
                      keep_steps=True).run()
        rows.append(studies.summarise(cfg.name, res, slo.tpot_seconds or 0.0,
                                      slo.ttft_seconds or 0.0))
        results[cfg.name] = res
        print(f"{cfg.name}: {time.time() - t0:.0f} s wall", flush=True)
    head = (f"GPU model: {hw.name}. Acceptance: {truth.verifications.source} (mean "
            f"{truth.verifications.mean_acceptance:.2f}). Trace: {args.trace.name}, "
            f"{len(reqs)} requests, arrivals / {args.compress:g} "
            f"({workload.offered_rate(reqs):.1f} req/s mean), {args.replicas} replica(s); "
            f"TPOT SLO {args.tpot_ms} ms, TTFT {args.ttft_ms} ms.\n\n")
    md = head + studies.table(rows, args.attainment)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "configs.md").write_text(md)
    (args.out / "configs.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    _plot_series(results, args.out / "configs_timeseries.png", "bench configurations, GPU model")
    return md


def run_autoscale(args: argparse.Namespace) -> str:
    hw = HardwareModel()
    truth = studies.ground_truth(args.verifications, hw)
    acc = truth.verifications.mean_acceptance
    base = _requests(args)
    ctx = sum(r.prompt_tokens for r in base) / len(base)
    out_tok = sum(r.output_tokens for r in base) / len(base)
    ts = studies.TimeScale(args.compress)
    spec = studies.deployment_spec(args.tpot_ms, args.ttft_ms, args.attainment, 1,
                                   args.max_replicas, args.low)
    slo = SloTargets(tpot_seconds=args.tpot_ms / 1e3, ttft_seconds=args.ttft_ms / 1e3)
    configs = {c.name: c for c in studies.bench_configs(slo, studies.gpu_profile(hw))}
    cfg = configs["adaptive"]
    # Capacity per replica the load is sized with: one simulated replica's SLO goodput at
    # static K=3 (prefills included), so that "4-32 replicas' worth" holds for a static fleet.
    cap = studies.simulated_capacity_req_s(
        base, configs["K=3"], truth, tpot_s=args.tpot_ms / 1e3, ttft_s=args.ttft_ms / 1e3,
        attainment=args.attainment, seed=args.seed)
    print(f"capacity per replica (simulated, static K=3): {cap:.2f} req/s", flush=True)
    per_replica = cap * args.utilization
    reqs = studies.shape_load(base, args.low * per_replica, args.high * per_replica,
                              smooth_s=ts.s(150.0), seed=args.seed)
    study = studies.AutoscaleStudy(reqs, cfg, truth, spec, ts, args.cold_start_s, hw, acc,
                                   ctx + out_tok / 2, out_tok)
    rows, results = [], {}
    for name, make in study.controllers(peak=args.high).items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        t0 = time.time()
        start = args.high if name.startswith("fixed") else args.low
        res = study.run(make(), initial=start, seed=args.seed)
        rows.append(studies.summarise(name, res, args.tpot_ms / 1e3, args.ttft_ms / 1e3))
        results[name] = res
        print(f"{name}: {time.time() - t0:.0f} s wall, {res.replica_seconds:.0f} replica-s",
              flush=True)
    best, saved = studies.saving(rows, "specserve joint", args.attainment) if any(
        r.name == "specserve joint" for r in rows) else (None, None)
    head = (f"GPU model: {hw.name}. Acceptance: {truth.verifications.source} (mean {acc:.2f}). "
            f"Trace: {args.trace.name}, whole trace, arrivals and every control timescale / "
            f"{args.compress:g}; load shaped to {args.low}-{args.high} replicas' worth at "
            f"{per_replica:.2f} req/s per replica ({args.utilization:.0%} of one simulated "
            f"replica's SLO goodput at static K=3, {cap:.2f}); "
            f"{len(reqs)} requests; "
            f"cold start {args.cold_start_s:g} s (/ {args.compress:g}); TPOT SLO "
            f"{args.tpot_ms} ms p90, TTFT {args.ttft_ms} ms, attainment target "
            f"{args.attainment:.0%}.\n\n")
    verdict = ("\nBest baseline meeting the target: "
               f"{best or 'none'}; SpecServe joint saves "
               f"{'-' if saved is None else f'{saved:.1%}'} of its replica-seconds.\n")
    md = head + studies.table(rows, args.attainment) + verdict
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoscale.md").write_text(md)
    (args.out / "autoscale.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    _plot_series(results, args.out / "autoscale_timeseries.png",
                 "autoscaling on the GPU model: load, replicas, mean K, attainment")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=["configs", "autoscale"])
    p.add_argument("--trace", type=Path, default=TRACE)
    p.add_argument("--verifications", type=Path, default=VERIFICATIONS,
                   help="verification records (JSONL); synthetic when the file is absent")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--count", type=int, default=None, help="trace rows (default: all)")
    p.add_argument("--compress", type=float, default=1.0,
                   help="divide arrivals (and, for autoscale, control timescales) by this")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--tpot-ms", type=int, default=15)
    p.add_argument("--ttft-ms", type=int, default=2000)
    p.add_argument("--attainment", type=float, default=0.9)
    p.add_argument("--replicas", type=int, default=1, help="configs: replicas")
    p.add_argument("--low", type=int, default=4, help="autoscale: replicas needed at the trough")
    p.add_argument("--high", type=int, default=32, help="autoscale: replicas needed at the peak")
    p.add_argument("--max-replicas", type=int, default=40)
    p.add_argument("--utilization", type=float, default=0.75,
                   help="autoscale: a replica 'needed' carries this fraction of its SLO "
                        "goodput (at 1.0 the fixed peak fleet runs at its SLO's edge and "
                        "bursts break it)")
    p.add_argument("--cold-start-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", help="run only these configurations / controllers")
    args = p.parse_args(argv)
    md = run_configs(args) if args.study == "configs" else run_autoscale(args)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
