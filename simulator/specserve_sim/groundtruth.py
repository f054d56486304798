"""Ground truth the simulated engines run on, independent of the policy's own model.

A simulator whose step times came from the policy's fitted coefficients could only agree with
the policy. Here step times come from raw measurements and acceptance from the real engine's
verification records; the policy inside each simulated replica starts from its own profile and
learns from the simulated observations exactly as in the engine.

`StepTimeTable`: raw step records (`SPECSERVE_RECORD_STEPS` lines, `StepObservation` fields:
role, num_requests, num_tokens, context_len, seconds), or a profile's points (medians per grid
cell), bucketed and interpolated. No formula is fitted: per role, records are grouped by batch
size B; within a group, cells on a geometric grid of tokens per request u = N / B and context L
hold the median seconds at the median (u, L) of their records. A query interpolates linearly in
L within a u-cell row, then in u between rows, then in B between groups; outside the measured
range it extrapolates linearly from the two outermost points, with a slope never below 0 (a
bigger step is never faster). Any role present is served ("target", "draft", "host"); a role
with no records costs 0 (the host role is optional).

`VerificationSampler`: verification records (`SPECSERVE_RECORD_VERIFICATIONS` lines: probs,
drafted, accepted, optionally request_id). Each simulated request gets its own stream: with
request ids, one recorded request's verifications in order (cycled), so a hard prompt stays hard
for the whole request as in the engine; without them, records drawn i.i.d. A verify of K tokens
uses the next record: probs[:K], accepted = min(accepted, K). A record shorter than K is extended
by the stream's next record (acceptance continues only if every earlier token passed).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from specserve_engine.policy import Profile

ROLES = ("target", "draft", "host")
_U_RATIO = 1.25  # geometric cell width in tokens per request
_L_RATIO = 1.25  # ... and in context (on L + _L_OFFSET, so short contexts share cells)
_L_OFFSET = 16.0


class StepTimes(Protocol):
    """Seconds of one forward step of `role` (or the host's share of one engine cycle)."""

    def step_seconds(self, role: str, num_requests: int, num_tokens: int,
                     context_len: float) -> float: ...


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through (xs, ys) (xs ascending, distinct); linear extrapolation from
    the outermost two points with a slope clamped at >= 0; one point: constant."""
    n = len(xs)
    if n == 1:
        return ys[0]
    i = bisect_left(xs, x)
    if 0 < i < n:
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)
    if i == 0:
        slope = max((ys[1] - ys[0]) / (xs[1] - xs[0]), 0.0)
        return max(ys[0] + slope * (x - xs[0]), 0.0)
    slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
    return ys[-1] + slope * (x - xs[-1])


@dataclass(frozen=True)
class _Row:
    """Cells of one tokens-per-request bucket: context coordinates and median seconds."""

    u: float
    ls: tuple[float, ...]
    ts: tuple[float, ...]

    def at(self, context_len: float) -> float:
        return _interp(self.ls, self.ts, context_len)


@dataclass(frozen=True)
class _Group:
    """All cells of one batch size."""

    b: int
    us: tuple[float, ...]
    rows: tuple[_Row, ...]

    def at(self, u: float, context_len: float) -> float:
        us, rows = self.us, self.rows
        if len(rows) == 1:
            return rows[0].at(context_len)
        i = min(max(bisect_left(us, u), 1), len(us) - 1)
        return _interp((us[i - 1], us[i]),
                       (rows[i - 1].at(context_len), rows[i].at(context_len)), u)


def _bucket(value: float, ratio: float) -> int:
    return math.floor(math.log(max(value, 1e-9)) / math.log(ratio))


def _median_point(points: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    return (statistics.median(p[0] for p in points), statistics.median(p[1] for p in points),
            statistics.median(p[2] for p in points))


def _distinct(pairs: list[tuple[float, float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Sorted by x; points with the same x merged (median y) so interpolation is defined."""
    merged: dict[float, list[float]] = {}
    for x, y in pairs:
        merged.setdefault(x, []).append(y)
    xs = sorted(merged)
    return tuple(xs), tuple(statistics.median(merged[x]) for x in xs)


def _build_group(b: int, records: list[tuple[float, float, float]]) -> _Group:
    """records: (tokens per request, context, seconds) of one batch size."""
    by_u: dict[int, list[tuple[float, float, float]]] = {}
    for rec in records:
        by_u.setdefault(_bucket(rec[0], _U_RATIO), []).append(rec)
    rows = []
    for cell_records in by_u.values():
        cells: dict[int, list[tuple[float, float, float]]] = {}
        for rec in cell_records:
            cells.setdefault(_bucket(rec[1] + _L_OFFSET, _L_RATIO), []).append(rec)
        medians = [_median_point(c) for c in cells.values()]
        ls, ts = _distinct([(m[1], m[2]) for m in medians])
        rows.append(_Row(statistics.median(m[0] for m in medians), ls, ts))
    rows.sort(key=lambda r: r.u)
    # Two buckets whose median u coincide would make the u-interpolation undefined: keep one.
    unique: list[_Row] = []
    for row in rows:
        if unique and row.u <= unique[-1].u:
            continue
        unique.append(row)
    return _Group(b, tuple(r.u for r in unique), tuple(unique))


class StepTimeTable:
    """Step seconds per role interpolated from measured steps (see the module docstring)."""

    def __init__(self, records: Iterable[tuple[str, int, int, float, float]],
                 source: str = "") -> None:
        """records: (role, num_requests, num_tokens, context_len, seconds)."""
        per_role: dict[str, dict[int, list[tuple[float, float, float]]]] = {}
        count = 0
        for role, b, n, ctx, seconds in records:
            if b < 1 or n < 1 or not seconds > 0:
                continue  # an empty or failed step carries no timing
            per_role.setdefault(role, {}).setdefault(int(b), []).append(
                (n / b, float(ctx), float(seconds)))
            count += 1
        if "target" not in per_role:
            raise ValueError(f"no usable target step records{f' in {source}' if source else ''}")
        self.source = source
        self.records = count
        self._groups: dict[str, tuple[tuple[int, ...], tuple[_Group, ...]]] = {}
        for role, groups in per_role.items():
            built = tuple(_build_group(b, recs) for b, recs in sorted(groups.items()))
            self._groups[role] = (tuple(g.b for g in built), built)

    @property
    def roles(self) -> list[str]:
        return sorted(self._groups)

    def step_seconds(self, role: str, num_requests: int, num_tokens: int,
                     context_len: float) -> float:
        entry = self._groups.get(role)
        if entry is None or num_requests < 1:
            return 0.0
        bs, groups = entry
        u = num_tokens / num_requests
        if len(groups) == 1:
            return max(groups[0].at(u, context_len), 0.0)
        i = min(max(bisect_right(bs, num_requests), 1), len(bs) - 1)
        if bs[i - 1] == num_requests:
            return max(groups[i - 1].at(u, context_len), 0.0)
        # Between batch sizes (or beyond them) at the same tokens per request and context.
        value = _interp((bs[i - 1], bs[i]),
                        (groups[i - 1].at(u, context_len), groups[i].at(u, context_len)),
                        num_requests)
        return max(value, 0.0)

    # -- loading --

    @classmethod
    def from_jsonl(cls, path: str | Path) -> StepTimeTable:
        """`SPECSERVE_RECORD_STEPS` lines (one JSON StepObservation per line)."""
        return cls(_step_rows(_read_jsonl(Path(path))), source=str(path))

    @classmethod
    def from_profile(cls, profile: Profile, source: str = "") -> StepTimeTable:
        """A profile's points (medians per grid cell)."""
        return cls(((p.role, p.num_requests, p.num_tokens, p.context_len, p.seconds)
                    for p in profile.points), source=source or "profile")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _step_rows(rows: Iterable[Mapping]) -> Iterable[tuple[str, int, int, float, float]]:
    for r in rows:
        yield (str(r["role"]), int(r["num_requests"]), int(r["num_tokens"]),
               float(r["context_len"]), float(r["seconds"]))


# ------------------------------------------------------------------------------- acceptance


@dataclass(frozen=True, slots=True)
class Verification:
    """One recorded verification: draft probabilities of the verified tokens, and the outcome."""

    probs: tuple[float, ...]
    accepted: int  # leading tokens accepted, <= len(probs)

    def cut(self, k: int) -> Verification:
        return Verification(self.probs[:k], min(self.accepted, k))

    def then(self, other: Verification) -> Verification:
        """This draft continued by `other` (its tokens count only if all of this one passed)."""
        passed = self.accepted == len(self.probs)
        return Verification(self.probs + other.probs,
                            self.accepted + (other.accepted if passed else 0))


class VerificationStream:
    """One simulated request's supply of verifications."""

    __slots__ = ("_next", "_pool", "_rng", "_stream")

    def __init__(self, stream: Sequence[Verification] | None, pool: Sequence[Verification],
                 rng: random.Random) -> None:
        self._stream, self._pool, self._rng, self._next = stream, pool, rng, 0

    def _one(self) -> Verification:
        if self._stream is None:
            return self._pool[int(self._rng.random() * len(self._pool))]
        v = self._stream[self._next % len(self._stream)]
        self._next += 1
        return v

    def draw(self, k: int) -> Verification:
        """The next verification, `k` tokens long (extended by later records when short)."""
        v = self._one()
        while len(v.probs) < k:
            v = v.then(self._one())
        return v.cut(k) if len(v.probs) > k else v


class VerificationSampler:
    """Verification records of the real engine -> one `VerificationStream` per request."""

    def __init__(self, records: Iterable[tuple[Sequence[float], int, int, str | None]],
                 source: str = "") -> None:
        """records: (probs, drafted, accepted, request id or None)."""
        pool: list[Verification] = []
        streams: dict[str, list[Verification]] = {}
        for probs, drafted, accepted, rid in records:
            n = min(len(probs), int(drafted))
            if n < 1:
                continue
            v = Verification(tuple(float(p) for p in probs[:n]), min(max(int(accepted), 0), n))
            pool.append(v)
            if rid is not None:
                streams.setdefault(str(rid), []).append(v)
        if not pool:
            raise ValueError(f"no usable verification records{f' in {source}' if source else ''}")
        self.source = source
        self.pool = pool
        # Streams only when every record names its request: a mix would bias the draw.
        self.streams = list(streams.values()) if sum(map(len, streams.values())) == len(pool) \
            else []

    @property
    def mean_acceptance(self) -> float:
        """Accepted / verified positions (as `AcceptanceModel` counts them) over all records."""
        acc = sum(v.accepted for v in self.pool)
        verified = sum(min(len(v.probs), v.accepted + 1) for v in self.pool)
        return acc / verified

    def stream(self, rng: random.Random) -> VerificationStream:
        """A new request's stream: a recorded request's records from a random offset, or i.i.d.
        draws from the pool."""
        if not self.streams:
            return VerificationStream(None, self.pool, rng)
        chosen = self.streams[int(rng.random() * len(self.streams))]
        offset = int(rng.random() * len(chosen))
        return VerificationStream(chosen[offset:] + chosen[:offset], self.pool, rng)

    @classmethod
    def from_jsonl(cls, path: str | Path) -> VerificationSampler:
        rows = _read_jsonl(Path(path))
        return cls(((r["probs"], r["drafted"], r["accepted"], r.get("request_id"))
                    for r in rows), source=str(path))


@dataclass(frozen=True)
class GroundTruth:
    """What the simulated engines run on: step times and recorded acceptance."""

    steps: StepTimes
    verifications: VerificationSampler
    description: str = ""
