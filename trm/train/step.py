"""One optimiser step of deep supervision over the carried batch, without host synchronisation.

Each of the batch's slots holds one sample and its carried (y, z). A step runs one supervision
step on all slots; a slot whose sample halts (the halting head says its answer is right, or N_sup
steps are spent) takes the next sample of the stream and restarts from (y_init, z_init). This is
the reference's scheme (`pretrain.py` `train_batch` with its ACT wrapper), except that no sample
of the stream is skipped.

Nothing here reads a device value on the host: halted slots take their samples from a ring the
host fills ahead of time (`trm.train.feed`), exploration draws from a device generator, the
puzzle-embedding update and the EMA are shape-static, and statistics are summed on the device
(`Window`) until a report. With `train.compile`, the supervision step (the T-1 no-grad
recursions, the last one, the heads) and the losses with the halting decision are whole graphs.

As the reference: the lr factor of a step is its schedule's value at the step counter after its
increment (`trm.train.optim.lr_factor`), the puzzle embeddings follow the same factor, and the
EMA, registered from the initial weights, is updated after every optimiser step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import torch
import torch.distributed as dist

from trm.config import Config
from trm.train.losses import supervision_losses
from trm.train.state import TrainingState


class Step:
    """The training step of `state` (its model, optimisers, EMA, feed and slots) on one rank."""

    def __init__(self, state: TrainingState, cfg: Config, autocast: bool):
        self.state, self.cfg, self.autocast = state, cfg, autocast
        t, model = cfg.train, state.model
        self.ddp = self._wrap_ddp(model)
        # train.compile: the whole supervision step is one graph (embedding, the T-1 no-grad recursions,
        # the last one with gradients, the heads, the detached carry; and its backward), and so are the
        # losses with the halting decision. Evaluation runs the (uncompiled) EMA copy.
        self._forward = torch.compile(self.ddp, dynamic=False) if t.compile else self.ddp
        self._bootstrap = (
            (torch.compile(model, dynamic=False) if t.compile else model) if cfg.model.halting == "q_learning" else None
        )
        self._score: Callable = torch.compile(self._losses, dynamic=False) if t.compile else self._losses
        if state.ema is not None:
            self._ema_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] = (
                list(state.ema.module.parameters()),
                list(model.parameters()),
            )
            self._ema_buffers = [
                (a, b) for a, b in zip(state.ema.module.buffers(), model.buffers(), strict=True) if a is not b
            ]  # y_init, z_init, RoPE; the puzzle table is shared

    def _wrap_ddp(self, model):
        if self.cfg.train.freeze_weights:  # only the puzzle embeddings train (their sign-SGD syncs itself)
            model.requires_grad_(False)
            return model
        if self.state.world_size == 1 or not dist.is_initialized():
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        device = self.state.device
        ids = [device.index] if device.type == "cuda" else None
        # y_init / z_init / the puzzle table are identical or updated identically on all ranks
        return DDP(model, device_ids=ids, broadcast_buffers=False)

    def _refill(self) -> None:
        """Halted slots take the stream's next samples (in slot order) and restart from (y_init, z_init)."""
        s, feed = self.state.slots, self.state.feed
        assert feed is not None  # a Step is made from a state with the training split
        free = s.halted
        new = feed.next(free)
        s.tokens = torch.where(free[:, None], new["inputs"].long(), s.tokens)
        s.labels = torch.where(free[:, None], new["labels"].long(), s.labels)
        s.puzzle_ids = torch.where(free, new["puzzle_ids"].long(), s.puzzle_ids)
        s.steps = torch.where(free, 0, s.steps)
        s.carry = self.state.model.reset_carry(s.carry, free)

    def __call__(self) -> dict[str, torch.Tensor]:
        cfg, st = self.cfg, self.state
        s, device = st.slots, st.device
        self._refill()
        emb = st.model.puzzle_emb
        rows = emb.training_rows(s.puzzle_ids) if emb is not None else None  # the sign-SGD's leaf
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            carry, out = self._forward(s.carry, s.tokens, s.puzzle_ids, puzzle_rows=rows)
        steps = s.steps + 1
        target_q = None
        if out.q_continue is not None:
            # HRM's Q-learning ACT (halting=q_learning): the continue logit's target is bootstrapped from one
            # more gradient-free step. The TRM reference means the same (no_ACT_continue=False) but its branch
            # crashes at its first step (trm.py unpacks five values from an inner forward that returns three);
            # this is the intended behaviour, as the reference's hrm.py computes it.
            assert self._bootstrap is not None  # made whenever halting=q_learning, the one with q_continue
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
                _, nxt = self._bootstrap(carry, s.tokens, s.puzzle_ids, puzzle_rows=rows)
            target_q = torch.sigmoid(
                torch.where(steps >= cfg.model.N_sup, nxt.q_halt, torch.maximum(nxt.q_halt, nxt.q_continue))
            )
        explore = None
        if cfg.model.N_sup > 1:  # a random minimum number of steps for some samples, drawn on the device
            B = s.halted.shape[0]
            explore = (
                torch.rand(B, generator=st.explore, device=device),
                torch.randint(2, cfg.model.N_sup + 1, (B,), generator=st.explore, device=device),
            )
        loss, stats, halted = self._score(out.logits, s.labels, out.q_halt, out.q_continue, target_q, steps, explore)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.train.grad_clip, foreach=True)
        # this step's factor (lr_factor at step + 1); a float: the optimiser's lr is (train.lr), not a tensor
        lr_scale = cast(float, st.sched.get_last_lr()[0]) / cfg.train.lr
        st.opt.step()
        if st.emb_opt is not None:
            st.emb_opt.step(lr_scale)
        st.opt.zero_grad(set_to_none=True)
        st.sched.step()
        if st.ema is not None:
            self._update_ema()
        st.step += 1
        s.carry, s.steps, s.halted = carry, steps, halted
        return stats

    def _losses(self, logits, labels, q_halt, q_continue, target_q, steps, explore):
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
            stats = {
                "loss": loss.detach(),
                **{k: v.detach() for k, v in parts.items()},
                "halted": done.sum(),
                "exact": (is_correct.float() * done).sum(),
                "cells": ((token_correct.sum(-1) / mask_counts) * done).sum(),
                "halt_steps": (steps.float() * done).sum(),
            }
        return loss, stats, halted

    @torch.no_grad()
    def _update_ema(self) -> None:
        """AveragedModel.update_parameters without its host read of n_averaged: the EMA was registered
        from the initial weights (`build_ema`), so every update lerps by 1 - decay (one foreach kernel
        per dtype), as the reference's EMAHelper.update."""
        ema_params, params = self._ema_pairs
        torch._foreach_lerp_(ema_params, params, 1.0 - self.cfg.train.ema)
        if self._ema_buffers:  # as AveragedModel(use_buffers=False): buffers follow the model
            torch._foreach_copy_([a for a, _ in self._ema_buffers], [b for _, b in self._ema_buffers])
        ema = self.state.ema
        assert ema is not None  # called only with an EMA
        ema.n_averaged += 1  # a host tensor


class Window:
    """Training statistics between two reports (summed on device, synced once per report)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
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
            vals /= torch.tensor(
                [1.0 if k in ("halted", "exact", "cells", "halt_steps") else dist.get_world_size() for k in keys],
                dtype=vals.dtype,
                device=vals.device,
            )
        s = dict(zip(keys, vals.tolist(), strict=True))
        elapsed = max(time.time() - self.t0, 1e-9)
        halted = max(s["halted"], 1.0)
        out = {
            "train/loss": s["loss"] / self.n,
            "train/lm_loss": s["lm_loss"] / self.n,
            "train/halt_loss": s["halt_loss"] / self.n,
            "train/exact_accuracy": s["exact"] / halted,
            "train/cell_accuracy": s["cells"] / halted,
            "train/mean_halt_steps": s["halt_steps"] / halted,
            "throughput/steps_per_s": self.n / elapsed,
            "throughput/samples_per_s": self.n * global_batch / elapsed,
        }
        if "continue_loss" in s:
            out["train/continue_loss"] = s["continue_loss"] / self.n
        self._reset()
        return out
