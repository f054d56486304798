"""AcceptanceModel: c_ij, the probability that the first j draft tokens of request i are accepted.

Draft token j of request i is verified only if tokens 1..j-1 were accepted, so

    c_ij = prod_{l <= j} a_il,      a_il = P(token l accepted | tokens < l accepted)

and the expected number of tokens request i gains from a step with K_i draft tokens is
1 + sum_{j <= K_i} c_ij (the +1 is the token the target produces itself).

Two sources for a_il:
- once the draft exists: the draft model's own probability q_il of the token it proposed,
  calibrated per position against observed outcomes,
      a_il = sigmoid(slope_l * logit(q_il) + intercept_l)
  (a draft model is over- or under-confident in a way that differs with depth);
- before the draft exists (picking K at schedule time, or looking past the last drafted token):
  the request's own acceptance rate, a Beta-style blend of the batch-wide running rate (the prior
  for a request with no history) and the request's accepted / verified counts,
      r_i = (s * r_all + accepted_i) / (s + verified_i),      c_ij ~= r_i ** j.

A verified position is one the target actually judged: positions 1..min(K, accepted + 1).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from itertools import accumulate, repeat
from operator import mul

from specserve_contract import K_LIMIT
from specserve_engine.policy.params import LogisticCalibration, ModelParams

_Q_MIN = 1e-6  # draft probabilities are clipped away from 0 and 1 so logit() stays finite
_N_BINS = 20
_HALVE_AT = 100_000  # per-position sample count at which old counts are halved: stays adaptive


def _logit(q: float) -> float:
    q = min(max(q, _Q_MIN), 1 - _Q_MIN)
    return math.log(q / (1 - q))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


def logistic_acceptance(prob: float, slope: float, exp_neg_intercept: float) -> float:
    """sigmoid(slope * logit(q) + b) = 1 / (1 + e^-b * ((1-q)/q)^slope), q = `prob` clipped:
    the calibration map, one pow per token (no log/exp), shared by every caller."""
    q = _Q_MIN if prob < _Q_MIN else (1 - _Q_MIN if prob > 1 - _Q_MIN else prob)
    return 1 / (1 + exp_neg_intercept * ((1 - q) / q) ** slope)


def fit_logistic(
    xs: Sequence[float], totals: Sequence[float], accepted: Sequence[float],
    prior: LogisticCalibration, ridge: float = 1.0,
) -> LogisticCalibration:
    """Binned logistic regression of acceptance on logit(q), Newton's method on 2 parameters.

    Minimises  -sum_b [a_b log p_b + (n_b - a_b) log(1 - p_b)]
               + ridge/2 * ((slope - prior.slope)^2 + (intercept - prior.intercept)^2),
    p_b = sigmoid(slope * x_b + intercept): with little data the fit stays near the prior.
    """
    s, c = prior.slope, prior.intercept
    for _ in range(50):
        gs, gc = ridge * (s - prior.slope), ridge * (c - prior.intercept)
        hss = hsc = hcc = ridge
        for x, n, a in zip(xs, totals, accepted, strict=True):
            p = _sigmoid(s * x + c)
            r = n * p - a  # gradient of the negative log-likelihood w.r.t. the logit
            v = n * p * (1 - p)
            gs += r * x
            gc += r
            hss += v * x * x
            hsc += v * x
            hcc += v
        det = hss * hcc - hsc * hsc
        if not math.isfinite(det) or det <= 1e-12:
            break  # degenerate bins (e.g. one confidence value only): keep the last estimate
        ds = (hcc * gs - hsc * gc) / det
        dc = (hss * gc - hsc * gs) / det
        # Stay inside the parameter box while iterating: separable data would diverge otherwise.
        s, c = min(max(s - ds, 0.0), 20.0), min(max(c - dc, -20.0), 20.0)
        if abs(ds) + abs(dc) < 1e-9:
            break
    return LogisticCalibration(slope=min(max(s, 0.0), 20.0), intercept=min(max(c, -20.0), 20.0))


class AcceptanceModel:
    """Calibrated draft confidences, per-request acceptance rates, and their online updates."""

    def __init__(self, params: ModelParams | None = None, *, decay: float = 0.999) -> None:
        params = params or ModelParams()
        self.prior_strength = params.prior_strength
        self.decay = decay  # per observed draft: the batch-wide rate follows drift
        # Batch-wide running rate, seeded with the prior as `prior_strength` pseudo-tokens.
        self._all_accepted = params.prior_acceptance * max(params.prior_strength, 1.0)
        self._all_verified = max(params.prior_strength, 1.0)
        self._requests: dict[Hashable, tuple[int, int]] = {}  # id -> (accepted, verified)
        self.set_calibration(params.calibration)
        # Outcome bins per position: [count, accepted, sum of logit(q)].
        self._bins = [[[0.0, 0.0, 0.0] for _ in range(_N_BINS)] for _ in range(K_LIMIT)]

    # -- calibration --

    def set_calibration(self, calibration: Sequence[LogisticCalibration]) -> None:
        self.calibration = list(calibration) or [LogisticCalibration()]
        # `logistic_acceptance` takes e^-b: computed once per calibration, not per token.
        self._slopes = [c.slope for c in self.calibration]
        self._exp_neg_b = [math.exp(-c.intercept) for c in self.calibration]

    def calibrate(self, position: int, prob: float) -> float:
        """Acceptance probability of a draft token at `position` (1-based) drafted with `prob`."""
        i = min(position, len(self._slopes)) - 1
        return logistic_acceptance(prob, self._slopes[i], self._exp_neg_b[i])

    def cumulative(self, probs: Sequence[float]) -> list[float]:
        """c_i1..c_iK of one request from its draft probabilities q_i1..q_iK."""
        out, c = [], 1.0
        slopes, enb, last = self._slopes, self._exp_neg_b, len(self._slopes) - 1
        for j, prob in enumerate(probs):
            i = j if j < last else last
            c *= logistic_acceptance(prob, slopes[i], enb[i])
            out.append(c)
        return out

    def cumulative_batch(self, probs: Sequence[Sequence[float]]) -> list[list[float]]:
        """`cumulative` for every request of a batch (rows may differ in length)."""
        return [self.cumulative(row) for row in probs]

    # -- per-request rates (before a draft exists) --

    @property
    def mean_acceptance(self) -> float:
        """Batch-wide running per-token acceptance rate: the prior of a request with no history."""
        return self._all_accepted / self._all_verified

    def rate(self, request_id: Hashable | None = None) -> float:
        """Predicted acceptance of the next undrafted token of a request (see module docstring)."""
        prior = self.mean_acceptance
        seen = self._requests.get(request_id) if request_id is not None else None
        if seen is None:
            return prior
        accepted, verified = seen
        return (self.prior_strength * prior + accepted) / (self.prior_strength + verified)

    def lookahead(self, request_ids: Sequence[Hashable], k: int) -> list[list[float]]:
        """Predicted c_i1..c_ik (r_i ** j) for requests whose drafts do not exist yet."""
        return [list(accumulate(repeat(r, k), mul)) for r in self.rates(request_ids)]

    def rates(self, request_ids: Sequence[Hashable]) -> list[float]:
        """`rate` of many requests at once (the per-step path: one prior, one dict lookup each)."""
        prior, strength = self.mean_acceptance, self.prior_strength
        pseudo = strength * prior
        get = self._requests.get
        out = []
        for rid in request_ids:
            seen = get(rid)
            out.append(prior if seen is None else (pseudo + seen[0]) / (strength + seen[1]))
        return out

    # -- learning from verification outcomes --

    def observe(
        self,
        num_drafted: int,
        num_accepted: int,
        request_id: Hashable | None = None,
        probs: Sequence[float] | None = None,
    ) -> None:
        """Record one request's verification: `num_accepted` of its `num_drafted` tokens passed.

        `probs`, when the draft probabilities were captured, feeds the per-position calibration.
        """
        if num_drafted <= 0:
            return
        num_accepted = min(max(num_accepted, 0), num_drafted)
        verified = min(num_drafted, num_accepted + 1)
        self._all_accepted = self.decay * self._all_accepted + num_accepted
        self._all_verified = self.decay * self._all_verified + verified
        if request_id is not None:
            a, v = self._requests.get(request_id, (0, 0))
            self._requests[request_id] = (a + num_accepted, v + verified)
        if probs is not None:
            for j in range(min(verified, len(probs), K_LIMIT)):
                x = _logit(probs[j])
                cell = self._bins[j][min(int(probs[j] * _N_BINS), _N_BINS - 1)]
                cell[0] += 1
                cell[1] += j < num_accepted
                cell[2] += x
                if cell[0] >= _HALVE_AT / _N_BINS:
                    for other in self._bins[j]:
                        other[0] /= 2
                        other[1] /= 2
                        other[2] /= 2

    def forget(self, request_id: Hashable) -> None:
        """Drop a finished request's history."""
        self._requests.pop(request_id, None)

    def fit_calibration(self, min_samples: int = 50) -> list[LogisticCalibration]:
        """Refit the per-position calibration from the recorded outcomes and start using it.

        Deeper positions are rarer (every earlier token must have passed), so each position's fit
        is pulled towards the one before it: with few samples it inherits its neighbour's shape.
        Positions past the last one with `min_samples` outcomes are left to the last entry.
        """
        fitted: list[LogisticCalibration] = []
        prior = self.calibration[0] if self.calibration else LogisticCalibration()
        for j in range(K_LIMIT):
            cells = [cell for cell in self._bins[j] if cell[0] > 0]
            if sum(cell[0] for cell in cells) < min_samples:
                break
            fit = fit_logistic([cell[2] / cell[0] for cell in cells],
                               [cell[0] for cell in cells], [cell[1] for cell in cells], prior)
            fitted.append(fit)
            prior = fit
        if fitted:
            self.set_calibration(fitted)
        return list(self.calibration)

    def to_params(self, base: ModelParams) -> ModelParams:
        """`base` with this model's calibration and running acceptance as the new prior."""
        prior = min(max(self.mean_acceptance, 0.01), 0.99)
        return base.model_copy(update={"calibration": list(self.calibration),
                                       "prior_acceptance": prior})


def fit_acceptance(
    outcomes: Iterable[tuple[Sequence[float], int, int]], min_samples: int = 50,
) -> tuple[list[LogisticCalibration], float, int]:
    """Calibration and mean per-token acceptance from recorded verifications, all weighted alike.

    ``outcomes``: (draft probabilities of the verified tokens, drafted, accepted) per request and
    step, as the engine records them. Returns (per-position calibration, the identity when no
    position reached `min_samples`; mean acceptance; number of outcomes used).
    """
    model = AcceptanceModel(ModelParams(prior_strength=0.0), decay=1.0)
    count = 0
    for probs, drafted, accepted in outcomes:
        model.observe(drafted, accepted, probs=probs)
        count += 1
    calibration = model.fit_calibration(min_samples)
    return calibration, min(max(model.mean_acceptance, 0.01), 0.99), count
