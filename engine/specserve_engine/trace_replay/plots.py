"""The benchmark's figures (PNG, matplotlib without a display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from specserve_engine.trace_replay.summary import LevelSummary


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _configs(table: Sequence[LevelSummary]) -> list[str]:
    return list(dict.fromkeys(s.config for s in table))


def metric_vs_load(table: Sequence[LevelSummary], attr: str, ylabel: str, path: Path,
                   scale: float = 1.0, slo: float | None = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for config in _configs(table):
        rows = sorted((s for s in table if s.config == config), key=lambda s: s.rate)
        rows = [s for s in rows if getattr(s, attr) is not None]
        if rows:
            values = [getattr(s, attr) * scale for s in rows]
            # The 95% bootstrap interval as an error bar (none where the cell has no interval).
            below = [v - iv.lo * scale if (iv := s.intervals.get(attr)) else 0.0
                     for s, v in zip(rows, values, strict=True)]
            above = [iv.hi * scale - v if (iv := s.intervals.get(attr)) else 0.0
                     for s, v in zip(rows, values, strict=True)]
            ax.errorbar([s.rate for s in rows], values, yerr=[below, above],
                        fmt="-o" if config == "adaptive" else "--.", capsize=2, label=config,
                        linewidth=2.5 if config == "adaptive" else 1.2)
    if slo is not None:
        ax.axhline(slo * scale, color="grey", linestyle=":", label="TPOT SLO")
    ax.set_xscale("log")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def k_over_time(timelines: dict[float, list[tuple[float, float, float | None]]], title: str,
                path: Path) -> None:
    """K verified (draft tokens per decoding request-step) and running requests over time, one
    panel per load level."""
    plt = _pyplot()
    rates = sorted(timelines)
    fig, axes = plt.subplots(len(rates), 1, figsize=(8, 1.8 * len(rates) + 0.6), squeeze=False)
    for ax, rate in zip(axes[:, 0], rates, strict=True):
        samples = timelines[rate]
        t = [s[0] for s in samples]
        ax.plot(t, [s[1] for s in samples], color="tab:blue", label="running requests")
        ax.set_ylabel(f"{rate:g} req/s\nbatch", fontsize=8)
        ax2 = ax.twinx()
        ax2.step(t, [s[2] if s[2] is not None else float("nan") for s in samples],
                 color="tab:red", where="post", label="K verified")
        ax2.set_ylabel("K verified", fontsize=8, color="tab:red")
        ax2.set_ylim(-0.3, 5.3)
    axes[-1, 0].set_xlabel("seconds into the level")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
