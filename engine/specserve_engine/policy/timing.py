"""StepTimeModel: how long one target or draft forward step takes, from what is in the step.

One forward step of a model costs (see `TimingCoefficients`)

    t(B, N, L) = (overhead + per_token * max(0, N - knee) + per_kv_token * B*L + per_request * B)
                 * correction(N)

for B requests, N batched tokens (a verify step holds B*(K+1) of them, plus any prefill chunk)
and mean context length L. A speculative decode step with K draft tokens costs

    T(K) = T_draft(K) + T_verify(K)
    T_draft(K)  = K * t_draft(B, B, L)                     (K sequential draft steps, B tokens each;
                                                             0 when K = 0: no draft runs at all)
    T_verify(K) = t_target(B, sum_i (K_i + 1) + prefill, L)

The first draft step also re-reads the tokens accepted at the previous step; that is a few tokens
per request, folded into the fitted draft overhead rather than modelled.

What a client sees is the engine's *cycle*, from one step's start to the next one's: the two
forwards plus everything around them (scheduling, turning outputs into responses, moving them
between processes, and on a small CPU the other processes' share of the cores). That third part,
`host`, is measured per cycle as cycle minus forwards and fitted like the others, on B and L only
(it does not grow with draft tokens: they are never sent to a client):

    T_cycle(K) = T_draft(K) + T_verify(K) + t_host(B, L)

Coefficients come from a `Profile` (fit at start) and are refitted online from live measurements.
Both fits are weighted least squares on *relative* error (a 2 ms step mispredicted by 1 ms is as
bad as a 200 ms step mispredicted by 100 ms), non-negative (so a bigger step never predicts as
faster), with the knee chosen among the profiled token counts, and Huber-reweighted so a few
outliers (a GC pause, a preempted core) do not move the fit.

`correction(N)` is 1 unless the profile shows the linear fit missing by more than
`CORRECTION_TOLERANCE` consistently at some token counts (bf16 kernels on AMX pick their
blocking by M, so cost is not monotonic in N): see `fit_token_correction`. It is fitted with the
profile and kept, not refitted, online (see `StepTimeModel.refit`).
"""

from __future__ import annotations

import itertools
import math
import statistics
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from specserve_engine.policy.params import (
    MAX_CORRECTION_POINTS,
    NO_HOST_TIME,
    ModelParams,
    TimingCoefficients,
)
from specserve_engine.policy.profile import Profile, Role


@dataclass(frozen=True, slots=True)
class StepObservation:
    """A measured forward step of one model (the features of the step and its seconds)."""

    role: Role
    num_requests: int
    num_tokens: int
    context_len: float
    seconds: float


def predict_seconds(
    c: TimingCoefficients, num_requests: int, num_tokens: int, context_len: float
) -> float:
    """Seconds of one forward step under coefficients `c` (the formula in `TimingCoefficients`)."""
    linear = (
        c.overhead_s
        + c.per_token_s * max(0, num_tokens - c.knee_tokens)
        + c.per_kv_token_s * num_requests * context_len
        + c.per_request_s * num_requests
    )
    # Most models have no correction: one truthiness test is all they pay.
    return linear * correction_factor(c.token_correction, num_tokens) if c.token_correction \
        else linear


def correction_factor(correction: Sequence[tuple[int, float]], num_tokens: int) -> float:
    """The `token_correction` factor at `num_tokens`: linear between breakpoints, flat outside.

    Hot path (every K of every step): one bisect over <= 32 tuples, no key function (a tuple
    (n, inf) sorts after every breakpoint at n and before any at n + 1).
    """
    if not correction:
        return 1.0
    i = bisect_right(correction, (num_tokens, math.inf))
    if i == 0:
        return correction[0][1]
    if i == len(correction):
        return correction[-1][1]
    (n0, f0), (n1, f1) = correction[i - 1], correction[i]
    return f0 + (f1 - f0) * (num_tokens - n0) / (n1 - n0)


# ---------------------------------------------------------------------------------------------
# Fitting: weighted non-negative least squares on four features, Huber-reweighted.
# ---------------------------------------------------------------------------------------------

_N_FEATURES = 4  # overhead, tokens past the knee, KV tokens, requests
_HUBER_K = 1.345  # the usual Huber constant: 95% efficiency on clean Gaussian residuals
_IRLS_ROUNDS = 5


