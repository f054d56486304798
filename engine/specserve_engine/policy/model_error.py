"""How far the fitted step-time model is from a profile, per (batch, K) cell.

A target point with N tokens and B requests is a verify step of K = N/B - 1 draft tokens per
request when N is a multiple of B and K is one the profile ran (`meta["k_values"]`, else any
K <= K_LIMIT); every other target point mixes a prefill chunk in and is reported on its own
list by (B, N), since no K describes it. Draft steps carry one token per request: K = 0.

A cell's error is the median over its points (the profile's context lengths) of the signed
relative error predicted / measured - 1, for the purely linear fit and for the fit with its
`token_correction` (`fit_coefficients`). A cell is *systematic* when it has more than one point
and all of them miss in the same direction: the profile measured on a shared machine has single
slow points, a kernel effect moves every context length alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from specserve_contract import K_LIMIT
from specserve_engine.policy.params import TimingCoefficients
from specserve_engine.policy.profile import Profile, ProfilePoint, Role
from specserve_engine.policy.timing import CORRECTION_TOLERANCE, fit_coefficients, predict_seconds


@dataclass(frozen=True, slots=True)
class CellError:
    """Signed relative errors (predicted / measured - 1) of the points in one cell."""

    num_requests: int
    k: int | None  # None: a mixed (prefill) point, identified by `num_tokens`
    num_tokens: int
    linear: tuple[float, ...]
    extended: tuple[float, ...]

    @property
    def points(self) -> int:
        return len(self.linear)

    @property
    def linear_error(self) -> float:
        return statistics.median(self.linear)

    @property
    def extended_error(self) -> float:
        return statistics.median(self.extended)

    @staticmethod
    def _systematic(errors: Sequence[float], tolerance: float) -> bool:
        return (len(errors) > 1 and abs(statistics.median(errors)) > tolerance
                and (all(e > 0 for e in errors) or all(e < 0 for e in errors)))

    def linear_systematic(self, tolerance: float = CORRECTION_TOLERANCE) -> bool:
        return self._systematic(self.linear, tolerance)

    def extended_systematic(self, tolerance: float = CORRECTION_TOLERANCE) -> bool:
        return self._systematic(self.extended, tolerance)


@dataclass(frozen=True, slots=True)
class RoleError:
    """The per-cell errors of one role's fits."""

    role: Role
    linear: TimingCoefficients
    extended: TimingCoefficients
    cells: list[CellError] = field(default_factory=list)  # verify steps, by (B, K)
    mixed: list[CellError] = field(default_factory=list)  # prefill-carrying steps, by (B, N)

    def beyond(self, which: str, tolerance: float = CORRECTION_TOLERANCE) -> list[CellError]:
        """Verify cells whose `which` ("linear" / "extended") median error exceeds tolerance."""
        return [c for c in self.cells
                if abs(c.linear_error if which == "linear" else c.extended_error) > tolerance]


def _k_values(profile: Profile) -> set[int] | None:
    text = profile.meta.get("k_values", "")
    try:
        return {int(v) for v in text.split(",")} if text.strip() else None
    except ValueError:
        return None


def verify_k(point: ProfilePoint, k_values: set[int] | None = None) -> int | None:
    """K of a verify step (each request carries K + 1 tokens); None for a mixed prefill step."""
    if point.role == "draft":
        return 0 if point.num_tokens == point.num_requests else None
    if point.num_tokens % point.num_requests:
        return None
    k = point.num_tokens // point.num_requests - 1
    allowed = k_values if k_values is not None else set(range(K_LIMIT + 1))
    return k if k in allowed else None


