"""The network's optimiser (AdamATan2, the reference's, or AdamW) with warmup, and the sparse
sign-SGD that trains puzzle embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import overload

import torch
import torch.distributed as dist

from trm.config import TrainConfig
from trm.model import PuzzleEmbedding


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The lr factor of the optimiser step that follows `step` completed ones (LambdaLR's counter):
    the reference's `cosine_schedule_with_warmup_lr_lambda` at its own step counter, which
    `pretrain.py` increments before the optimiser step, s = step + 1. Linear warmup s / warmup,
    then constant, or cosine from 1 down to lr_min_ratio at s = steps.

    With a constant schedule this is the previous rule (step + 1) / warmup, then 1, exactly; with
    the cosine one, the previous rule was one step late (it decayed from step, not step + 1)."""
    s = step + 1
    if s < cfg.lr_warmup_steps:
        return s / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (s - cfg.lr_warmup_steps) / max(1, cfg.steps - cfg.lr_warmup_steps))
    return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of the division by sqrt(v) + eps (Everett et al., 2024), with the
    update rule of the `adam-atan2` package that the reference trains with. At step t, for each
    parameter p with gradient g:

        p <- p * (1 - lr * weight_decay)                     decoupled, scaled by lr (as AdamW)
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr / (1 - beta1^t) * atan2(m, sqrt(v / (1 - beta2^t)))

    The first moment's bias correction multiplies the step outside atan2 (as torch's Adam step
    size), not m inside it; no eps, no a/b scale constants. Hand-written because the package is
    a CUDA-only extension and the pure-PyTorch `adam-atan2-pytorch` computes a different rule
    (a * atan2(m_hat, b * sqrt(v_hat)), weight decay not scaled by lr). The state (`step`,
    `exp_avg`, `exp_avg_sq` per parameter) has torch's Adam layout, so `state_dict` resumes exactly.
    """

    def __init__(
        self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.0
    ):
        if lr < 0:
            raise ValueError(f"lr={lr}: expected >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas={betas}: expected 0 <= beta < 1")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay}: expected >= 0")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            grads, ms, vs, counts = [], [], [], []
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grads.append(p.grad)
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
                counts.append(state["step"])
            torch._foreach_add_(counts, 1.0)
            if wd != 0:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_lerp_(ms, grads, 1.0 - beta1)
            torch._foreach_lerp_(vs, torch._foreach_mul(grads, grads), 1.0 - beta2)
            denoms = torch._foreach_sqrt(vs)
            for p, m, den, t in zip(params, ms, denoms, counts, strict=True):
                t = float(t)  # per parameter, as the reference (a parameter may skip steps)
                den.div_(math.sqrt(1.0 - beta2**t))
                p.add_(torch.atan2(m, den), alpha=-lr / (1.0 - beta1**t))
        return loss


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The network's optimiser (`train.optimizer`) and its warmup/decay schedule. The puzzle-embedding
    table is a buffer, trained apart by `PuzzleEmbeddingSGD`."""
    betas = (cfg.beta1, cfg.beta2)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adam_atan2":
        opt = AdamATan2(model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, fused=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    return opt, sched


class PuzzleEmbeddingSGD:
    """Sign-SGD with decoupled weight decay on the rows a batch touched, as the reference.

    Hand-written because torch has no sparse optimizer with weight decay
    (SparseAdam has none), and a dense one would touch every row each step.
    Under DDP the (ids, grads) of all ranks are all-gathered first, so every
    rank applies the same update to its copy of the table.
    """

    def __init__(self, emb: PuzzleEmbedding, lr: float, weight_decay: float):
        self.emb, self.lr, self.weight_decay = emb, lr, weight_decay

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        rows, ids = self.emb.last_rows, self.emb.last_ids
        if rows is None or rows.grad is None:
            return
        assert ids is not None  # `training_rows` sets both
        grad = rows.grad
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            g_all = [torch.empty_like(grad) for _ in range(dist.get_world_size())]
            i_all = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
            dist.all_gather(g_all, grad.contiguous())
            dist.all_gather(i_all, ids.contiguous())
            grad, ids = torch.cat(g_all), torch.cat(i_all)
        # no unique() (it waits for the device): a row's gradient is summed into its id's first
        # occurrence, found by comparing the N ids with each other, and every occurrence writes the
        # same updated row; shapes are known in advance
        first = (ids[:, None] == ids[None, :]).to(torch.uint8).argmax(-1)  # [N] first index of the same id
        summed = torch.zeros_like(grad).index_add_(0, first, grad)
        w = self.emb.weight
        lr = self.lr * lr_scale
        w[ids] = w[ids] * (1 - lr * self.weight_decay) - lr * summed[first].sign()
        self.emb.last_rows = self.emb.last_ids = None
