"""The objective: the one number (and its direction) that every ranking uses.

Made once from the dataset kind, then handed to whatever ranks: the loop's best
checkpoint and `score.json`, Tune / ASHA / Optuna, the overfitting stopper, the
MLflow callback and the sweep reports. Nothing else names the metric.

Torch-free (trm.config validates `train.objective` against METRIC_PREFIXES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ARC_METRIC = "eval/task_pass_at_2"  # ARC: a task counts when all its test inputs are in the top-2 of the vote
MAZE_METRIC = "eval/maze_valid_path_accuracy"  # Maze: the predicted path is a valid shortest path
EXACT_METRIC = "val/exact_accuracy"  # everything else: the whole answer right
# What an evaluation reports (trm.evaluate.task): held-out accuracies (val/*) and task-level scores
# (eval/*); an override must name one of them, since nothing else is measured on held-out data
METRIC_PREFIXES = ("val/", "eval/")
# The same metrics on the selection split (trm.data.selection): select/val/..., select/eval/...; what ranks
# a run that does not select on what it reports (train.select_on=selection, the default)
SELECT = "select/"
_BY_KIND: dict[str | None, str] = {"arc": ARC_METRIC, "maze": MAZE_METRIC}  # a dataset meta's name -> its metric


@dataclass(frozen=True)
class Objective:
    name: str  # a metric key as reported, e.g. "val/exact_accuracy"
    mode: Literal["max", "min"] = "max"

    def better(self, a: float, b: float) -> bool:
        """`a` at least as good as `b` (ties go to the later value, as the best checkpoint does)."""
        return a >= b if self.mode == "max" else a <= b

    @property
    def worst(self) -> float:
        return -float("inf") if self.mode == "max" else float("inf")

    @property
    def reported(self) -> str:
        """The metric as reported (on the split that is not selected on): select/x -> x."""
        return self.name.removeprefix(SELECT)

    @property
    def selects(self) -> bool:
        """Ranks on the selection split (not on what is reported)."""
        return self.name.startswith(SELECT)

    @property
    def train_metric(self) -> str:
        """The training-side twin the overfitting stopper watches rise while this one falls: val/x and
        select/val/x -> train/x; a task-level eval/* score (ARC pass@k, maze path validity) has none, so
        training exact accuracy."""
        name = self.reported
        return "train/" + name[len("val/") :] if name.startswith("val/") else "train/exact_accuracy"


def is_metric(name: str) -> bool:
    """`name` is something an evaluation reports: val/x, eval/x, or one of them on the selection split."""
    base = name.removeprefix(SELECT)
    return base.startswith(METRIC_PREFIXES) and base not in METRIC_PREFIXES


def objective_for(meta: dict | None, override: str | None = None, select: bool = True) -> Objective:
    """The objective of a dataset (its meta.json, or None for the exact-answer default); `override`
    names another metric (a user's choice, `train.objective`: e.g. a preset whose trials never solve
    a puzzle ranks by cell accuracy). `select`: its twin on the selection split (select/...), the default;
    False: the metric as reported (train.select_on=test, the reference's: select on what you report)."""
    name = (override or _BY_KIND.get((meta or {}).get("name"), EXACT_METRIC)).removeprefix(SELECT)
    return Objective(SELECT + name if select else name)
