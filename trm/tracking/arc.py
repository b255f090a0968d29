"""MLflow records of an ARC augmentation vote: eval/* metrics, the per-test-input
table (MlflowClient.log_table) and a picture of a few tasks.

Artifact names. Read them back with MlflowClient.download_artifacts (MlflowClient.load_table
searches runs through the fluent API, i.e. the process-wide tracking URI, not the client's):
  eval/arc_vote.json       one row per test input and evaluation step: step, task_id, votes,
                           top-1/top-2 correct, ... (MLflow's "split" JSON table)
  eval/arc_examples.png    input | target | attempt 1 | attempt 2 for a few tasks
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trm.tracking import TAG_EVAL_DATASET

if TYPE_CHECKING:  # the tracker and result types are only annotations here
    from trm.data.dataset import PuzzleDataset
    from trm.evaluate.vote import TestVote, VoteResult
    from trm.tracking import Tracker

TABLE_FILE = "eval/arc_vote.json"
FIGURE_FILE = "eval/arc_examples.png"
# The usual ARC palette, colours 0..9
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")


def log_vote_result(
    tracker: Tracker,
    result: VoteResult,
    dataset: PuzzleDataset | str | Path | None = None,
    step: int = 0,
    max_tasks: int = 4,
) -> None:
    """Metrics at `step`, the per-test-input table, and a figure of up to `max_tasks` tasks."""
    tracker.log_metrics(result.metrics, step)
    tracker.log_table(result.table(step), TABLE_FILE)  # appends: one block of rows per evaluation
    if dataset is not None:
        path = dataset.path if hasattr(dataset, "path") else Path(dataset)
        tracker.set_tags({TAG_EVAL_DATASET: str(Path(path).resolve())})
    picked = pick_examples(result, max_tasks)
    if picked:
        fig = plot_votes(picked)
        tracker.log_figure(fig, FIGURE_FILE)


CURVE_PREFIX = "eval/curve/"  # eval/curve/<metric> at step k = the metric after k supervision steps


def log_eval_run(uri: str | None, experiment: str, checkpoint, step: int, result, dataset=None) -> str:
    """`trm eval` as an MLflow run: its metrics, the curve (metric against supervision steps 1..K,
    plotted by MLflow as the metric's history) and, for ARC, the vote's table and figure. Returns the run id."""
    from pathlib import Path as _P

    from trm.tracking import TAG_EVAL_DATASET, Tracker

    tracker = Tracker.create(
        uri,
        experiment,
        run_name=f"eval-{_P(str(checkpoint)).name}",
        tags={"eval_checkpoint": str(checkpoint), "eval_checkpoint_step": str(step), "eval_metric": result.metric},
    )
    try:
        if result.vote is not None:
            log_vote_result(tracker, result.vote, dataset, step=step)
        elif dataset is not None:
            tracker.set_tags({TAG_EVAL_DATASET: str(dataset)})
        if getattr(result, "params", None):  # how it was run (trajectories, noise): a sweep's axes
            tracker.log_params(result.params)
        tracker.log_metrics(result.metrics, step, once_per_step=False)
        for k, v in sorted(result.curve.items()):
            # the curve is measured on the reported split: named by the reported metric
            tracker.log_metrics({CURVE_PREFIX + result.metric.removeprefix("select/"): v}, k, once_per_step=False)
    finally:
        tracker.end()
    return tracker.run_id


def pick_examples(result: VoteResult, n: int) -> list[TestVote]:
    """Half solved, half unsolved where both exist (first by task order): a picture of only
    failures or only successes says little."""
    solved = [t for t in result.tests if t.correct_at(2)]
    failed = [t for t in result.tests if not t.correct_at(2)]
    take_solved = min(len(solved), max(n - len(failed), n // 2))
    return (solved[:take_solved] + failed)[:n]


def plot_votes(tests: list[TestVote]):
    """A matplotlib Figure (no pyplot: safe in worker threads, nothing left open)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    cmap = ListedColormap(PALETTE)
    cols = ("input", "target", "attempt 1", "attempt 2")
    fig = Figure(figsize=(2.4 * len(cols), 2.5 * len(tests)), dpi=80)
    axes = fig.subplots(len(tests), len(cols), squeeze=False)
    for r, t in enumerate(tests):
        grids = [t.input, t.target] + [c.grid for c in t.candidates[:2]]
        grids += [None] * (len(cols) - len(grids))
        for c, (ax, g) in enumerate(zip(axes[r], grids, strict=True)):
            ax.set_xticks([]), ax.set_yticks([])
            title = cols[c]
            if c >= 2 and c - 2 < len(t.candidates):
                cand = t.candidates[c - 2]  # its grid is g
                title += f" ({cand.votes} votes)"
                if t.target is not None:  # an unlabelled test input is not scored
                    ok = cand.grid.shape == t.target.shape and np.array_equal(cand.grid, t.target)
                    title += f" {'right' if ok else 'wrong'}"
            if c == 0:
                title = f"{t.task_id}#{t.test_index}\n{title}"
            ax.set_title(title, fontsize=8)
            if g is None:
                ax.axis("off")
                continue
            ax.imshow(g, cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
    fig.tight_layout()
    return fig
