"""The training loop: deep supervision over a carried batch.

Each of the `batch` slots holds one sample and its carried (y, z). Every
optimizer step runs one supervision step on all slots; a slot whose sample
halts (the halting head says its answer is right, or N_sup steps are spent)
takes the next sample from the stream and restarts from (y_init, z_init).
This is the reference implementation's scheme, except that no sample of the
stream is skipped.

A step never waits for the device: halted slots take their samples from a ring the
host fills ahead of time (`trm.train.feed`), exploration draws from a device
generator, the puzzle-embedding update and the EMA are shape-static, statistics
are summed on the device until a report. With `train.compile`, the supervision
step (the T-1 no-grad recursions, the last one, the heads) and the losses with
the halting decision are compiled as whole graphs.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trm.cost import RunLimits
from trm.config import Config, ConfigError, config_from_dict
from trm.data.dataset import PuzzleDataset, epoch_size, make_stream
from trm.evaluate import VAL_KEYS, primary_metric
from trm.evaluate.task import evaluate_task
from trm.model import TRM, Carry
from trm.train import checkpoint as ckpt
from trm.train.losses import supervision_losses
from trm.train.feed import DeviceFeed
from trm.train.optim import PuzzleEmbeddingSGD, build_optimizer
from trm.train.session import Session

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda: no CUDA device is visible (set device=auto or device=cpu)")
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


@dataclass
class Slots:
    """The carried batch on this rank."""
    carry: Carry
    tokens: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L]
    puzzle_ids: torch.Tensor  # [B]
    steps: torch.Tensor  # [B] supervision steps spent on the current sample
    halted: torch.Tensor  # [B] True: refill before the next step

    def state_dict(self) -> dict:
        return {"y": self.carry.y, "z": self.carry.z, "tokens": self.tokens, "labels": self.labels,
                "puzzle_ids": self.puzzle_ids, "steps": self.steps, "halted": self.halted}

    @classmethod
    def from_state(cls, s: dict, device: torch.device) -> "Slots":
        s = {k: v.to(device) for k, v in s.items()}
        return cls(Carry(s["y"], s["z"]), s["tokens"], s["labels"], s["puzzle_ids"], s["steps"], s["halted"])


class Trainer:
    """Owns the model, its EMA, optimizers, data stream and carried slots on one rank."""

    def __init__(self, cfg: Config, session: Session, limits: RunLimits | None = None):
        self.cfg, self.session = cfg, session
        self.limits = limits or RunLimits()
        self.meter = None  # rank 0's CostMeter, made in fit() from the checkpoint's state
        self.stop_reason: str | None = None  # "deadline" | "gpu_budget" when the limits ended the run
        t = cfg.train
        if t.batch_size % session.world_size:
            raise ConfigError(f"train.batch_size={t.batch_size}: expected a multiple of the "
                             f"number of workers ({session.world_size})")
        self.local_batch = t.batch_size // session.world_size
        self.device = pick_device(t.device)
        self.autocast = t.bf16 and self.device.type == "cuda"
        self.train_ds = PuzzleDataset(cfg.data.path, "train")
        self.val_ds = PuzzleDataset(cfg.data.path, "test")
        meta = self.train_ds.meta
        self.meta = {k: meta[k] for k in ("vocab_size", "seq_len", "num_puzzle_ids")}
        if cfg.counts_epochs:  # steps and eval interval from the reference's epochs of this training set
            self.cfg = cfg = self._resolve_epochs(cfg)
            t = cfg.train

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = TRM(cfg.model, **self.meta).to(self.device)
        self.ema = self._build_ema() if t.ema > 0 else None
        self._ema_updates = 0  # the EMA's n_averaged, mirrored on the host
        if self.device.type == "cuda":  # TF32 for the matmuls left in float32 (all of them with bf16=false)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.ddp = self._wrap_ddp(self.model)
        # train.compile: the whole supervision step is one graph (embedding, the T-1 no-grad recursions,
        # the last one with gradients, the heads, the detached carry; and its backward), and so are the
        # losses with the halting decision. Evaluation runs the (uncompiled) EMA copy.
        self._forward = torch.compile(self.ddp, dynamic=False) if t.compile else self.ddp
        self._bootstrap = (torch.compile(self.model, dynamic=False) if t.compile else self.model) \
            if cfg.model.halting == "q_learning" else None
        if t.compile:
            self._score = torch.compile(self._score, dynamic=False)
        self.opt, self.sched = build_optimizer(self.model, t)
        self.emb_opt = (PuzzleEmbeddingSGD(self.model.puzzle_emb, t.puzzle_emb_lr, t.puzzle_emb_weight_decay)
                        if self.model.puzzle_emb is not None else None)
        # the reference's epochs (every puzzle group once, one augmentation, all its examples
        # together) when the dataset records groups; rows uniformly otherwise; taken on the device
        self.feed = DeviceFeed(self.train_ds, make_stream(self.train_ds, t.seed, session.rank, session.world_size),
                               self.device, self.local_batch)
        self.explore = torch.Generator(self.device).manual_seed(t.seed * 1000 + session.rank)
        self.slots = self._empty_slots()
        self.step = 0
        self.extra: dict = {}  # carried through checkpoints: tracking run id, cost meter, restart counts
        self.best: dict = {}

    # ---------------------------------------------------------------- setup
    def _resolve_epochs(self, cfg: Config) -> Config:
        """`cfg` with steps / eval_every derived from its epochs, logged and added to the run's params
        (the launcher logged the config without them: MLflow params are written once)."""
        given = cfg.train.epoch_samples
        cfg = cfg.resolve_epochs(epoch_size(self.train_ds.meta))
        t = cfg.train
        if given and given != t.epoch_samples:
            log.warning("train.epoch_samples=%g given, but %s yields %g per epoch: using the dataset's",
                        given, cfg.data.path, t.epoch_samples)
        if self.session.rank == 0:
            log.info("%g samples per epoch, batch %d: %s steps; evaluation every %d steps%s", t.epoch_samples,
                     t.batch_size, f"{t.epochs} epochs = {t.steps}" if t.epochs else t.steps, t.eval_every,
                     f" ({t.eval_every_epochs} epochs)" if t.eval_every_epochs else "")
            tracker = getattr(self.session, "tracker", None)
            if tracker is not None:
                tracker.log_config(cfg)
        return cfg

    def _build_ema(self) -> AveragedModel:
        # The puzzle-embedding table is trained by sign-SGD, not averaged: share it
        # instead of deep-copying what may be a million rows.
        emb, self.model.puzzle_emb = self.model.puzzle_emb, None
        ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.train.ema))
        self.model.puzzle_emb = ema.module.puzzle_emb = emb
        self._ema_pairs = (list(ema.module.parameters()), list(self.model.parameters()))
        self._ema_buffers = [(a, b) for a, b in zip(ema.module.buffers(), self.model.buffers())
                             if a is not b]  # y_init, z_init, RoPE; the puzzle table is shared
        return ema

    def _wrap_ddp(self, model: TRM):
        if self.cfg.train.freeze_weights:  # only the puzzle embeddings train (their sign-SGD syncs itself)
            model.requires_grad_(False)
            return model
        if self.session.world_size == 1 or not dist.is_initialized():
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # y_init / z_init / the puzzle table are identical or updated identically on all ranks
        return DDP(model, device_ids=ids, broadcast_buffers=False)

    def _empty_slots(self) -> Slots:
        B, L, dev = self.local_batch, self.meta["seq_len"], self.device
        carry = self.model.initial_carry(B, dev)
        if self.autocast:  # the carry's dtype from the first step on: one compiled graph, not two
            carry = Carry(carry.y.bfloat16(), carry.z.bfloat16())
        return Slots(carry, torch.zeros(B, L, dtype=torch.long, device=dev),
                     torch.zeros(B, L, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.long, device=dev),
                     torch.zeros(B, dtype=torch.long, device=dev), torch.ones(B, dtype=torch.bool, device=dev))

    @property
    def eval_model(self) -> TRM:
        return self.ema.module if self.ema is not None else self.model

    @property
    def stream(self):
        """The training stream, positioned after the samples the slots have taken (waits for the device)."""
        self.feed.sync()
        return self.feed.stream

    # ---------------------------------------------------------------- one step
    # Nothing here reads a device value on the host: refill, halting, exploration, the puzzle-embedding
    # update and the EMA stay on the device, and statistics are summed there (`_Window`) until a report.
    def _refill(self) -> None:
        """Halted slots take the stream's next samples (in slot order) and restart from (y_init, z_init)."""
        s = self.slots
        free = s.halted
        new = self.feed.next(free)
        s.tokens = torch.where(free[:, None], new["inputs"].long(), s.tokens)
        s.labels = torch.where(free[:, None], new["labels"].long(), s.labels)
        s.puzzle_ids = torch.where(free, new["puzzle_ids"].long(), s.puzzle_ids)
        s.steps = torch.where(free, 0, s.steps)
        s.carry = self.model.reset_carry(s.carry, free)

    def train_step(self) -> dict[str, torch.Tensor]:
        cfg, s = self.cfg, self.slots
        self._refill()
        emb = self.model.puzzle_emb
        rows = emb.training_rows(s.puzzle_ids) if emb is not None else None  # the sign-SGD's leaf
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            carry, out = self._forward(s.carry, s.tokens, s.puzzle_ids, puzzle_rows=rows)
        steps = s.steps + 1
        target_q = None
        if out.q_continue is not None:  # HRM's ACT: bootstrap from one more (gradient-free) step
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                _, nxt = self._bootstrap(carry, s.tokens, s.puzzle_ids, puzzle_rows=rows)
            target_q = torch.sigmoid(torch.where(steps >= cfg.model.N_sup, nxt.q_halt,
                                                 torch.maximum(nxt.q_halt, nxt.q_continue)))
        explore = None
        if cfg.model.N_sup > 1:  # a random minimum number of steps for some samples, drawn on the device
            B = self.local_batch
            explore = (torch.rand(B, generator=self.explore, device=self.device),
                       torch.randint(2, cfg.model.N_sup + 1, (B,), generator=self.explore, device=self.device))
        loss, stats, halted = self._score(out.logits, s.labels, out.q_halt, out.q_continue, target_q, steps, explore)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip, foreach=True)
        lr_scale = self.sched.get_last_lr()[0] / cfg.train.lr
        self.opt.step()
        if self.emb_opt is not None:
            self.emb_opt.step(lr_scale)
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self.ema is not None:
            self._update_ema()
        self.step += 1
        s.carry, s.steps, s.halted = carry, steps, halted
        return stats

    def _score(self, logits, labels, q_halt, q_continue, target_q, steps, explore):
        """Loss, the statistics of the step and the halting decision for the next (compiled as one graph)."""
        m = self.cfg.model
        loss, parts, is_correct, token_correct = supervision_losses(logits, labels, q_halt, q_continue, target_q)
        with torch.no_grad():
            halted = steps >= m.N_sup
            if explore is not None:
                stop = q_halt > 0 if q_continue is None else q_halt > q_continue
                min_steps = torch.where(explore[0] < m.halt_exploration, explore[1], 0)
                halted = halted | (stop & (steps >= min_steps))
            done = halted.float()
            mask_counts = (labels != -100).sum(-1).clamp_min(1)
            stats = {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()},
                     "halted": done.sum(), "exact": (is_correct.float() * done).sum(),
                     "cells": ((token_correct.sum(-1) / mask_counts) * done).sum(),
                     "halt_steps": (steps.float() * done).sum()}
        return loss, stats, halted

    @torch.no_grad()
    def _update_ema(self) -> None:
        """AveragedModel.update_parameters without its host reads of n_averaged: the first update
        copies the weights, later ones lerp by 1 - decay (one foreach kernel per dtype)."""
        ema_params, params = self._ema_pairs
        if self._ema_updates == 0:
            torch._foreach_copy_(ema_params, params)
        else:
            torch._foreach_lerp_(ema_params, params, 1.0 - self.cfg.train.ema)
        if self._ema_buffers:  # as AveragedModel(use_buffers=False): buffers follow the model
            torch._foreach_copy_([a for a, _ in self._ema_buffers], [b for _, b in self._ema_buffers])
        self.ema.n_averaged += 1  # a host tensor
        self._ema_updates += 1

    # ---------------------------------------------------------------- checkpoints
    def write_checkpoint(self, folder: Path) -> None:
        r = self.session.rank
        if r == 0:
            if self.meter is not None:
                self.extra["cost"] = self.meter.state_dict()
            state = {"config": self.cfg.to_dict(), "meta": self.meta, "step": self.step,
                     "world_size": self.session.world_size, "model": self.model.state_dict(),
                     "ema": self._ema_state(), "optimizer": self.opt.state_dict(),
                     "scheduler": self.sched.state_dict(), "torch_rng": torch.get_rng_state(),
                     "extra": self.extra, "best": self.best}
            ckpt.write_file(folder, "state.pt", state)
        ckpt.write_file(folder, f"rank{r}.pt", {"slots": self.slots.state_dict(), "stream": self.feed.state_dict(),
                                                "explore": self.explore.get_state(),
                                                "python_rng": random.getstate()})

    def _ema_state(self) -> dict | None:
        if self.ema is None:
            return None
        return {k: v for k, v in self.ema.state_dict().items() if "puzzle_emb" not in k}

    def restore(self, folder: Path) -> None:
        state = ckpt.read_file(folder, "state.pt")
        ckpt.check_compatible(state["config"]["model"], self.cfg.to_dict()["model"], str(folder),
                              self.meta, state["meta"])
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"], strict=False)
        elif self.ema is not None:
            log.warning("%s: checkpoint has no EMA; starting the EMA from the restored weights", folder)
        if self.ema is not None:
            self._ema_updates = int(self.ema.n_averaged)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.extra, self.best = state["step"], state["extra"], state.get("best", {})
        try:
            if state["world_size"] != self.session.world_size:
                raise ckpt.CheckpointError(f"saved with {state['world_size']} workers, now {self.session.world_size}")
            mine = ckpt.read_file(folder, f"rank{self.session.rank}.pt")
            self.slots = Slots.from_state(mine["slots"], self.device)
            self.feed.load_state_dict(mine["stream"])
            try:
                self.explore.set_state(mine["explore"])
            except RuntimeError:  # a CPU generator's state on CUDA, or the reverse
                log.warning("%s: exploration RNG state from another device type; drawing from this run's seed",
                            folder)
            random.setstate(mine["python_rng"])
        except ckpt.CheckpointError as e:
            # weights and optimizer are intact; carried samples restart, the stream
            # moves to the next epoch so no sample is seen twice in a row
            log.warning("%s: %s; carried slots restart from y_init/z_init", folder, e)
            self.feed.load_state_dict({"epoch": self.step + 1, "pos": 0})
        log.info("resumed from %s at step %d", folder, self.step)

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict:
        """Train to `train.steps`, or until the run's limits stop it; report and checkpoint on the way.

        Every `log_every` steps the ranks agree (rank 0's clock decides) on whether a checkpoint
        is due by wall time, a spot preemption is announced, or a limit is reached; any of these
        forces an evaluation and a checkpoint, as do `eval_every` and `checkpoint_every`.
        """
        cfg, t = self.cfg, self.cfg.train
        with self.session.restore() as folder:
            if folder is not None:
                self.restore(folder)
        if folder is None and t.init_from:  # a fresh fine-tuning run; a resumed one has its own weights
            self.init_from(t.init_from)
        rank0 = self.session.rank == 0
        if rank0:
            self._count_restart(folder is not None)
            self.meter = self.limits.meter(self.extra.get("cost"))
        window = _Window()
        last_ckpt_step, last_ckpt_time = self.step, time.time()
        t_start, step_start = time.time(), self.step
        metrics: dict = {}
        jit_saved = False  # one just-in-time checkpoint per spot notice
        while self.step < t.steps:
            window.add(self.train_step())
            final = self.step == t.steps
            at_log = self.step % t.log_every == 0 or final
            at_eval = self.step % t.eval_every == 0 or final
            if not (at_log or at_eval):
                continue
            if rank0 and at_log:
                rate = (self.step - step_start) / max(time.time() - t_start, 1e-9)
                eta = (t.steps - self.step) / max(rate, 1e-9)
                log.info("step %d/%d | loss %.4f | train exact %.3f | %.2f steps/s %.0f samples/s | ETA %s",
                         self.step, t.steps, window.peek("loss"), window.peek_exact(), rate,
                         rate * t.batch_size, _fmt_time(eta))
            agreed = self.session.agree({
                "time_due": time.time() - last_ckpt_time >= 60 * t.checkpoint_minutes,
                "stop": self.limits.reached(self.meter)} if rank0 else {})
            jit = agreed["preempting"] and not jit_saved
            jit_saved = agreed["preempting"]
            forced = agreed["time_due"] or jit or agreed["stop"] is not None
            if not (at_eval or forced):
                continue
            # a spot notice leaves about two minutes: checkpoint at once, without an evaluation; its
            # val/* are NaN, which Ray ranks last, Tune's stoppers skip and MLflow does not log
            evaluate = not jit or final
            val = self.evaluate() if evaluate else dict.fromkeys((*VAL_KEYS, self.metric), float("nan"))
            metrics = {**window.flush(t.batch_size), **val, **self._run_metrics(), "step": self.step,
                       "effective_depth": cfg.effective_depth}
            if not math.isfinite(metrics["train/loss"]):
                metrics["diverged"] = 1.0
            # "best" by the dataset's primary metric (the ARC vote's task pass@2, maze path validity); every
            # checkpoint carries its evaluation's score, so sessions keep the latest `keep` and the best
            # besides (checkpoint_every <= eval_every: every evaluation is checkpointed)
            score = metrics.get(self.metric, float("nan"))
            metrics["score"] = score  # the same number under one name: Ray's CheckpointConfig ranks by it
            new_best = evaluate and math.isfinite(score) and score >= self.best.get("value", -math.inf)
            if new_best:
                self.best = {"metric": self.metric, "value": score, "step": self.step}
            if "value" in self.best:
                metrics["best/score"], metrics["best/step"] = self.best["value"], self.best["step"]
            if agreed["stop"] is not None:
                metrics["stop_reason"] = agreed["stop"]
            due = forced or final or self.step - last_ckpt_step >= t.checkpoint_every
            write = (lambda folder, s=score: self._write_scored(folder, s)) if due else None
            self.session.report(metrics, self.step, write)
            if due:
                last_ckpt_step, last_ckpt_time = self.step, time.time()
            if agreed["stop"] is not None:
                self.stop_reason = agreed["stop"]
                log.info("stopping at step %d/%d: %s reached; checkpoint written, resume to continue",
                         self.step, t.steps, agreed["stop"])
                break
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
        log.info("restart %d: resumed at step %d (last step tracked before: %s)", self.extra["restarts"],
                 self.step, logged)

    def _run_metrics(self) -> dict[str, float]:
        m = {"run/restarts": self.extra.get("restarts", 0), "run/recomputed_steps": self.extra.get("recomputed_steps", 0)}
        return {**m, **(self.meter.metrics() if self.meter is not None else {})}

    @property
    def metric(self) -> str:
        """The metric that picks the best checkpoint (trm.evaluate.primary_metric of the test split)."""
        return primary_metric(self.val_ds.meta)

    def evaluate(self) -> dict[str, float]:
        """The dataset kind's evaluation on the EMA weights (trm.evaluate.task, as `trm eval`): ARC votes
        over every test input x all its augmentations (train.eval_samples does not cut it), spread over
        the ranks; other kinds score the first train.eval_samples rows."""
        t = self.cfg.train
        limit = 0 if self.val_ds.meta.get("name") == "arc" else t.eval_samples
        return evaluate_task(self.eval_model, self.val_ds, self.local_batch, self.device, limit=limit,
                             rank=self.session.rank, world_size=self.session.world_size,
                             autocast=self.autocast).metrics

    def _write_scored(self, folder: Path, value: float) -> None:
        """The checkpoint, and the score of the evaluation just before it (what keeps the best)."""
        self.write_checkpoint(folder)
        if self.session.rank == 0:
            ckpt.write_score(folder, self.metric, value, self.step)

    def init_from(self, source: str) -> None:
        """Fine-tuning: weights (EMA weights when saved) from another run's checkpoint, as the reference's
        load_checkpoint: the puzzle-embedding table is copied when it has this dataset's shape and the
        same task ids, otherwise every row starts at the mean of the checkpoint's trained rows."""
        folder = ckpt.resolve(source, "--init-from (train.init_from)")
        state = ckpt.read_file(folder, "state.pt")
        where = f"--init-from {source} ({folder})"
        diffs = [f"model.{k}: checkpoint {state['config']['model'].get(k)!r} vs this run {v!r}"
                 for k, v in self.cfg.to_dict()["model"].items()
                 if k in ckpt.ARCH_FIELDS and state["config"]["model"].get(k) != v]
        diffs += [f"data {k}: checkpoint {state['meta'].get(k)!r} vs this dataset {self.meta[k]!r}"
                  for k in ("vocab_size", "seq_len") if state["meta"].get(k) != self.meta[k]]
        if diffs:
            raise ckpt.CheckpointError(f"{where}: another architecture or vocabulary:\n  " + "\n  ".join(diffs))
        weights = dict(state["model"])
        if state.get("ema"):
            prefix = "module."
            weights.update({k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)})
        table_key = "puzzle_emb.weight"
        table = weights.pop(table_key, None)
        self.model.load_state_dict(weights, strict=False)
        if self.ema is not None:
            self._ema_updates = 0  # the EMA starts from the loaded weights at the first step
        emb = self.model.puzzle_emb
        if emb is not None and table is not None:
            old_ids = self._checkpoint_task_ids(state)
            same = table.shape == emb.weight.shape and old_ids is not None and old_ids == self.val_ds.meta.get("task_ids")
            with torch.no_grad():
                if same:
                    emb.weight.copy_(table)
                else:  # the reference: mean of the trained rows for every id (row 0 is the blank id)
                    trained = table[1:] if table.shape[0] > 1 else table
                    emb.weight.copy_(trained.float().mean(0, keepdim=True).expand_as(emb.weight))
        self.extra["init_from"] = str(folder)
        tracker = getattr(self.session, "tracker", None)
        if tracker is not None:
            from trm.tracking import TAG_INIT_FROM

            tracker.set_tags({TAG_INIT_FROM: str(folder.resolve())})
        log.info("initialised from %s (step %s)%s", folder, state.get("step"),
                 "; training only the puzzle embeddings" if self.cfg.train.freeze_weights else "")

    @staticmethod
    def _checkpoint_task_ids(state: dict) -> list | None:
        try:
            return PuzzleDataset(config_from_dict(state["config"]).data.path, "test").meta.get("task_ids")
        except Exception:  # noqa: BLE001 - the parent's dataset need not be here
            return None


