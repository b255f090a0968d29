"""The training loop: cadence only (log, agree, evaluate, checkpoint, stop).

What is trained lives in the training state (`trm.train.state`: model, EMA, optimisers, carried
slots, the checkpoint's schema), how one step runs in `trm.train.step`. The loop talks to the
outside only through its `Session` (`trm.train.session`): reports, checkpoints, params and tags.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from trm.config import Config, ConfigError
from trm.cost import CostMeter, RunLimits
from trm.data.dataset import PuzzleDataset, epoch_size
from trm.data.selection import Selection
from trm.errors import TrmError
from trm.evaluate import VAL_KEYS
from trm.evaluate.objective import Objective, objective_for
from trm.evaluate.task import evaluate_task
from trm.model import TRM
from trm.progress import fmt_time
from trm.train import checkpoint as ckpt
from trm.train.session import Session
from trm.train.state import TrainingState, load_for_eval, pick_device  # noqa: F401 - public names of trm.train.loop
from trm.train.step import Step, Window

log = logging.getLogger(__name__)


class Diverged(TrmError):
    """The loss (or the weights) became non-finite: the run stopped, its last finite checkpoint kept."""

    end_reason = "diverged"  # the MLflow run's end reason (trm.tracking.runs.fail_run)


def _on_state(name: str) -> property:
    """An attribute of the training state, read and written through the trainer."""
    return property(lambda self: getattr(self.state, name), lambda self, v: setattr(self.state, name, v))


class Trainer:
    """Trains `cfg` on one rank, reporting to `session`, until `train.steps` or the run's limits."""

    model, ema, opt, sched, emb_opt, feed, slots, step, best, extra = map(
        _on_state, ("model", "ema", "opt", "sched", "emb_opt", "feed", "slots", "step", "best", "extra")
    )

    def __init__(
        self, cfg: Config, session: Session, limits: RunLimits | None = None, objective: Objective | None = None
    ):
        self.session, self.limits = session, limits or RunLimits()
        self.meter: CostMeter | None = None  # rank 0's CostMeter, made in fit() from the checkpoint's state
        self.stop_reason: str | None = None  # "deadline" | "gpu_budget" when the limits ended the run
        if cfg.train.batch_size % session.world_size:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size}: expected a multiple of the "
                f"number of workers ({session.world_size})"
            )
        self.local_batch = cfg.train.batch_size // session.world_size
        self.device = pick_device(cfg.train.device)
        self.autocast = cfg.train.bf16 and self.device.type == "cuda"
        self.train_ds, self.val_ds = PuzzleDataset(cfg.data.path, "train"), PuzzleDataset(cfg.data.path, "test")
        self.cfg = self._resolve_epochs(cfg) if cfg.counts_epochs else cfg
        # the selection split ranks (trm.data.selection), the rest is reported; None: select on what is reported
        self.selection = Selection.of(cfg.train)
        if self.selection is not None:
            self.selection.split(self.val_ds)  # a fraction that leaves either side empty: refused before training
        self.objective = objective or objective_for(
            self.val_ds.meta, getattr(cfg.train, "objective", "") or None, select=self.selection is not None
        )
        if self.device.type == "cuda":  # TF32 for the matmuls left in float32 (all of them with bf16=false)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.state = TrainingState(
            self.cfg,
            self.train_ds.meta,
            self.device,
            train_ds=self.train_ds,
            local_batch=self.local_batch,
            rank=session.rank,
            world_size=session.world_size,
            bf16=self.autocast,
        )
        self.train_step = Step(self.state, self.cfg, self.autocast)

    def _resolve_epochs(self, cfg: Config) -> Config:
        """`cfg` with steps / eval_every derived from its epochs, logged and added to the run's params
        (the launcher logged the config without them: params are written once)."""
        given = cfg.train.epoch_samples
        cfg = cfg.resolve_epochs(epoch_size(self.train_ds.meta))
        t = cfg.train
        if given and given != t.epoch_samples:
            log.warning(
                "train.epoch_samples=%g given, but %s yields %g per epoch: using the dataset's",
                given,
                cfg.data.path,
                t.epoch_samples,
            )
        if self.session.rank == 0:
            log.info(
                "%g samples per epoch, batch %d: %s steps; evaluation every %d steps%s",
                t.epoch_samples,
                t.batch_size,
                f"{t.epochs} epochs = {t.steps}" if t.epochs else t.steps,
                t.eval_every,
                f" ({t.eval_every_epochs} epochs)" if t.eval_every_epochs else "",
            )
            self.session.log_params(cfg)
        return cfg

    @property
    def eval_model(self) -> TRM:
        return self.ema.module if self.ema is not None else self.model

    @property
    def stream(self):
        """The training stream, positioned after the samples the slots have taken (waits for the device)."""
        self.feed.sync()
        return self.feed.stream

    @property
    def metric(self) -> Objective:
        return self.objective

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict:
        """Train to `train.steps`, or until the run's limits stop it; report and checkpoint on the way.

        Every `log_every` steps the ranks agree (rank 0's clock decides) on whether a checkpoint
        is due by wall time, a spot preemption is announced, or a limit is reached; any of these
        forces an evaluation and a checkpoint, as do `eval_every` and `checkpoint_every`.
        A spot notice leaves about two minutes: that checkpoint is written without an evaluation.
        """
        t = self.cfg.train
        last_good = self._start()  # the step of the newest checkpoint with finite weights (None: none yet)
        window, metrics, jit_saved = Window(), {}, False
        last_ckpt_step, last_ckpt_time, t_start, step_start = self.step, time.time(), time.time(), self.step
        while self.step < t.steps:
            window.add(self.train_step())
            final = self.step == t.steps
            at_log, at_eval = self.step % t.log_every == 0 or final, self.step % t.eval_every == 0 or final
            if not (at_log or at_eval):
                continue
            loss = window.peek("loss") if self.session.rank == 0 else 0.0  # rank 0 decides (DDP: same weights)
            if at_log and self.session.rank == 0:
                rate = (self.step - step_start) / max(time.time() - t_start, 1e-9)
                log.info(
                    "step %d/%d | loss %.4f | train exact %.3f | %.2f steps/s %.0f samples/s | ETA %s",
                    self.step,
                    t.steps,
                    loss,
                    window.peek_exact(),
                    rate,
                    rate * t.batch_size,
                    fmt_time((t.steps - self.step) / max(rate, 1e-9)),
                )
            agreed = self.session.agree(
                {
                    "time_due": time.time() - last_ckpt_time >= 60 * t.checkpoint_minutes,
                    "stop": self.limits.reached(self.meter),
                    "diverged": not math.isfinite(loss),
                }
                if self.session.rank == 0
                else {}
            )
            if agreed.get("diverged"):
                self._diverged(window, f"loss is {loss}", last_good)
            jit, jit_saved = agreed["preempting"] and not jit_saved, agreed["preempting"]
            forced = agreed["time_due"] or jit or agreed["stop"] is not None
            if not (at_eval or forced):
                continue
            due = forced or final or self.step - last_ckpt_step >= t.checkpoint_every
            if due and not self.state.finite():  # never a checkpoint of non-finite weights
                self._diverged(window, "weights are non-finite", last_good)
            metrics = self._report(window, evaluate=not jit or final, checkpoint=due, stop=agreed["stop"])
            if due:
                last_ckpt_step, last_ckpt_time, last_good = self.step, time.time(), self.step
            if agreed["stop"] is not None:
                self.stop_reason = agreed["stop"]
                log.info(
                    "stopping at step %d/%d: %s reached; checkpoint written, resume to continue",
                    self.step,
                    t.steps,
                    agreed["stop"],
                )
                break
        return metrics

    def _start(self) -> int | None:
        """Resume from the session's checkpoint (its step is returned), or start a fine-tuning run
        from its parent."""
        with self.session.restore() as folder:
            if folder is not None:
                self.state.restore(folder)
        if folder is None and self.cfg.train.init_from:  # a resumed fine-tuning run has its own weights
            parent = self.state.init_from(self.cfg.train.init_from, self.val_ds.meta.get("task_ids"))
            self.session.set_parent(parent)
        if self.session.rank == 0:
            self._count_restart(folder is not None)
            self.meter = self.limits.meter(self.extra.get("cost"))
        return self.step if folder is not None else None

    def _diverged(self, window: Window, what: str, last_good: int | None) -> None:
        """Stop: report the window (no evaluation, no checkpoint) with stop_reason "diverged", and raise
        `Diverged` with the one sentence a user reads in the morning."""
        metrics = {
            **window.flush(self.cfg.train.batch_size),
            # not evaluated, as a spot notice's report: Tune refuses a report without its schedulers' objective
            **dict.fromkeys((*VAL_KEYS, self.objective.name), float("nan")),
            **self._run_metrics(),
            "step": self.step,
            "diverged": 1.0,
            "stop_reason": "diverged",
        }
        bad = [k.split("/", 1)[1] for k, v in metrics.items() if k.startswith("train/") and not math.isfinite(v)]
        kept = (
            f"last good checkpoint {ckpt.step_dir_name(last_good)} kept"
            if last_good is not None
            else "no checkpoint was written"
        )
        message = (
            f"diverged at step {self.step}: {what}" + (f" ({', '.join(bad)} non-finite)" if bad else "") + f"; {kept}"
        )
        metrics["stop_message"] = message  # what a launcher whose worker caught `Diverged` says (trm.launch.single)
        self.session.report(metrics, self.step, None)
        self.stop_reason = "diverged"
        raise Diverged(message)

    def _report(self, window: Window, evaluate: bool, checkpoint: bool, stop: str | None) -> dict:
        """Evaluate (unless a spot notice: val/* NaN, which Ray ranks last, Tune's stoppers skip and
        MLflow does not log), keep the best by the objective, report, and checkpoint when due."""
        name = self.objective.name
        val = (
            self.evaluate(final=self.step >= self.cfg.train.steps)
            if evaluate
            else dict.fromkeys((*VAL_KEYS, name), float("nan"))
        )
        metrics = {
            **window.flush(self.cfg.train.batch_size),
            **val,
            **self._run_metrics(),
            "step": self.step,
            "effective_depth": self.cfg.effective_depth,
        }
        if not math.isfinite(metrics["train/loss"]):
            metrics["diverged"] = 1.0
        score = metrics.get(name, float("nan"))
        metrics["score"] = score  # the same number under one name: Ray's CheckpointConfig ranks by it
        if (
            evaluate
            and math.isfinite(score)
            and self.objective.better(score, self.best.get("value", self.objective.worst))
        ):
            self.best = {"metric": name, "value": score, "step": self.step}
        if "value" in self.best:
            metrics["best/score"], metrics["best/step"] = self.best["value"], self.best["step"]
        if stop is not None:
            metrics["stop_reason"] = stop
        write = (lambda folder, s=score: self._write_scored(folder, s)) if checkpoint else None
        self.session.report(metrics, self.step, write)
        return metrics

    def _count_restart(self, from_checkpoint: bool) -> None:
        """Restarts, and the steps a restart computes twice (the tracker saw them before the crash).
        Counted in the checkpoint: a restart that dies before its first checkpoint is not counted."""
        logged = self.session.last_logged_step()
        if not from_checkpoint and (logged is None or logged < 0):
            return  # a fresh start
        self.extra["restarts"] = self.extra.get("restarts", 0) + 1
        if logged is not None and logged > self.step:
            self.extra["recomputed_steps"] = self.extra.get("recomputed_steps", 0) + logged - self.step
        log.info(
            "restart %d: resumed at step %d (last step tracked before: %s)", self.extra["restarts"], self.step, logged
        )

    def _run_metrics(self) -> dict[str, float]:
        m = {
            "run/restarts": self.extra.get("restarts", 0),
            "run/recomputed_steps": self.extra.get("recomputed_steps", 0),
            **self.session.run_metrics(),  # under Ray: restarts counted truly, run/lost_seconds
        }
        if self.meter is not None:  # the work restarts threw away was paid for too
            self.meter.lost_seconds = m.get("run/lost_seconds", 0.0)
            m.update(self.meter.metrics())
        return m

    def evaluate(self, final: bool = False) -> dict[str, float]:
        """The dataset kind's evaluation on the EMA weights (trm.evaluate.task, as `trm eval`), reporting
        the run's objective: ARC votes over every augmentation of train.eval_tasks test tasks (seeded by
        train.seed; all tasks when 0 and at the `final` evaluation), spread over the ranks; other kinds
        score the first train.eval_samples rows. With a selection split, each side so (select/* the selection
        split's: what ranks; val/* and eval/* the rest's: what is reported)."""
        t = self.cfg.train
        limit = 0 if self.val_ds.meta.get("name") == "arc" else t.eval_samples
        return evaluate_task(
            self.eval_model,
            self.val_ds,
            self.local_batch,
            self.device,
            limit=limit,
            rank=self.session.rank,
            world_size=self.session.world_size,
            autocast=self.autocast,
            tasks=0 if final else t.eval_tasks,
            seed=t.seed,
            objective=self.objective.name,
            selection=self.selection,
        ).metrics

    def write_checkpoint(self, folder: Path) -> None:
        if self.meter is not None:
            self.extra["cost"] = self.meter.state_dict()
        self.state.save(folder)

    def _write_scored(self, folder: Path, value: float) -> None:
        """The checkpoint, and the score of the evaluation just before it (what keeps the best)."""
        self.write_checkpoint(folder)
        if self.session.rank == 0:
            ckpt.write_score(folder, self.objective.name, value, self.step, self.objective.mode)
