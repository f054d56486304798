"""The request plan: trace rows -> (send time, prompt length, output length), all pure.

The Azure trace's sizes are far beyond the tiny models' 1024-token context, so lengths are mapped
from the trace into a range (prompt and output each by its own map, fitted on the whole trace so
every window and rate sees the same mapping) and clamped; the distribution's shape survives.

Workload shapes (`workload_shape`), all from the same trace rows, deterministic (no draws):

- ``conversation``: the trace as is. Each length is scaled linearly, the trace's 99th percentile
  onto the limit (`--max-prompt-tokens` 256, `--max-output-tokens` 128 by default): prompts 1..256
  (trace p50 1020 -> 63), outputs 1..128 (trace p50 129 -> 27); means 71 and 45 over the
  trace. `plan_requests` is this shape.
- ``prefill-heavy``: long prompts, short outputs. Outputs are scaled as above onto 1..64; prompts
  are mapped affinely, the trace's 1st percentile (29 tokens) onto 5/8 of the context and its
  99th (4142) onto the context minus 64, clamped: with a 1024-token context, prompts 640..960
  (trace p50 1020 -> 717, p90 2735 -> 850), so prompt + output <= 1024; means 727 and 22.
- ``decode-heavy``: short prompts, long outputs. Prompts scaled linearly onto 1..64 (trace p50
  1020 -> 16), outputs onto 1..512 (trace p50 129 -> 110, p90 424 -> 361); means 18 and 179;
  64 + 512 <= 1024. A context below 576 shortens the outputs to the context minus 64.

Every shape checks that its longest prompt plus its longest output fits the context.

Arrivals: `plan_requests` keeps the trace's own gaps, stretched or squeezed so the window's mean
rate equals the load level's rate (the trace-replay bench). `timed_plan` replaces them by a
seeded renewal process with unit-mean gaps divided by the rate, so every rate replays the same
pattern, scaled (the SLO-goodput search): ``poisson`` (exponential gaps, coefficient of
variation 1) or ``bursty`` (gamma gaps of shape 1 / CV^2 and scale CV^2, so mean 1 and
coefficient of variation CV, 3 by default: most gaps are near 0, a few are long, so requests
come in bursts; the long-run rate is the same). A window of n requests is not renormalised: its
own mean gap is off by about CV / sqrt(n) (27% for 120 bursty requests, 9% Poisson) from seed
to seed, which shows as spread between rounds (each round has its own seed).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class LengthMap:
    """Trace lengths -> planned lengths in lo..hi, fitted on the whole trace's lengths.

    `from_percentile` None: linear through zero, the 99th percentile onto `hi` (`length_scale`),
    clamped to 1..hi. Otherwise affine: that percentile onto `lo`, the 99th onto `hi`, clamped
    to lo..hi (a range that does not start near zero, e.g. long prompts only).
    """

    lo: int
    hi: int
    from_percentile: float | None = None

    def fit(self, lengths: Sequence[int]) -> Callable[[int], int]:
        if self.from_percentile is None:
            factor = length_scale(lengths, self.hi)
            return lambda n: scale_length(n, factor, self.hi)
        a, b = percentile(lengths, self.from_percentile), percentile(lengths, 99)
        slope = (self.hi - self.lo) / max(b - a, 1.0)
        return lambda n: max(self.lo, min(self.hi, round(self.lo + (n - a) * slope)))


@dataclass(frozen=True)
class Shape:
    name: str
    prompt: LengthMap
    output: LengthMap

    @property
    def longest(self) -> int:
        return self.prompt.hi + self.output.hi


WORKLOADS = ("conversation", "prefill-heavy", "decode-heavy")
DEFAULT_CONTEXT_TOKENS = 1024  # the tiny models' max_position_embeddings (tiny.py)
SHORT_OUTPUT_TOKENS = 64  # prefill-heavy's outputs
SHORT_PROMPT_TOKENS = 64  # decode-heavy's prompts
LONG_OUTPUT_TOKENS = 512  # decode-heavy's outputs, at most
LONG_PROMPT_FLOOR = 5 / 8  # prefill-heavy's shortest prompt, as a fraction of the context


def workload_shape(name: str, *, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                   max_prompt_tokens: int = 256, max_output_tokens: int = 128) -> Shape:
    """One of `WORKLOADS` (the module docstring gives the numbers); the max_* limits are the
    conversation shape's. Raises ValueError when prompt + output could exceed the context."""
    if name == "conversation":
        shape = Shape(name, LengthMap(1, max_prompt_tokens), LengthMap(1, max_output_tokens))
    elif name == "prefill-heavy":
        hi = context_tokens - SHORT_OUTPUT_TOKENS
        shape = Shape(name, LengthMap(min(round(context_tokens * LONG_PROMPT_FLOOR), hi), hi,
                                      from_percentile=1),
                      LengthMap(1, SHORT_OUTPUT_TOKENS))
    elif name == "decode-heavy":
        shape = Shape(name, LengthMap(1, SHORT_PROMPT_TOKENS), LengthMap(
            1, min(LONG_OUTPUT_TOKENS, context_tokens - SHORT_PROMPT_TOKENS)))
    else:
        raise ValueError(f"unknown workload {name!r} (one of {', '.join(WORKLOADS)})")
    if min(shape.prompt.hi, shape.output.hi) < 1 or shape.longest > context_tokens:
        raise ValueError(f"workload {name}: prompts up to {shape.prompt.hi} and outputs up to "
                         f"{shape.output.hi} tokens do not fit a {context_tokens}-token context")
    return shape