class _Window:
    """Training statistics between two reports (summed on device, synced once per report)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.t0 = time.time()

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0) + v.double()
        self.n += 1

    def peek(self, k: str) -> float:
        return float(self.sums[k]) / max(self.n, 1)

    def peek_exact(self) -> float:
        return float(self.sums["exact"]) / max(float(self.sums["halted"]), 1.0)

    def flush(self, global_batch: int) -> dict[str, float]:
        keys = sorted(self.sums)
        vals = torch.stack([self.sums[k].reshape(()) for k in keys]).double()
        if dist.is_initialized() and dist.get_world_size() > 1:
            vals = vals.to("cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(vals)
            vals /= torch.tensor([1.0 if k in ("halted", "exact", "cells", "halt_steps") else dist.get_world_size()
                                  for k in keys], dtype=vals.dtype, device=vals.device)
        s = dict(zip(keys, vals.tolist()))
        elapsed = max(time.time() - self.t0, 1e-9)
        halted = max(s["halted"], 1.0)
        out = {"train/loss": s["loss"] / self.n, "train/lm_loss": s["lm_loss"] / self.n,
               "train/halt_loss": s["halt_loss"] / self.n,
               "train/exact_accuracy": s["exact"] / halted, "train/cell_accuracy": s["cells"] / halted,
               "train/mean_halt_steps": s["halt_steps"] / halted,
               "throughput/steps_per_s": self.n / elapsed,
               "throughput/samples_per_s": self.n * global_batch / elapsed}
        if "continue_loss" in s:
            out["train/continue_loss"] = s["continue_loss"] / self.n
        self.__init__()
        return out


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def load_for_eval(folder: str | Path, device: str = "cpu", use_ema: bool = True) -> tuple[TRM, Config, dict]:
    """A model from a checkpoint folder, EMA weights by default (as the paper evaluates)."""
    state = ckpt.read_file(Path(folder), "state.pt")
    cfg = config_from_dict(state["config"])
    model = TRM(cfg.model, **state["meta"])
    model.load_state_dict(state["model"])
    if use_ema and state["ema"] is not None:
        prefix = "module."
        weights = {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}
        model.load_state_dict(weights, strict=False)
    return model.to(device).eval(), cfg, state

