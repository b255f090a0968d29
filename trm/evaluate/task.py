"""One evaluation per dataset kind, shared by the training loop and `trm eval`, so that the
number logged during training is the number `trm eval` reports for the same checkpoint.

    arc:    the augmentation vote over every held-out test input x all its augmentations
            (eval/pass_at_k, eval/task_pass_at_k, eval/arc_score)
    maze:   valid-shortest-path rate (eval/maze_valid_path_accuracy)
    other:  exact and cell accuracy

Under torch.distributed the rows are spread over the ranks in chunks; each chunk's predictions
are gathered (all_gather_object) and every rank votes/scores on all of them, so every rank
holds the same metrics (the loop's "best" decision must agree across ranks). Plain accuracies
(val/*) come from the same predictions. Nothing here imports Ray or MLflow.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from trm.data.dataset import PuzzleDataset
from trm.evaluate import (Predictions, Rows, gather_predictions, means, predict, primary_metric, score)

CHUNK = 8192  # rows predicted between two gathers: bounded memory at 1000 augmentations per input


@dataclass
class EvalResult:
    metrics: dict[str, float]
    vote: object | None = None  # trm.evaluate.vote.VoteResult (ARC)
    maze: object | None = None  # trm.evaluate.maze.MazeResult
    curve: dict[int, float] = field(default_factory=dict)  # supervision step -> primary metric (curve=True)
    metric: str = ""  # the primary metric's name


def _chunks(model, ds: PuzzleDataset, stop: int, batch_size: int, device, rank: int, world_size: int,
            autocast: bool, n_sup, halt: bool, curve: bool, chunk: int = CHUNK):
    """Predictions on rows [0, stop), chunk by chunk, each gathered from every rank."""
    for a in range(0, stop, chunk):
        b = min(a + chunk, stop)
        p = predict(model, Rows(ds, a, b), batch_size, device, 0, rank, world_size, autocast, n_sup, halt, curve)
        p = Predictions(p.index + a, p.tokens.astype(np.uint8), p.halt_steps, p.confidence, p.step_tokens)
        yield gather_predictions(p, world_size)


def evaluate_task(model, ds: PuzzleDataset, batch_size: int, device: torch.device | str, *, limit: int = 0,
                  rank: int = 0, world_size: int = 1, autocast: bool = False, n_sup: int | None = None,
                  halt: bool = False, curve: bool = False, keep_predictions: bool = False) -> EvalResult:
    """Evaluate `model` on `ds` (a test split) the way its kind is scored; `limit` > 0: first rows only
    (the ARC vote then covers only the test inputs whose augmentations fall in them)."""
    t0 = time.time()
    device = torch.device(device)
    kind = ds.meta.get("name")
    metric = primary_metric(ds.meta) if kind != "arc" or "task_index" in ds.arrays else primary_metric(None)
    stop = len(ds) if limit <= 0 else min(limit, len(ds))
    shards = _chunks(model, ds, stop, batch_size, device, rank, world_size, autocast, n_sup, halt, curve)
    sums = {"samples": 0.0, "cells": 0.0, "correct_cells": 0.0, "exact": 0.0, "halt_steps": 0.0}
    steps = model.cfg.N_sup if n_sup is None else n_sup
    res = EvalResult({}, metric=metric)
    if kind == "arc" and "task_index" in ds.arrays:  # a test split: the vote (a train split: plain accuracy)
        from trm.evaluate.vote import Vote, VoteSamples, check_model, concat_predictions

        check_model(model, ds)
        samples = VoteSamples.from_dataset(ds)
        vote, per_step = Vote(samples), [Vote(samples) for _ in range(steps if curve else 0)]
        kept = []
        for p in shards:
            vote.add(p.index, p.tokens, p.confidence)
            for k, v in enumerate(per_step):
                v.add(p.index, p.step_tokens[k], p.confidence)
            _add(sums, score(p, ds))
            if keep_predictions:
                kept.append(p)
        res.vote = vote.result(concat_predictions(kept) if kept else None)
        res.metrics.update(res.vote.metrics)
        res.curve = {k + 1: v.result().metrics[metric] for k, v in enumerate(per_step)}
    else:
        preds = list(shards)
        p = _concat(preds, ds)
        _add(sums, score(p, ds))
        if kind == "maze":
            from trm.evaluate.maze import score_mazes

            q, y = np.asarray(ds.arrays["inputs"][p.index]), np.asarray(ds.arrays["labels"][p.index])
            res.maze = score_mazes(q, p.tokens, y, p.index)
            res.metrics.update(res.maze.metrics)
            if curve:
                res.curve = {k + 1: score_mazes(q, p.step_tokens[k], y).metrics[metric] for k in range(steps)}
        elif curve:
            res.curve = {k + 1: means(score(Predictions(p.index, p.step_tokens[k], p.halt_steps, p.confidence),
                                            ds))[metric] for k in range(steps)}
    res.metrics.update(means(sums))
    res.metrics["eval/seconds"] = time.time() - t0
    res.metrics["eval/supervision_steps"] = float(steps)
    return res


def _add(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] += v


def _concat(parts: list[Predictions], ds: PuzzleDataset) -> Predictions:
    if not parts:
        L = ds.meta["seq_len"]
        return Predictions(np.empty(0, int), np.empty((0, L), np.uint8), np.empty(0, int), np.empty(0, float),
                           None)
    steps = None if parts[0].step_tokens is None else np.concatenate([p.step_tokens for p in parts], axis=1)
    return Predictions(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("index", "tokens", "halt_steps", "confidence")), steps)
