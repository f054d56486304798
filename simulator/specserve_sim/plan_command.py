"""`specserve plan`: trace + TPOT SLO + hardware model -> replicas per load level, with and
without adaptive speculation (a markdown table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from specserve_engine.serving import UserError
from specserve_engine.trace_replay.trace import load_trace
from specserve_sim import plan, workload
from specserve_sim.hardware import HardwareModel


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", type=Path, required=True, help="Azure-format trace CSV")
    p.add_argument("--tpot-ms", type=float, default=15.0, help="TPOT SLO (ms)")
    p.add_argument("--acceptance", type=float, default=0.7,
                   help="per-token draft acceptance (from verification records)")
    p.add_argument("--k-max", type=int, default=5)
    p.add_argument("--rates", type=float, nargs="+", help="load levels, req/s (default: "
                   "the trace's mean rate, doubling)")
    p.add_argument("--max-model-len", type=int, default=8192)


def run(args: argparse.Namespace) -> int:
    if not args.trace.exists():
        raise UserError(f"no trace at {args.trace}")
    requests = workload.native(load_trace(args.trace), max_model_len=args.max_model_len)
    hw = HardwareModel()
    rates = args.rates or plan.default_rates(requests)
    rows = plan.plan(requests, rates, args.tpot_ms / 1e3, args.acceptance,
                     plan.hardware_params(hw), k_max=args.k_max)
    print(plan.markdown(rows, f"Hardware model: {hw.name}. Trace: {args.trace.name} "
                              f"({len(requests)} requests). TPOT SLO {args.tpot_ms:g} ms, "
                              f"acceptance {args.acceptance:g}, K max {args.k_max}.\n"))
    return 0
