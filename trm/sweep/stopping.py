"""Why trials end: ASHA, the overfitting stopper, divergence.

The paper: without EMA these models "overfit quickly and then diverge". The
stopper ends a trial whose validation metric has sat more than `margin` below
its own best for `patience` consecutive evaluations while its training twin
(`Objective.train_metric`) kept rising, or whose loss is no longer finite. The validation
metric is the sweep's objective, the one everything else ranks by. Both it and the scheduler
record their decisions, so the MLflow callback can tag each trial with its
`trial_end_reason`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.stopper import Stopper

from trm.evaluate.objective import EXACT_METRIC, Objective


@dataclass
class _History:
    best: float
    last_train: float | None = None
    strikes: int = 0


@dataclass
class OverfitStopper(Stopper):
    objective: Objective = field(default_factory=lambda: Objective(EXACT_METRIC))
    loss_metric: str = "train/loss"
    margin: float = 0.02
    patience: int = 3
    reasons: dict[str, str] = field(default_factory=dict)
    _history: dict[str, _History] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.objective.name

    @property
    def train_metric(self) -> str:
        return self.objective.train_metric

    def __call__(self, trial_id: str, result: dict) -> bool:
        loss = result.get(self.loss_metric)
        if (loss is not None and not math.isfinite(loss)) or result.get("diverged"):
            self.reasons[trial_id] = "diverged"
            return True
        val, train = result.get(self.metric), result.get(self.train_metric)
        if val is None or not math.isfinite(val):  # a checkpoint without an evaluation (spot notice)
            return False
        h = self._history.setdefault(trial_id, _History(self.objective.worst))
        rising = train is not None and h.last_train is not None and train > h.last_train
        sign = 1.0 if self.objective.mode == "max" else -1.0  # how much worse than its best, either way
        if self.objective.better(val, h.best):
            h.best, h.strikes = val, 0
        elif sign * (h.best - val) > self.margin and rising:
            h.strikes += 1
        else:
            h.strikes = 0
        if train is not None:
            h.last_train = train
        if h.strikes >= self.patience:
            self.reasons[trial_id] = "overfit_stopped"
            return True
        return False

    def stop_all(self) -> bool:
        return False


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped (Tune reports them only as 'terminated')."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pruned: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self.pruned.add(trial.trial_id)
        return decision


def end_reason(trial_id: str, stopper: OverfitStopper, scheduler: RecordingASHA, errored: bool) -> str:
    if errored:
        return "error"
    if trial_id in stopper.reasons:
        return stopper.reasons[trial_id]
    if trial_id in scheduler.pruned:
        return "asha_pruned"
    return "completed"