def role_error(profile: Profile, role: Role) -> RoleError:
    """Fit `role`'s points linearly and with correction, and score both per cell."""
    pts = profile.for_role(role)
    if not pts:
        raise ValueError(f"profile has no '{role}' points")
    rows = [(p.num_requests, p.num_tokens, p.context_len, p.seconds) for p in pts]
    linear = fit_coefficients(rows, correction=())
    extended = fit_coefficients(rows)
    k_values = _k_values(profile)
    groups: dict[tuple[int, int | None, int], list[ProfilePoint]] = {}
    for p in pts:
        k = verify_k(p, k_values)
        # Verify cells group by (B, K); a mixed point keys on its own token count.
        groups.setdefault((p.num_requests, k, p.num_tokens if k is None else -1), []).append(p)

    def errors(c: TimingCoefficients, members: list[ProfilePoint]) -> tuple[float, ...]:
        return tuple(predict_seconds(c, p.num_requests, p.num_tokens, p.context_len) / p.seconds
                     - 1 for p in members)

    cells, mixed = [], []
    for (b, k, n), members in sorted(groups.items(), key=lambda kv: (
            kv[0][0], -1 if kv[0][1] is None else kv[0][1], kv[0][2])):
        cell = CellError(b, k, n if k is None else b * (k + 1),
                         errors(linear, members), errors(extended, members))
        (mixed if k is None else cells).append(cell)
    return RoleError(role, linear, extended, cells, mixed)


def _pct(x: float) -> str:
    return f"{x * 100:+.0f}"


def _cell_text(c: CellError, tolerance: float) -> str:
    """`lin / ext` in percent; bold where beyond tolerance, `!` where systematic."""
    def one(err: float, systematic: bool) -> str:
        text = _pct(err) + ("!" if systematic else "")
        return f"**{text}**" if abs(err) > tolerance else text
    return (f"{one(c.linear_error, c.linear_systematic(tolerance))} / "
            f"{one(c.extended_error, c.extended_systematic(tolerance))}")


def markdown(profile: Profile, name: str = "", tolerance: float = CORRECTION_TOLERANCE) -> str:
    """The report `bench/model_error.py` prints for one profile."""
    machine = profile.machine.describe() if profile.machine else "machine not recorded"
    lines = [f"### {name or profile.target_model}", "",
             f"{machine}, dtype {profile.dtype or 'not recorded'}, {len(profile.points)} points. "
             f"Cells: signed error % of the linear fit / of the fit with token correction "
             f"(median over the cell's points, predicted / measured - 1); **bold** beyond "
             f"{tolerance:.0%}; `!` all of the cell's points (>1) miss the same way.", ""]
    for role in ("target", "draft"):
        if not profile.for_role(role):
            continue
        rep = role_error(profile, role)
        ks = sorted({c.k for c in rep.cells if c.k is not None})
        batches = sorted({c.num_requests for c in rep.cells})
        by = {(c.num_requests, c.k): c for c in rep.cells}
        corr = rep.extended.token_correction
        lines += [f"**{role}** (K = tokens per request - 1); correction: "
                  + (", ".join(f"{n}:{f:.3f}" for n, f in corr) if corr else "none"), "",
                  "| batch | " + " | ".join(f"K={k}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for b in batches:
            lines.append(f"| {b} | " + " | ".join(
                _cell_text(by[b, k], tolerance) + f" ({by[b, k].points})" if (b, k) in by
                else "" for k in ks) + " |")
        if rep.mixed:
            lines += ["", f"{role} steps with a prefill chunk (no K), by batch:tokens: "
                      + ", ".join(f"{c.num_requests}:{c.num_tokens} {_cell_text(c, tolerance)}"
                                  for c in rep.mixed)]
        lin, ext = rep.beyond("linear", tolerance), rep.beyond("extended", tolerance)
        lines += ["", f"{role}: cells beyond {tolerance:.0%}: linear {len(lin)}/{len(rep.cells)} "
                  f"({sum(c.linear_systematic(tolerance) for c in lin)} systematic), "
                  f"with correction {len(ext)}/{len(rep.cells)} "
                  f"({sum(c.extended_systematic(tolerance) for c in ext)} systematic)", ""]
    return "\n".join(lines)