def _features(num_requests: int, num_tokens: int, context_len: float, knee: int) -> list[float]:
    return [1.0, float(max(0, num_tokens - knee)), num_requests * context_len, float(num_requests)]


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Solve a small dense system by Gaussian elimination; None when (nearly) singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    scale = max((abs(x) for row in a for x in row), default=0.0)
    if scale == 0.0:
        return None
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) <= 1e-12 * scale:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            if f:
                for k in range(col, n + 1):
                    m[r][k] -= f * m[col][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))) / m[r][r]
    return x


def _nnls(rows: list[list[float]], y: list[float], w: list[float]) -> tuple[list[float], float]:
    """Weighted least squares with every coefficient >= 0, exactly, for a handful of features.

    The non-negative optimum is the unconstrained optimum on its own support, so trying every
    support (2^4 = 16) and keeping the best feasible one is exact, and cheap at this size.
    Columns are scaled to unit size first so that seconds-per-token and seconds-per-step terms
    (seven orders of magnitude apart) are solved with the same precision.
    """
    p = len(rows[0])
    col_scale = [max(abs(r[j]) for r in rows) or 1.0 for j in range(p)]
    xs = [[r[j] / col_scale[j] for j in range(p)] for r in rows]
    # Normal equations once; every support solves a sub-block of them.
    ata = [[sum(wi * r[i] * r[j] for wi, r in zip(w, xs, strict=True)) for j in range(p)]
           for i in range(p)]
    aty = [sum(wi * r[i] * yi for wi, r, yi in zip(w, xs, y, strict=True)) for i in range(p)]
    ywy = sum(wi * yi * yi for wi, yi in zip(w, y, strict=True))
    best, best_loss = [0.0] * p, math.inf
    for size in range(p + 1):
        for support in itertools.combinations(range(p), size):
            beta = [0.0] * p
            if support:
                sol = _solve([[ata[i][j] for j in support] for i in support],
                             [aty[i] for i in support])
                if sol is None or min(sol) < 0:
                    continue
                for j, v in zip(support, sol, strict=True):
                    beta[j] = v
            # Weighted SSE from the normal equations: y'Wy - 2 b'A'Wy + b'A'WA b.
            loss = (ywy - 2 * sum(bi * ai for bi, ai in zip(beta, aty, strict=True))
                    + sum(beta[i] * ata[i][j] * beta[j] for i in range(p) for j in range(p)))
            # Strictly better only: among equal fits the smaller support (found first) wins.
            if loss < best_loss * (1 - 1e-9):
                best, best_loss = beta, loss
    return [b / s for b, s in zip(best, col_scale, strict=True)], best_loss


