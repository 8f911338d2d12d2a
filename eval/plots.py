"""Pictures of an evaluation: per-segment delays, and quality against latency for a sweep (matplotlib, Agg).

matplotlib is imported inside the functions, so the rest of streamst.eval runs without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_delays(records: Sequence[dict], path: str | Path, longform: bool = False, count: int = 4) -> Path:
    """For the first `count` instances: target words against the source time at which each was written.

    The ideal delay (source consumed) and the computation-aware one (plus compute) are step curves; the
    diagonal is a writer that keeps pace with the source (words spread evenly over it).
    """
    plt = _pyplot()
    shown = [r for r in records if r.get("delays")][:count]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.2 * max(1, len(shown)), 3.6), squeeze=False)
    for ax, rec in zip(axes[0], shown):
        n = len(rec["delays"])
        words = list(range(0, n + 1))  # a staircase from (0, 0): word k is out from its time on
        ax.step([0] + [d / 1000 for d in rec["delays"]], words, where="post", label="delay (ideal)")
        if rec.get("elapsed"):
            ax.step([0] + [e / 1000 for e in rec["elapsed"]], words, where="post", label="elapsed (CA)",
                    linestyle="--")
        length = rec["source_length"] / 1000
        ax.plot([0, length], [0, n], color="grey", linewidth=0.8, label="even pace")
        ax.axvline(length, color="black", linewidth=0.6)
        ax.set_xlabel("source time (s)")
        ax.set_ylabel("words written")
        ax.set_title(f"{'talk' if longform else 'segment'} {rec['index']}", fontsize=9)
    if not shown:
        axes[0][0].text(0.5, 0.5, "no instance wrote any word", ha="center", va="center")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_sweep(rows: Sequence[dict], path: str | Path, quality_key: str, offline: dict | None = None,
               latency_key: str = "LAAL") -> Path:
    """Quality against latency, one curve per policy family (the part of the spec before ':'), points sorted by
    latency; the offline result is a horizontal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    families: dict[str, list[dict]] = {}
    for row in rows:
        if row.get(latency_key) is not None and row.get(quality_key) is not None:
            families.setdefault(row["policy"].split(":")[0], []).append(row)
    for family, points in families.items():
        points = sorted(points, key=lambda r: r[latency_key])
        ax.plot([p[latency_key] for p in points], [p[quality_key] for p in points], marker="o", label=family)
    if offline is not None and offline.get(quality_key) is not None:
        ax.axhline(offline[quality_key], color="black", linestyle=":", label="offline")
    ax.set_xlabel(f"{latency_key} (ms)")
    ax.set_ylabel(quality_key + (" (lower is better)" if quality_key == "WER" else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
