"""How far the predicted engine cycle is from the measured one, on steps with and without prefill.

A cycle runs from one `schedule()` to the next while work remains (policy/driver.py): the two
forwards and the host time around them, what a decoding client waits between tokens. The engine
predicts each cycle when it opens it, for the step as scheduled (its prefill tokens included),
and measures it when the next step starts. With `SPECSERVE_RECORD_CYCLES` set, it writes one
JSON line per closed cycle (`CycleRecord`); this module groups them by (prefill or not, batch
range) and reports the median signed error predicted / measured - 1 and the share of cycles
within the tolerance. Pure: numbers in, table out.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """One closed cycle, as the engine writes it."""

    num_requests: int
    num_tokens: int
    extra_tokens: int  # of num_tokens, the prefill ones (0: a decode-only step)
    k: int  # drafted at the end of the step
    predicted_seconds: float
    observed_seconds: float

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> CycleRecord:
        return cls(**{name: data[name] for name in cls.__slots__})  # type: ignore[arg-type]

    @property
    def error(self) -> float:
        return self.predicted_seconds / self.observed_seconds - 1


def batch_range(batch_size: int) -> str:
    """The label of a batch size's range: 1, 2, 3-4, 5-8, ..., powers of two (few series; the
    engine's per-batch metrics use it too)."""
    if batch_size <= 2:
        return str(max(batch_size, 0))
    top = 1 << (batch_size - 1).bit_length()
    return f"{top // 2 + 1}-{top}"


@dataclass(frozen=True, slots=True)
class CycleCell:
    prefill: bool
    batch: str
    errors: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.errors)

    def within(self, tolerance: float) -> float:
        """Share of the cell's cycles predicted within `tolerance`."""
        return sum(abs(e) <= tolerance for e in self.errors) / len(self.errors)


def cycle_cells(records: Iterable[CycleRecord]) -> list[CycleCell]:
    """Records grouped by (prefill or not, batch range), decode-only first, by batch size."""
    groups: dict[tuple[bool, int], list[float]] = defaultdict(list)
    for r in records:
        if r.observed_seconds > 0 and r.num_requests > 0:
            top = 1 << max(r.num_requests - 1, 0).bit_length()
            groups[(r.extra_tokens > 0, top)].append(r.error)
    return [CycleCell(prefill, batch_range(top), tuple(errors))
            for (prefill, top), errors in sorted(groups.items())]


def summary(records: Sequence[CycleRecord], tolerance: float = 0.10) -> dict[str, float]:
    """Median error and share within `tolerance`, over decode-only and prefill cycles."""
    out: dict[str, float] = {}
    for name, chosen in (("decode", [r for r in records if not r.extra_tokens]),
                         ("prefill", [r for r in records if r.extra_tokens])):
        errors = [r.error for r in chosen if r.observed_seconds > 0]
        out[f"{name}_cycles"] = len(errors)
        if errors:
            out[f"{name}_median_error"] = statistics.median(errors)
            out[f"{name}_within"] = sum(abs(e) <= tolerance for e in errors) / len(errors)
    return out


def markdown(records: Sequence[CycleRecord], tolerance: float = 0.10) -> str:
    """The per-cell table: steps with and without prefill, by batch range."""
    lines = [f"| step | batch | cycles | median error | within {tolerance:.0%} |",
             "|---|---|---|---|---|"]
    for c in cycle_cells(records):
        bold = "**" if abs(c.median) > tolerance else ""
        lines.append(f"| {'prefill' if c.prefill else 'decode'} | {c.batch} | {len(c.errors)} "
                     f"| {bold}{c.median:+.1%}{bold} | {c.within(tolerance):.0%} |")
    s = summary(records, tolerance)
    for name in ("decode", "prefill"):
        if s.get(f"{name}_cycles"):
            lines.append(f"| {name}, all | | {s[f'{name}_cycles']:.0f} "
                         f"| {s[f'{name}_median_error']:+.1%} | {s[f'{name}_within']:.0%} |")
    return "\n".join(lines) + "\n"
