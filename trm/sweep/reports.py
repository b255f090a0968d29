"""End-of-sweep reports, logged to the sweep's parent MLflow run and printed."""
from __future__ import annotations

import math

from trm.tracking import ART_DEPTH_FIGURE, ART_DEPTH_TABLE, Tracker


def depth_report(rows, parent: Tracker) -> str:
    """Paper Table 3 style: effective depth = layers * (n + 1) * T against the best accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r.effective_depth, -r.best if math.isfinite(r.best) else 0))
    lines = ["| layers | n | T | effective depth | best accuracy | end |", "|---|---|---|---|---|---|"]
    for r in rows:
        p = r.params
        lines.append(f"| {p.get('layers', '-')} | {p.get('n', '-')} | {p.get('T', '-')} | {r.effective_depth} "
                     f"| {r.best:.4f} | {r.reason} |")
    table = "\n".join(lines)
    print("\nDepth vs accuracy (paper Table 3):\n" + table)
    parent.log_text(table, ART_DEPTH_TABLE)
    fig, ax = plt.subplots(figsize=(6, 4))
    for reason in sorted({r.reason for r in rows}):
        pts = [(r.effective_depth, r.best) for r in rows if r.reason == reason and math.isfinite(r.best)]
        if pts:
            ax.scatter(*zip(*pts), label=reason)
    ax.set_xlabel("effective depth = layers x (n+1) x T")
    ax.set_ylabel("best validation accuracy")
    ax.set_title("Depth sweep")
    ax.legend()
    fig.tight_layout()
    parent.log_figure(fig, ART_DEPTH_FIGURE)
    plt.close(fig)
    return table
