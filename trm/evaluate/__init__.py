"""Evaluation: run all N_sup supervision steps and score the final answer.

`predict` is the one place that runs a model for evaluation; the ARC
augmentation vote (`trm.evaluate.vote`) builds on its per-sample outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from trm.data.dataset import IGNORE, PuzzleDataset, iterate_batches
from trm.model import TRM


@dataclass
class Predictions:
    index: np.ndarray  # [N] sample index in the split
    tokens: np.ndarray  # [N, L] argmax prediction after the last step
    halt_steps: np.ndarray  # [N] first step whose halting logit says "done" (N_sup if never)
    confidence: np.ndarray  # [N] sigmoid of the final halting logit


@torch.no_grad()
def predict(model: TRM, ds: PuzzleDataset, batch_size: int, device: torch.device, limit: int = 0,
            rank: int = 0, world_size: int = 1, autocast: bool = False) -> Predictions:
    model.eval()
    out = {"index": [], "tokens": [], "halt_steps": [], "confidence": []}
    N_sup = model.cfg.N_sup
    for idx, batch in iterate_batches(ds, batch_size, limit, rank, world_size):
        tokens = torch.as_tensor(batch["inputs"], device=device).long()
        pids = torch.as_tensor(batch["puzzle_ids"], device=device).long()
        carry = model.initial_carry(len(idx), device)
        halt_at = torch.full((len(idx),), N_sup, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for step in range(1, N_sup + 1):
                carry, o = model(carry, tokens, pids)
                halt_at = torch.where((halt_at == N_sup) & (o.q_halt > 0) & (step < N_sup), step, halt_at)
        out["index"].append(idx)
        out["tokens"].append(o.logits.argmax(-1).cpu().numpy())
        out["halt_steps"].append(halt_at.cpu().numpy())
        out["confidence"].append(torch.sigmoid(o.q_halt.float()).cpu().numpy())
    model.train()
    if not out["index"]:
        L = ds.meta["seq_len"]
        return Predictions(np.empty(0, int), np.empty((0, L), int), np.empty(0, int), np.empty(0, float))
    return Predictions(*(np.concatenate(out[k]) for k in ("index", "tokens", "halt_steps", "confidence")))

VAL_KEYS = ("val/cell_accuracy", "val/exact_accuracy", "val/mean_halt_steps")  # what evaluate() returns


def score(pred: Predictions, ds: PuzzleDataset) -> dict[str, float]:
    """Sums (not means) so that ranks can be added: cells, correct cells, exact, halt steps."""
    labels = np.asarray(ds.arrays["labels"][pred.index])
    mask = labels != IGNORE
    correct = (pred.tokens == labels) & mask
    return {"samples": float(len(pred.index)), "cells": float(mask.sum()), "correct_cells": float(correct.sum()),
            "exact": float((correct.sum(-1) == mask.sum(-1)).sum()), "halt_steps": float(pred.halt_steps.sum())}


def evaluate(model: TRM, ds: PuzzleDataset, batch_size: int, device: torch.device, limit: int = 0,
             rank: int = 0, world_size: int = 1, autocast: bool = False) -> dict[str, float]:
    """val/cell_accuracy, val/exact_accuracy, val/mean_halt_steps over this rank's shard,
    summed across ranks when running under torch.distributed."""
    sums = score(predict(model, ds, batch_size, device, limit, rank, world_size, autocast), ds)
    keys = sorted(sums)
    if world_size > 1 and dist.is_initialized():
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64,
                         device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        sums = dict(zip(keys, t.tolist()))
    n = max(sums["samples"], 1.0)
    return dict(zip(VAL_KEYS, (sums["correct_cells"] / max(sums["cells"], 1.0), sums["exact"] / n,
                               sums["halt_steps"] / n)))