def shaped_plan(rows: Sequence[TraceRow], shape: Shape, *, rate: float, count: int,
                start: int = 0) -> list[PlannedRequest]:
    """`count` consecutive trace requests from `start`, time-scaled to a mean of `rate` req/s,
    their lengths mapped by `shape` (fitted on the whole trace)."""
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
    prompt = shape.prompt.fit([r.prompt_tokens for r in rows])
    output = shape.output.fit([r.output_tokens for r in rows])
    return [
        PlannedRequest(
            index=i,
            send_at_s=(r.arrival_s - window[0].arrival_s) * stretch if span > 0 else i / rate,
            prompt_tokens=prompt(r.prompt_tokens),
            output_tokens=output(r.output_tokens),
        )
        for i, r in enumerate(window)
    ]


def plan_requests(
    rows: Sequence[TraceRow],
    *,
    rate: float,
    count: int,
    max_prompt_tokens: int,
    max_output_tokens: int,
    start: int = 0,
) -> list[PlannedRequest]:
    """The conversation shape's `shaped_plan`: lengths scaled linearly, the trace's 99th
    percentile onto each limit."""
    shape = Shape("conversation", LengthMap(1, max_prompt_tokens), LengthMap(1, max_output_tokens))
    return shaped_plan(rows, shape, rate=rate, count=count, start=start)


ARRIVALS = ("poisson", "bursty")
BURSTY_CV = 3.0


def unit_gaps(arrivals: str, count: int, seed: int, cv: float = BURSTY_CV) -> list[float]:
    """`count` seeded inter-arrival gaps of mean 1: exponential (poisson) or gamma with
    coefficient of variation `cv` (bursty; shape 1 / cv^2, scale cv^2)."""
    if arrivals == "poisson":
        rng = random.Random(f"poisson:{seed}")
        return [rng.expovariate(1.0) for _ in range(count)]
    if arrivals == "bursty":
        if cv <= 0:
            raise ValueError(f"bursty arrivals need a coefficient of variation > 0, got {cv}")
        rng = random.Random(f"bursty:{seed}:{cv!r}")
        return [rng.gammavariate(1 / cv**2, cv**2) for _ in range(count)]
    raise ValueError(f"unknown arrivals {arrivals!r} (one of {', '.join(ARRIVALS)})")


def timed_plan(lengths: Sequence[PlannedRequest], *, rate: float, arrivals: str = "poisson",
               seed: int = 0, cv: float = BURSTY_CV) -> list[PlannedRequest]:
    """The planned lengths, sent by a renewal process at `rate` req/s: `unit_gaps` divided by
    `rate`, so every rate replays the same arrival pattern, compressed or stretched, and probes
    at different rates (the SLO goodput search) differ in load only, not in luck. The first
    request is sent at 0."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 req/s, got {rate}")
    gaps = unit_gaps(arrivals, len(lengths), seed, cv)
    at, out = 0.0, []
    for p, gap in zip(lengths, gaps, strict=True):
        out.append(PlannedRequest(p.index, at / rate, p.prompt_tokens, p.output_tokens))
        at += gap
    return out


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
    """The lengths of `plan_requests`' window, sent with Poisson arrivals at `rate` req/s
    (`timed_plan`)."""
    lengths = plan_requests(rows, rate=rate, count=count, start=start,
                            max_prompt_tokens=max_prompt_tokens,
                            max_output_tokens=max_output_tokens)
    return timed_plan(lengths, rate=rate, seed=seed)


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