def _robust_fit(
    points: Sequence[tuple[int, int, float, float]], weights: Sequence[float], knee: int
) -> tuple[TimingCoefficients, float]:
    """Huber-IRLS on relative residuals at a fixed knee. Returns coefficients and robust loss."""
    rows = [_features(b, n, ctx, knee) for b, n, ctx, _ in points]
    y = [t for *_, t in points]
    base = [wt / (t * t) for wt, t in zip(weights, y, strict=True)]  # relative error
    huber = [1.0] * len(points)
    beta: list[float] = [0.0] * _N_FEATURES
    loss = math.inf
    for _ in range(_IRLS_ROUNDS):
        beta, loss = _nnls(rows, y, [b * h for b, h in zip(base, huber, strict=True)])
        rel = [(sum(bj * xj for bj, xj in zip(beta, r, strict=True)) - t) / t
               for r, t in zip(rows, y, strict=True)]
        # Robust scale: median absolute relative residual (1.4826 makes it sigma for Gaussians).
        mad = 1.4826 * sorted(abs(r) for r in rel)[len(rel) // 2]
        cut = _HUBER_K * max(mad, 1e-3)
        new = [1.0 if abs(r) <= cut else cut / abs(r) for r in rel]
        if new == huber:
            break
        huber = new
    coeffs = TimingCoefficients(overhead_s=beta[0], per_token_s=beta[1], per_kv_token_s=beta[2],
                                per_request_s=beta[3], knee_tokens=knee)
    return coeffs, loss


def _knee_candidates(token_counts: Iterable[int], limit: int = 24) -> list[int]:
    """0 (no knee) plus the distinct measured token counts, thinned to at most `limit`.

    A knee at or below the smallest count is the no-knee model with another overhead, and a knee
    at the largest count leaves no slope: neither is a candidate.
    """
    distinct = sorted(set(token_counts))[1:-1]
    if len(distinct) > limit:
        step = len(distinct) / limit
        distinct = [distinct[int(i * step)] for i in range(limit)]
    return sorted({0, *distinct})


def fit_coefficients(
    points: Sequence[tuple[int, int, float, float]],
    weights: Sequence[float] | None = None,
    knee: int | None = None,
    correction: Sequence[tuple[int, float]] | None = None,
) -> TimingCoefficients:
    """Fit `TimingCoefficients` to (num_requests, num_tokens, context_len, seconds) points.

    `knee=None` searches the knee among the measured token counts; an int keeps it fixed.
    `correction=None` fits a `token_correction` where the linear fit misses consistently (see
    `fit_token_correction`); a sequence keeps that one (`()`: purely linear) and fits the
    linear part to the times it explains.
    """
    if not points:
        raise ValueError("cannot fit step times from no points")
    w = list(weights) if weights is not None else [1.0] * len(points)
    if correction is not None:
        kept = list(correction)
        return _fit_linear(_uncorrected(points, kept), w, knee).model_copy(
            update={"token_correction": kept})
    linear = _fit_linear(points, w, knee)
    first = fit_token_correction(points, linear)
    if not first:
        return linear
    # The linear part was fitted with the bumps in it; refit it to the times the correction
    # leaves, then the correction to that line, so each explains only its own shape.
    relinear = _fit_linear(_uncorrected(points, first), w, knee)
    second = fit_token_correction(points, relinear)
    corrected = relinear.model_copy(update={"token_correction": second})
    # The correction must earn its keep on the points themselves: fewer of them missed by more
    # than the tolerance than the linear fit misses (bucket medians can disagree with the
    # points when neighbouring buckets pull the interpolation, or the refitted line moved).
    if _misses(points, corrected) < min(_misses(points, linear), _misses(points, relinear)):
        return corrected
    return linear if _misses(points, linear) <= _misses(points, relinear) else relinear


def _misses(points: Sequence[tuple[int, int, float, float]], c: TimingCoefficients) -> int:
    """How many points `c` mispredicts by more than `CORRECTION_TOLERANCE` (relative)."""
    return sum(abs(predict_seconds(c, b, n, ctx) - t) > CORRECTION_TOLERANCE * t
               for b, n, ctx, t in points)


def _uncorrected(
    points: Sequence[tuple[int, int, float, float]], correction: Sequence[tuple[int, float]]
) -> list[tuple[int, int, float, float]]:
    """Points with their seconds divided by the correction: what the linear part must explain."""
    if not correction:
        return list(points)
    return [(b, n, ctx, t / correction_factor(correction, n)) for b, n, ctx, t in points]


def _fit_linear(
    points: Sequence[tuple[int, int, float, float]], w: Sequence[float], knee: int | None
) -> TimingCoefficients:
    """The knee search and robust fit of the linear part (no correction)."""
    knees = [knee] if knee is not None else _knee_candidates(n for _, n, _, _ in points)
    best, best_loss = None, math.inf
    for k in knees:
        coeffs, loss = _robust_fit(points, w, k)
        # A knee must earn its keep: clearly lower loss (the loss is a sum of squared relative
        # errors, so 1e-12 per point is far below any measurement's noise).
        if loss < best_loss * (1 - 1e-3) - 1e-12 * len(points):
            best, best_loss = coeffs, loss
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# The token-count correction: where a linear fit misses systematically.
# ---------------------------------------------------------------------------------------------

CORRECTION_TOLERANCE = 0.10  # a bucket whose median miss is within 10% keeps factor 1
CORRECTION_MIN_POINTS = 3  # fewer points in a bucket: no evidence, factor 1
CORRECTION_AGREEMENT = 0.75  # share of a bucket's points that must miss in the same direction
CORRECTION_PRIOR_POINTS = 1.0  # shrinkage: factor 1 weighs as much as this many points


def token_bucket(num_tokens: int, per_octave: float = 2.0) -> int:
    """Log-spaced bucket of a token count: `per_octave` buckets per doubling (2: 8-11, 12-15,
    16-22, 23-31, ...), since kernel blockings change at roughly geometric M boundaries."""
    return math.floor(per_octave * math.log2(num_tokens) + 1e-9)


def fit_token_correction(
    points: Sequence[tuple[int, int, float, float]], linear: TimingCoefficients
) -> list[tuple[int, float]]:
    """The `token_correction` for `points` over the linear model `linear`; [] when none is due.

    Points are grouped by `token_bucket`. Each bucket's factor is the median of measured /
    predicted, kept at 1 unless the bucket is systematic: at least `CORRECTION_MIN_POINTS`
    points, a median miss beyond `CORRECTION_TOLERANCE`, and `CORRECTION_AGREEMENT` of its points
    on the same side (a few slow steps on a shared machine move one point, not a bucket). A
    systematic factor is shrunk toward 1 in log space by `CORRECTION_PRIOR_POINTS` (n / (n + 1)
    of the log for n points). The median, not a mean, so one outlier cannot move a factor.

    A bucket holds its factor flat from its smallest to its largest measured token count (two
    breakpoints, one if they are equal), and the correction is linear only across the gaps
    between buckets, where nothing was measured: kernel blockings change in steps, and
    interpolating from bucket centres would smear each step over two buckets. Breakpoints at 1
    that only repeat a neighbouring 1 are dropped. Coarser buckets are used if there would be
    more than `MAX_CORRECTION_POINTS` breakpoints.
    """
    if not points:
        return []
    per_octave = 2.0
    while True:
        out = _bucket_factors(points, linear, per_octave)
        if len(out) <= MAX_CORRECTION_POINTS:
            return out
        per_octave /= 2


def _bucket_factors(
    points: Sequence[tuple[int, int, float, float]], linear: TimingCoefficients,
    per_octave: float,
) -> list[tuple[int, float]]:
    buckets: dict[int, list[tuple[int, float]]] = {}
    for b, n, ctx, t in points:
        predicted = predict_seconds(linear, b, n, ctx)
        if predicted > 0 and t > 0:
            buckets.setdefault(token_bucket(n, per_octave), []).append((n, t / predicted))
    raw: list[tuple[int, float]] = []
    for key in sorted(buckets):
        members = buckets[key]
        ratios = [r for _, r in members]
        lo, hi = min(n for n, _ in members), max(n for n, _ in members)
        median = statistics.median(ratios)
        above = sum(r > 1 for r in ratios) if median > 1 else sum(r < 1 for r in ratios)
        systematic = (len(ratios) >= CORRECTION_MIN_POINTS
                      and abs(math.log(median)) > math.log1p(CORRECTION_TOLERANCE)
                      and above >= CORRECTION_AGREEMENT * len(ratios))
        shrink = len(ratios) / (len(ratios) + CORRECTION_PRIOR_POINTS)
        factor = math.exp(math.log(median) * shrink) if systematic else 1.0
        raw += [(lo, factor), (hi, factor)] if hi > lo else [(lo, factor)]
    if all(f == 1.0 for _, f in raw):
        return []
    # A 1 matters only next to a factor that is not 1: it is where the correction returns to 1.
    return [(n, round(f, 6)) for i, (n, f) in enumerate(raw)
            if f != 1.0 or (i > 0 and raw[i - 1][1] != 1.0)
            or (i + 1 < len(raw) and raw[i + 1][1] != 1.0)]


# ---------------------------------------------------------------------------------------------
# The model the policy queries every step.
# ---------------------------------------------------------------------------------------------


MIN_LIVE_WITHOUT_PRIOR = 32


def _anchor_grid(c: TimingCoefficients) -> list[tuple[int, int, float, float]]:
    """Points predicted by `c` over a typical grid: the prior for a refit without a profile."""
    grid = []
    for b in (1, 4, 16, 64, 256):
        for per_request in (1, 2, 4, 8):
            for ctx in (128.0, 1024.0):
                n = b * per_request
                grid.append((b, n, ctx, max(predict_seconds(c, b, n, ctx), 1e-6)))
    return grid


ROLES: tuple[Role, ...] = ("target", "draft", "host")


class StepTimeModel:
    """Predicts target verify, draft and host (around the forwards) seconds; refits online.

    `refit()` fits each role to its profile points (or, without a profile, to a grid predicted by
    the current coefficients), each weighing `anchor_weight`, plus the last `window` live
    observations, each weighing 1: live data dominate where the engine actually runs, the anchor
    keeps the extrapolation sane where it does not. Host time has no grid prior (its default
    is zero, nothing to extrapolate from): without profiled host points it is refitted only once
    `MIN_LIVE_WITHOUT_PRIOR` cycles are measured.
    """

    def __init__(
        self,
        target: TimingCoefficients,
        draft: TimingCoefficients,
        host: TimingCoefficients = NO_HOST_TIME,
        *,
        profile: Profile | None = None,
        window: int = 512,
        anchor_weight: float = 0.25,
    ) -> None:
        self.target = target
        self.draft = draft
        self.host = host
        self.anchor_weight = anchor_weight
        self._anchors: dict[Role, list[tuple[int, int, float, float]]] = {}
        self._measured_anchors: dict[Role, bool] = {}
        for role in ROLES:
            pts = profile.for_role(role) if profile else []
            self._measured_anchors[role] = bool(pts)
            grid = _anchor_grid(self.coefficients(role)) if role != "host" else []
            self._anchors[role] = (
                [(p.num_requests, p.num_tokens, p.context_len, p.seconds) for p in pts] or grid)
        self._live: dict[Role, deque[StepObservation]] = {
            role: deque(maxlen=window) for role in ROLES}

    @classmethod
    def from_params(cls, model: ModelParams) -> StepTimeModel:
        return cls(model.target, model.draft, model.host)

    @classmethod
    def from_profile(cls, profile: Profile, **kwargs: float | int) -> StepTimeModel:
        """Fit every role to the profile (target and draft need at least one point each; a
        profile without host points, as older ones, predicts no host time)."""
        fitted = {}
        for role in ROLES:
            pts = profile.for_role(role)
            if not pts:
                if role == "host":
                    fitted[role] = NO_HOST_TIME
                    continue
                raise ValueError(f"profile has no '{role}' points")
            fitted[role] = fit_coefficients(
                [(p.num_requests, p.num_tokens, p.context_len, p.seconds) for p in pts],
                # Host time is linear in the batch: no knee and no token correction.
                knee=0 if role == "host" else None, correction=() if role == "host" else None)
        return cls(fitted["target"], fitted["draft"], fitted["host"], profile=profile,
                   **kwargs)  # type: ignore[arg-type]

    def coefficients(self, role: Role) -> TimingCoefficients:
        return {"target": self.target, "draft": self.draft, "host": self.host}[role]

    # -- predictions (hot path: plain arithmetic) --

    def step_seconds(
        self, role: Role, num_requests: int, num_tokens: int, context_len: float
    ) -> float:
        return predict_seconds(self.coefficients(role), num_requests, num_tokens, context_len)

    def verify_seconds(self, num_requests: int, num_tokens: int, context_len: float) -> float:
        """One target step over `num_tokens` tokens (B*(K+1) verify tokens plus any prefill)."""
        return predict_seconds(self.target, num_requests, num_tokens, context_len)

    def draft_seconds(self, num_requests: int, context_len: float, steps: int,
                      extra_tokens: int = 0) -> float:
        """`steps` sequential draft steps of one token per request; 0 when steps == 0. The
        first one also runs over the step's `extra_tokens` (prefill chunks): vLLM's draft-model
        proposer feeds its first forward every token the target processed, to fill the draft's
        KV cache."""
        if steps <= 0:
            return 0.0
        one = predict_seconds(self.draft, num_requests, num_requests, context_len)
        if extra_tokens <= 0:
            return steps * one
        first = predict_seconds(self.draft, num_requests, num_requests + extra_tokens,
                                context_len)
        return (steps - 1) * one + first

    def host_seconds(self, num_requests: int, context_len: float) -> float:
        """Seconds of one engine cycle outside the forwards, for a batch of `num_requests`."""
        if num_requests <= 0:
            return 0.0
        return predict_seconds(self.host, num_requests, num_requests, context_len)

    # -- online refit --

    def refit(self, observations: Iterable[StepObservation] = ()) -> None:
        """Add live observations and refit each role that has any, keeping its knee and its
        `token_correction`.

        The correction is kept, not refitted: it is a property of the kernels on this machine
        and dtype, which the profile measured over the whole (batch, K) grid; live steps cover
        only the token counts the policy chooses, and it avoids the token counts the correction
        prices high, so a refit from them could not confirm a bump, only forget it. The linear
        part is refitted to live times divided by the correction (an operator-scaled model
        scales the linear part and keeps its correction too, `tuning.scale_timing`).

        Costs milliseconds (a few hundred points): call it every few hundred steps, not per step.
        """
        touched: set[Role] = set()
        for obs in observations:
            if obs.seconds > 0 and obs.num_requests > 0 and obs.num_tokens > 0:
                self._live[obs.role].append(obs)
                touched.add(obs.role)
        for role in touched:
            live = self._live[role]
            anchors = self._anchors[role]
            if not self._measured_anchors[role] and len(live) >= MIN_LIVE_WITHOUT_PRIOR:
                # A grid predicted by unmeasured default coefficients is only a placeholder:
                # once enough real steps exist it must not pull the fit (its short predicted
                # times weigh heavily in a relative-error fit).
                anchors = []
            if not anchors and len(live) < MIN_LIVE_WITHOUT_PRIOR:
                continue  # host time without a profile: too few cycles to fit on their own
            points = anchors + [(o.num_requests, o.num_tokens, o.context_len, o.seconds)
                                for o in live]
            weights = [self.anchor_weight] * len(anchors) + [1.0] * len(live)
            current = self.coefficients(role)
            fitted = fit_coefficients(points, weights, knee=current.knee_tokens,
                                      correction=current.token_correction)
            setattr(self, role, fitted)
