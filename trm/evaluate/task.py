"""One evaluation per dataset kind, behind one entry (`evaluate_task`) shared by the training loop,
`trm eval` and the benchmarks, so that the number logged during training is the number `trm eval`
reports for the same checkpoint.

    arc (test split):  the augmentation vote over every held-out test input x all its augmentations
                       (eval/pass_at_k, eval/task_pass_at_k, eval/arc_score); `tasks=K` votes on a
                       seeded subset of K tasks (the budget of an evaluation during training)
    maze:              valid-shortest-path rate (eval/maze_valid_path_accuracy)
    other:             exact and cell accuracy

Every kind reads its predictions from `predict_chunks` (the one chunk loop: under torch.distributed a
chunk's rows are spread over the ranks and gathered, so every rank scores all of them and holds the
same metrics: the loop's "best" decision must agree across ranks). Plain accuracies (val/*) come from
the same predictions. Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from trm.data.dataset import PuzzleDataset
from trm.data.selection import Selection
from trm.evaluate import PLAIN, Predictions, Trajectories, concat_predictions, means, predict_chunks, score
from trm.evaluate.objective import SELECT, objective_for
from trm.progress import Progress

log = logging.getLogger(__name__)
_SUMS = ("samples", "cells", "correct_cells", "exact", "halt_steps")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    vote: object | None = None  # trm.evaluate.vote.VoteResult (ARC)
    maze: object | None = None  # trm.evaluate.maze.MazeResult
    curve: dict[int, float] = field(default_factory=dict)  # supervision step -> the objective (curve=True)
    metric: str = ""  # the objective's name
    params: dict[str, float | int] = field(default_factory=dict)  # how it was run: trajectories, noise, seed
    split: str = "the whole test split"  # which rows the reported metrics cover (a selection split: not those)


def evaluate_task(
    model,
    ds: PuzzleDataset,
    batch_size: int,
    device: torch.device | str,
    *,
    limit: int = 0,
    rank: int = 0,
    world_size: int = 1,
    autocast: bool = False,
    n_sup: int | None = None,
    halt: bool = False,
    curve: bool = False,
    keep_predictions: bool = False,
    tasks: int = 0,
    seed: int = 0,
    objective: str | None = None,
    trajectories: Trajectories = PLAIN,
    selection: Selection | None = None,
) -> EvalResult:
    """Evaluate `model` on `ds` (a test split) the way its kind is scored. `limit` > 0: the first rows only
    (the ARC vote then covers only the test inputs whose augmentations fall in them); `tasks` > 0 (ARC): a
    subset of that many test tasks drawn with `seed`, every augmentation of each; `objective`: the metric
    the curve follows and `metric` names (`train.objective`; None: the dataset kind's); `trajectories`: noisy
    multi-trajectory inference (`trm.evaluate.Trajectories`: the most confident of K runs is each row's
    answer; on ARC every run's answer enters the vote).

    `selection` (trm.data.selection; test splits only): the split is cut in two by group; the usual metrics
    (val/*, eval/*) are the reported rows', the same metrics of the selection rows come as select/val/...,
    select/eval/... (`limit` and `tasks` apply within each side), and `split` says so. None: the whole split,
    the objective without its select/ prefix (the reference's: select on what you report)."""
    t0 = time.time()
    voted = ds.meta.get("name") == "arc" and "task_index" in ds.arrays  # an ARC train split: plain accuracy
    kind_meta = ds.meta if voted or ds.meta.get("name") != "arc" else None
    evaluate_rows = functools.partial(  # how every part of the split is run
        _evaluate_rows,
        model,
        ds,
        batch_size=batch_size,
        device=torch.device(device),
        rank=rank,
        world_size=world_size,
        autocast=autocast,
        n_sup=n_sup,
        halt=halt,
        trajectories=trajectories,
        voted=voted,
    )
    if selection is None or ds.split != "test":
        metric = objective_for(kind_meta, objective, select=False).name
        rows = eval_rows(ds, limit, tasks if voted else 0, seed)
        res = evaluate_rows(rows, metric, curve=curve, keep_predictions=keep_predictions)
    else:
        parts = selection.split(ds)
        objective_ = objective_for(kind_meta, objective, select=True)
        metric = objective_.name
        chosen = eval_rows(ds, limit, tasks if voted else 0, seed, within=parts.select)
        report = eval_rows(ds, limit, tasks if voted else 0, seed, within=parts.report)
        sel = evaluate_rows(chosen, objective_.reported, curve=False, keep_predictions=False)
        # the curve, like every reported number, on the side that is not selected on
        res = evaluate_rows(report, objective_.reported, curve=curve, keep_predictions=keep_predictions)
        res.metrics.update({SELECT + k: v for k, v in sel.metrics.items()})
        res.split = selection.describe(parts)
    res.metric = metric
    res.metrics["eval/seconds"] = time.time() - t0  # the whole evaluation (both sides)
    return res


def _evaluate_rows(
    model,
    ds: PuzzleDataset,
    rows: np.ndarray,
    metric: str,
    *,
    batch_size: int,
    device: torch.device,
    rank: int,
    world_size: int,
    autocast: bool,
    n_sup: int | None,
    halt: bool,
    curve: bool,
    keep_predictions: bool,
    trajectories: Trajectories,
    voted: bool,
) -> EvalResult:
    """The kind's evaluation of some rows of `ds`; `metric` (a reported name) is what the curve follows."""
    t0 = time.time()
    steps = model.cfg.N_sup if n_sup is None else n_sup
    shards = predict_chunks(
        model,
        ds,
        rows,
        batch_size,
        device,
        rank=rank,
        world_size=world_size,
        autocast=autocast,
        n_sup=n_sup,
        halt=halt,
        curve=curve,
        trajectories=trajectories,
        keep_trajectories=voted and trajectories.k > 1,
    )
    if voted:
        from trm.evaluate.vote import check_model

        check_model(model, ds)
        res = _arc(ds, shards, len(rows), metric, steps if curve else 0, keep_predictions, rank)
    else:
        p = concat_predictions(list(shards), ds.meta["seq_len"])
        res = (
            _maze(ds, p, metric, steps if curve else 0)
            if ds.meta.get("name") == "maze"
            else _exact(ds, p, metric, steps if curve else 0)
        )
        res.metrics.update(means(score(p, ds)))
    res.metric = metric
    res.metrics["eval/seconds"] = time.time() - t0
    res.metrics["eval/supervision_steps"] = float(steps)
    res.params = trajectories.params()
    if not trajectories.plain:  # beside the scores they produced (a plain evaluation keeps its metric set)
        res.metrics["eval/trajectories"] = float(trajectories.k)
        res.metrics["eval/noise"] = float(trajectories.noise)
    return res


def eval_rows(
    ds: PuzzleDataset, limit: int = 0, tasks: int = 0, seed: int = 0, within: np.ndarray | None = None
) -> np.ndarray:
    """The rows an evaluation covers: the first `limit` (0 = all) of `within` (None: the whole split); with
    `tasks` > 0, only those of `tasks` test tasks drawn with `seed` from the tasks with a known output (ARC)."""
    rows = np.arange(len(ds)) if within is None else np.asarray(within, dtype=np.int64)
    if limit > 0:
        rows = rows[:limit]
    if tasks <= 0:
        return rows
    task_index = np.asarray(ds.arrays["task_index"])[rows]
    scored = task_index
    if "labelled" in ds.arrays:  # an unlabelled task is voted on, never scored: no use to a budget
        scored = task_index[np.asarray(ds.arrays["labelled"])[rows].astype(bool)]
    pool = np.unique(scored)
    if tasks >= len(pool):
        return rows
    chosen = np.random.default_rng(seed).choice(pool, tasks, replace=False)
    log.info("evaluating %d of %d test tasks (seed %d; every task at the final evaluation)", tasks, len(pool), seed)
    return rows[np.isin(task_index, chosen)]


# ---------------------------------------------------------------- one function per kind
def _arc(
    ds: PuzzleDataset,
    shards: Iterable[Predictions],
    total: int,
    metric: str,
    curve_steps: int,
    keep_predictions: bool,
    rank: int,
) -> EvalResult:
    """The vote, fed a chunk at a time (only one held unless kept); plain accuracies from the same rows."""
    from trm.evaluate.vote import Vote, VoteSamples

    samples = VoteSamples.from_dataset(ds)
    vote, per_step = Vote(samples), [Vote(samples) for _ in range(curve_steps)]
    sums, kept = dict.fromkeys(_SUMS, 0.0), []
    with Progress("eval: vote", total, "rows", every=10.0 if rank == 0 else math.inf) as progress:
        for p in shards:
            vote.add_predictions(p)
            for k, v in enumerate(per_step):
                v.add(p.index, p.step_answer(k), p.confidence)
            for key, value in score(p, ds).items():
                sums[key] += value
            if keep_predictions:
                kept.append(p)
            progress.update(len(p.index))
    result = vote.result(concat_predictions(kept, ds.meta["seq_len"]) if kept else None)
    res = EvalResult({**result.metrics, **means(sums)}, vote=result)
    res.curve = {k + 1: v.result().metrics[metric] for k, v in enumerate(per_step)}
    return res


def _maze(ds: PuzzleDataset, p: Predictions, metric: str, curve_steps: int) -> EvalResult:
    from trm.evaluate.maze import score_mazes

    q, y = np.asarray(ds.arrays["inputs"][p.index]), np.asarray(ds.arrays["labels"][p.index])
    result = score_mazes(q, p.tokens, y, p.index)
    res = EvalResult(dict(result.metrics), maze=result)
    res.curve = {
        k + 1: _curve_value(score_mazes(q, p.step_answer(k), y).metrics, ds, p, k, metric) for k in range(curve_steps)
    }
    return res


def _exact(ds: PuzzleDataset, p: Predictions, metric: str, curve_steps: int) -> EvalResult:
    return EvalResult({}, curve={k + 1: _curve_value({}, ds, p, k, metric) for k in range(curve_steps)})


def _curve_value(kind_metrics: dict[str, float], ds: PuzzleDataset, p: Predictions, k: int, metric: str) -> float:
    """The objective after supervision step k+1: a kind's own metric, or a val/* accuracy."""
    if metric in kind_metrics:
        return kind_metrics[metric]
    return means(score(Predictions(p.index, p.step_answer(k), p.halt_steps, p.confidence), ds))[metric]
