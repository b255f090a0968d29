"""End-of-sweep reports, logged to the sweep's parent MLflow run and printed.

The depth report compares trials at the same training budget: ASHA stops trials at different steps,
and deeper configurations start slower, so "best accuracy" over unequal budgets ranks budgets, not
depths. Each trial is read at the highest evaluation step every shown trial reached (the matched
budget), beside its own final value when it completed; ASHA's decisions are listed apart. With
`--seeds K` the configurations' K seeds are averaged (mean +- std).
"""

from __future__ import annotations

import math
import statistics

from trm.tracking import ART_DEPTH_FIGURE, ART_DEPTH_TABLE, Tracker


def matched_step(rows) -> int:
    """The highest evaluation step that every trial with evaluations reached."""
    steps = [set(r.history) for r in rows if r.history]
    common = set.intersection(*steps) if steps else set()
    return max(common, default=0)


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def depth_report(rows, parent: Tracker, metric: str) -> str:
    """Paper Table 3 style: effective depth = layers * (n + 1) * T against the sweep's objective (`metric`,
    what every trial was ranked by) at a matched budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trm.sweep.tune import trial_label

    step = matched_step(rows)
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(trial_label(r.params, with_seed=False), []).append(r)
    order = sorted(groups, key=lambda k: (groups[k][0].effective_depth, k))
    seeds = max(len(g) for g in groups.values()) if groups else 1
    title = (
        f"Held-out {metric} vs effective depth at {step} training steps (the highest evaluation every "
        f"trial reached; equal budget)" + (f", mean +- std over {seeds} seeds" if seeds > 1 else "")
    )
    lines = [
        f"**{title}**",
        "",
        f"| config | layers | n | T | effective depth | {metric} @ step {step} | final (completed trials) "
        f"| steps trained | end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in order:
        g = groups[key]
        p = g[0].params
        at = [r.history.get(step) for r in g]
        final = [r.history[max(r.history)] for r in g if r.reason == "completed" and r.history]
        lines.append(
            f"| {key} | {p.get('layers', '-')} | {p.get('n', '-')} | {p.get('T', '-')} "
            f"| {g[0].effective_depth} | {_mean_std(at)} | {_mean_std(final)} "
            f"| {', '.join(str(r.steps) for r in g)} | {', '.join(sorted({r.reason for r in g}))} |"
        )
    decisions = [r for r in rows if r.reason != "completed"]
    lines += ["", "ASHA and stopper decisions (not part of the comparison above):"]
    lines += [
        f"- {r.label}: {r.reason} at step {r.steps} ({metric} {r.history.get(r.steps, float('nan')):.3f})"
        for r in sorted(decisions, key=lambda r: r.steps)
    ] or ["- none: every trial completed"]
    table = "\n".join(lines)
    print("\nDepth vs accuracy (paper Table 3), compute-matched:\n" + table)
    parent.log_text(table, ART_DEPTH_TABLE)
    parent.log_metrics({"report/matched_step": step}, step=0, once_per_step=False)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in order:
        g = groups[key]
        at = [r.history.get(step) for r in g if r.history.get(step) is not None]
        if at:
            ax.errorbar(
                [g[0].effective_depth],
                [statistics.mean(at)],
                yerr=[statistics.stdev(at)] if len(at) > 1 else None,
                fmt="o",
                capsize=3,
                color="C0",
            )
            ax.annotate(
                key, (g[0].effective_depth, statistics.mean(at)), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        final = [r.history[max(r.history)] for r in g if r.reason == "completed" and r.history]
        if final:
            ax.scatter([g[0].effective_depth], [statistics.mean(final)], marker="^", color="C1")
    ax.scatter([], [], marker="o", color="C0", label=f"at step {step} (all trials)")
    ax.scatter([], [], marker="^", color="C1", label="final (completed trials)")
    ax.set_xlabel("effective depth = layers x (n+1) x T")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"Depth sweep: {metric} at an equal budget of {step} steps", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    parent.log_figure(fig, ART_DEPTH_FIGURE)
    plt.close(fig)
    return table
