"""AdamW with warmup, and the sparse sign-SGD that trains puzzle embeddings."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from trm.config import TrainConfig
from trm.model import PuzzleEmbedding


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then constant or cosine down to lr_min_ratio."""
    if step < cfg.lr_warmup_steps:
        return (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.lr_warmup_steps) / max(1, cfg.steps - cfg.lr_warmup_steps))
    return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay, fused=False)
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
        grad = rows.grad
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            g_all = [torch.empty_like(grad) for _ in range(dist.get_world_size())]
            i_all = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
            dist.all_gather(g_all, grad.contiguous())
            dist.all_gather(i_all, ids.contiguous())
            grad, ids = torch.cat(g_all), torch.cat(i_all)
        uniq, inv = ids.unique(return_inverse=True)
        summed = torch.zeros(len(uniq), grad.shape[-1], device=grad.device, dtype=grad.dtype)
        summed.index_add_(0, inv, grad)
        w = self.emb.weight
        lr = self.lr * lr_scale
        w[uniq] = w[uniq] * (1 - lr * self.weight_decay) - lr * summed.sign()
        self.emb.last_rows = self.emb.last_ids = None
