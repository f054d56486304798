"""Predicted vs measured engine cycles, on steps with and without prefill (issue #22).

Reads the cycle records a SpecServe engine wrote with `SPECSERVE_RECORD_CYCLES` (the benches
set it for every SpecServe engine: `<engine log>.cycles.jsonl` beside each engine log) and
prints, per file, the table of `specserve_engine.policy.cycle_error`: the median signed error
predicted / measured - 1 per (prefill or not, batch range) and the share of cycles within the
tolerance. Pure: reads JSON lines, runs no engine.

    python bench/cycle_error.py slo-goodput/engine-adaptive-r0.cycles.jsonl [--skip 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specserve_engine.policy.cycle_error import CycleRecord, markdown


def read_records(path: Path) -> list[CycleRecord]:
    return [CycleRecord.from_json(json.loads(line))
            for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("records", nargs="+", type=Path, help="*.cycles.jsonl files")
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--skip", type=int, default=0,
                    help="leave out each file's first cycles (warm-up, before the first refits)")
    args = ap.parse_args(argv)
    for path in args.records:
        try:
            records = read_records(path)[args.skip:]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{path}: cannot read cycle records: {exc}")
            return 2
        print(f"### {path.name} ({len(records)} cycles)\n")
        print(markdown(records, args.tolerance))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
