"""What a sweep prints while it runs: one line per trial event and a one-line status every few minutes.

Without --verbose the driver's terminal carries the platform's lines only:

  * Tune's own reporter is off (`tune_verbosity`: no "Trial ... result" boxes, no "started with
    configuration" boxes, no status tables, no experiment box); `SweepConsole` prints instead;
  * Ray's log lines that look like failures but are not (`trm.launch.console.RAY_NOISE`) are
    dropped on their way to the driver;
  * Ray Train / Tune INFO loggers and Optuna's per-trial INFO lines are at WARNING.

--verbose brings all of it back (Tune at verbose=2, every evaluation printed, Ray's lines unfiltered).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from typing import Any

from ray import tune

from trm.evaluate.objective import Objective
from trm.sweep.stopping import OverfitStopper, RecordingASHA, end_reason

STATUS_SECONDS = 120.0  # the one-line status
EVAL_SECONDS = 60.0  # without --verbose, a trial's evaluation line at most this often (its end line has the best)

_ENDED = {
    "asha_pruned": "pruned by ASHA",
    "overfit_stopped": "stopped: overfitting",
    "diverged": "stopped: diverged",
    "error": "failed",
    "completed": "completed",
}


def quiet_loggers() -> None:
    """Ray Train / Tune / AIR INFO lines (per report, per checkpoint) and Optuna's per-trial INFO lines off;
    their warnings and errors stay."""
    import optuna

    for name in ("ray.train", "ray.tune", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def tune_verbosity(verbose: bool) -> int:
    """`RunConfig(verbose=...)`: 2 with --verbose; else 0 on Tune's classic output engine
    (RAY_AIR_NEW_OUTPUT=0), whose 0 is silent: the new engine prints its experiment box, result folder
    and TensorBoard command at every verbosity. A user's own RAY_AIR_NEW_OUTPUT is kept."""
    if verbose:
        return 2
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return 0


def trial_name(trial) -> str:
    from trm.sweep.tune import trial_label

    return trial_label(trial.config)


def effective_depth(config: dict[str, Any]) -> int | None:
    try:
        return int(config["layers"] * (config["n"] + 1) * config["T"])
    except (KeyError, TypeError):
        return None


class SweepConsole(tune.Callback):
    """Prints `HH:MM:SS TRIAL text` for each trial's start, its evaluations (every one with `verbose`,
    else at most one per trial every `eval_seconds`), and its end with the reason and its best; and
    every `status_seconds` one status line (trials by state, the best so far, elapsed time)."""

    def __init__(
        self,
        objective: Objective,
        stopper: OverfitStopper,
        scheduler: RecordingASHA,
        total: int,
        verbose: bool = False,
        status_seconds: float = STATUS_SECONDS,
        eval_seconds: float = EVAL_SECONDS,
    ):
        self.objective, self.stopper, self.scheduler, self.total = objective, stopper, scheduler, total
        self.eval_seconds = 0.0 if verbose else eval_seconds
        self.status_seconds = status_seconds
        self.best: dict[str, tuple[float, Any]] = {}  # trial id -> (best value, step)
        self.ended: Counter[str] = Counter()
        self._ended_ids: set[str] = set()
        self._last_line: dict[str, float] = {}  # trial id -> when its last line was printed
        self._start = self._last_status = time.monotonic()

    def say(self, who: str, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {who:14s} {text}", flush=True)

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        # resumed: the trials that ended before the driver was lost count too (MlflowTrialCallback, set up
        # before this console, has read their ends back into the scheduler and the stopper)
        self._ended_ids = set(self.scheduler.finished)
        self.ended = Counter(end_reason(t, self.stopper, self.scheduler, False) for t in self._ended_ids)

    def on_trial_start(self, iteration, trials, trial, **info):
        depth = effective_depth(trial.config)
        self._last_line[trial.trial_id] = time.monotonic()
        self.say(trial_name(trial), "started" + (f" (effective depth {depth})" if depth is not None else ""))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.objective.name)
        if value is None or not math.isfinite(value):
            return
        if self.objective.better(value, self.best.get(trial.trial_id, (self.objective.worst, None))[0]):
            self.best[trial.trial_id] = (value, result.get("step"))
        now = time.monotonic()
        if now - self._last_line.get(trial.trial_id, -math.inf) < self.eval_seconds:
            return
        self._last_line[trial.trial_id] = now
        cell = result.get("val/cell_accuracy")
        extra = (
            f", val/cell_accuracy {cell:.3f}" if cell is not None and self.objective.name != "val/cell_accuracy" else ""
        )
        self.say(trial_name(trial), f"step {result.get('step', '?')}: {self.objective.name} {value:.3f}{extra}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, errored=True)

    def _ended(self, trial, errored: bool) -> None:
        reason = end_reason(trial.trial_id, self.stopper, self.scheduler, errored)
        if trial.trial_id not in self._ended_ids:  # a resumed trial that had ended is stopped again: once
            self._ended_ids.add(trial.trial_id)
            self.ended[reason] += 1
        last = trial.last_result or {}
        best = self.best.get(trial.trial_id)
        self.say(
            trial_name(trial),
            f"{_ENDED.get(reason, reason)} at step {last.get('step', '?')}"
            + (f", best {self.objective.name} {best[0]:.3f}" if best else "")
            + f", {float(last.get('time_total_s') or 0.0):.0f} s",
        )

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last_status >= self.status_seconds:
            self._last_status = now
            print(f"{time.strftime('%H:%M:%S')} {'status':14s} {self.status(trials)}", flush=True)

    def status(self, trials) -> str:
        """2 running, 1 pending, 3 ended (2 pruned by ASHA) of 6; best L1-n2-T1 val/x 0.616 at step 48; 4m10s."""
        states = Counter(t.status for t in trials)
        running, pending = states.get("RUNNING", 0), states.get("PENDING", 0)
        ended = sum(self.ended.values())
        why = ", ".join(f"{n} {_ENDED.get(r, r)}" for r, n in sorted(self.ended.items()) if r != "completed")
        text = (
            f"{running} running, {pending} pending, {ended} ended" + (f" ({why})" if why else "") + f" of {self.total}"
        )
        by_id = {t.trial_id: t for t in trials}
        scored = [(v, step, by_id[i]) for i, (v, step) in self.best.items() if i in by_id]
        if scored:
            top = scored[0]
            for s in scored[1:]:
                if self.objective.better(s[0], top[0]) and s[0] != top[0]:
                    top = s
            text += f"; best {trial_name(top[2])} {self.objective.name} {top[0]:.3f} at step {top[1]}"
        elapsed = int(time.monotonic() - self._start)
        return text + f"; {elapsed // 60}m{elapsed % 60:02d}s"
