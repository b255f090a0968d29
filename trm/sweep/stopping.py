"""Why trials end: ASHA, the overfitting stopper, divergence.

The paper: without EMA these models "overfit quickly and then diverge". The
stopper ends a trial whose validation metric has sat more than `margin` below
its own best for `patience` consecutive evaluations while its training twin
(`Objective.train_metric`) kept rising, or whose loss is no longer finite. The validation
metric is the sweep's objective, the one everything else ranks by. Both it and the scheduler
record their decisions, so the MLflow callback can tag each trial with its
`trial_end_reason`.

Their memory survives a lost driver. Ray 2.60's `Tuner.restore` restores trials and the searcher
(`searcher-state-*.pkl`) but builds the scheduler and stopper from `tuner.pkl`, pickled when the Tuner
was made, so ASHA's rung records and every decision would be forgotten (ray-project/ray#30861; the
TuneController never calls `TrialScheduler.save`). `state_dict` / `load_state_dict` carry them
through the sweep's own JSON file (`trm.sweep.tune.MlflowTrialCallback.remember`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.stopper import Stopper

from trm.config import ConfigError
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
        diverged = result.get("diverged") or result.get("stop_reason") == "diverged"  # the loop's own verdict
        if diverged or (loss is not None and not math.isfinite(loss)):
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

    def state_dict(self) -> dict[str, Any]:
        """JSON: each trial's end reason and its best, last training metric and strikes so far."""
        return {"reasons": dict(self.reasons), "history": {t: asdict(h) for t, h in self._history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reasons.update(state.get("reasons", {}))
        self._history.update({t: _History(**h) for t, h in state.get("history", {}).items()})


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped (Tune reports them only as 'terminated'), and whose
    rung records outlive the driver (`state_dict` / `load_state_dict`)."""

    # trials whose end the lost driver had recorded after Tune's last experiment save: Tune resumes them
    # as running; their end stands (stopped at their first report, rungs untouched). A class default, so
    # that a scheduler unpickled from an older sweep's tuner.pkl has it too.
    finished: frozenset[str] = frozenset()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pruned: set[str] = set()

    def on_trial_add(self, tune_controller, trial) -> None:
        if trial.trial_id in self._trial_info:  # a resumed trial keeps its bracket, where its rung records are
            return
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self.finished:
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self.pruned.add(trial.trial_id)
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self.finished:  # its records stand: its result after the resume is not one more
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)

    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        """Per bracket, its rungs (highest milestone first): (milestone, trial id -> recorded value);
        values are signed so that higher is better (ASHA's own form)."""
        return [[(m, dict(recorded)) for m, recorded in b._rungs] for b in self._brackets]

    def state_dict(self) -> dict[str, Any]:
        """JSON: every rung's records, each live trial's bracket, the trials ASHA pruned."""
        index = {id(b): i for i, b in enumerate(self._brackets)}
        return {
            "rungs": [[[m, recorded] for m, recorded in bracket] for bracket in self.rungs()],
            "bracket_of": {t: index[id(b)] for t, b in self._trial_info.items()},
            "num_stopped": self._num_stopped,
            "pruned": sorted(self.pruned),
        }

    def load_state_dict(self, state: dict[str, Any], finished: set[str] | frozenset[str] = frozenset()) -> None:
        """Restore `state_dict`'s records into this scheduler, whose rungs must be the same (same preset,
        steps, eval_every); `finished`: trials whose end was already recorded."""
        saved = state["rungs"]
        mine = [[float(m) for m, _ in b._rungs] for b in self._brackets]
        theirs = [[float(m) for m, _ in bracket] for bracket in saved]
        if mine != theirs:
            raise ConfigError(
                f"--resume: the sweep's ASHA rungs were at steps {theirs}, this run's are at {mine}; "
                "resume with the same --preset and --set (train.steps, train.eval_every)"
            )
        for b, bracket in zip(self._brackets, saved, strict=True):
            b._rungs = [
                (m, {t: float(v) for t, v in recorded.items()})
                for (m, _), (_, recorded) in zip(b._rungs, bracket, strict=True)
            ]
        self._trial_info.update({t: self._brackets[i] for t, i in state.get("bracket_of", {}).items()})
        self._num_stopped = int(state.get("num_stopped", 0))
        self.pruned |= set(state.get("pruned", []))
        self.finished = self.finished | frozenset(finished)


def end_reason(trial_id: str, stopper: OverfitStopper, scheduler: RecordingASHA, errored: bool) -> str:
    # a diverged trial reports stop_reason "diverged" before its loop raises: whichever of the stop or the
    # error reaches Tune first, its end is divergence
    if stopper.reasons.get(trial_id) == "diverged":
        return "diverged"
    if errored:
        return "error"
    if trial_id in stopper.reasons:
        return stopper.reasons[trial_id]
    if trial_id in scheduler.pruned:
        return "asha_pruned"
    return "completed"
