"""The request plan: trace rows -> (send time, prompt length, output length), all pure.

The Azure trace's sizes are far beyond the tiny models' 1024-token context, so lengths are scaled
linearly (prompt and output each by its own factor, chosen so the trace's 99th percentile maps to
the limit) and clamped; the distribution's shape survives. Arrivals keep the trace's own gaps,
stretched or squeezed so the window's mean rate equals the load level's rate.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(ValueError):
    """The trace file is missing or malformed; the message says where."""


@dataclass(frozen=True)
class TraceRow:
    arrival_s: float  # seconds since the trace's first request
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class PlannedRequest:
    index: int
    send_at_s: float  # seconds after the level starts
    prompt_tokens: int
    output_tokens: int


def load_trace(path: Path) -> list[TraceRow]:
    """Rows of a TIMESTAMP,ContextTokens,GeneratedTokens CSV, in arrival order."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise TraceError(f"{path}: missing column(s) {', '.join(missing)}")
            raw = []
            for line, rec in enumerate(reader, start=2):
                try:
                    raw.append((datetime.fromisoformat(rec["TIMESTAMP"].strip()),
                                int(rec["ContextTokens"]), int(rec["GeneratedTokens"])))
                except (TypeError, ValueError) as exc:
                    raise TraceError(f"{path}:{line}: {exc}") from None
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from None
    if not raw:
        raise TraceError(f"{path}: no requests")
    raw.sort(key=lambda r: r[0])
    t0 = raw[0][0]
    return [TraceRow((t - t0).total_seconds(), p, o) for t, p, o in raw]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def length_scale(lengths: Sequence[int], limit: int) -> float:
    """The factor that maps the lengths' 99th percentile onto `limit`."""
    return limit / max(percentile(lengths, 99), 1.0)


def scale_length(n: int, factor: float, limit: int) -> int:
    return max(1, min(limit, round(n * factor)))


def plan_requests(
    rows: Sequence[TraceRow],
    *,
    rate: float,
    count: int,
    max_prompt_tokens: int,
    max_output_tokens: int,
    start: int = 0,
) -> list[PlannedRequest]:
    """`count` consecutive trace requests from `start`, time-scaled to a mean of `rate` req/s.

    Length factors come from the whole trace, so every window and rate sees the same mapping.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0 req/s, got {rate}")
    if count < 1 or start < 0 or start + count > len(rows):
        raise ValueError(f"cannot take {count} requests from row {start} of a "
                         f"{len(rows)}-request trace")
    window = rows[start:start + count]
    span = window[-1].arrival_s - window[0].arrival_s
    # The window's own mean gap is rescaled to 1/rate; a zero-length window falls back to even
    # spacing.
    stretch = (count - 1) / (rate * span) if span > 0 else 0.0
    prompt_factor = length_scale([r.prompt_tokens for r in rows], max_prompt_tokens)
    output_factor = length_scale([r.output_tokens for r in rows], max_output_tokens)
    return [
        PlannedRequest(
            index=i,
            send_at_s=(r.arrival_s - window[0].arrival_s) * stretch if span > 0 else i / rate,
            prompt_tokens=scale_length(r.prompt_tokens, prompt_factor, max_prompt_tokens),
            output_tokens=scale_length(r.output_tokens, output_factor, max_output_tokens),
        )
        for i, r in enumerate(window)
    ]


def poisson_plan(
    rows: Sequence[TraceRow],
    *,
    rate: float,
    count: int,
    max_prompt_tokens: int,
    max_output_tokens: int,
    start: int = 0,
    seed: int = 0,
) -> list[PlannedRequest]:
    """The lengths of `plan_requests`' window, sent with Poisson arrivals at `rate` req/s.

    The gaps are unit-mean exponential draws from `seed`, divided by `rate`: every rate replays
    the same arrival pattern, compressed or stretched, so probes at different rates (the SLO
    goodput search) differ in load only, not in luck. The first request is sent at 0.
    """
    lengths = plan_requests(rows, rate=rate, count=count, start=start,
                            max_prompt_tokens=max_prompt_tokens,
                            max_output_tokens=max_output_tokens)
    rng = random.Random(f"poisson:{seed}")
    at, out = 0.0, []
    for p in lengths:
        out.append(PlannedRequest(p.index, at / rate, p.prompt_tokens, p.output_tokens))
        at += rng.expovariate(1.0)
    return out


def token_prompts(token_ids: Sequence[int], lengths: Sequence[int], seed: int) -> list[list[int]]:
    """One prompt of each length, cut at seeded random offsets from a token stream."""
    longest = max(lengths, default=0)
    if longest > len(token_ids):
        raise ValueError(f"text has {len(token_ids)} tokens, a prompt needs {longest}")
    rng = random.Random(seed)
    prompts = []
    for n in lengths:
        at = rng.randrange(len(token_ids) - n + 1)
        prompts.append(list(token_ids[at:at + n]))
    return prompts
