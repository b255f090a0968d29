"""The one evaluation path (trm.evaluate.task.evaluate_task): the ARC task budget (a seeded subset of
test tasks), chunked prediction over any rows, and progress lines for long work."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from trm.config import ModelConfig
from trm.data.dataset import PuzzleDataset, read_meta
from trm.evaluate import Rows, concat_predictions, predict, predict_chunks, row_chunks
from trm.evaluate.task import eval_rows, evaluate_task
from trm.model import TRM
from trm.progress import Progress


@pytest.fixture(scope="module")
def arc_data(tmp_path_factory) -> Path:
    """Four held-out ARC tasks (two of them with two test inputs), four augmentations each."""
    from tests.test_arc import _arc_cli, _subsets, _write_combined

    root = tmp_path_factory.mktemp("arc")
    _write_combined(root / "k", _subsets())
    return _arc_cli("--src", str(root / "k"), "--out", str(root / "ds"), "--test-set", "evaluation",
                    "--test-set", "training")


def _model(meta: dict) -> TRM:
    torch.manual_seed(0)
    return TRM(ModelConfig(hidden=16, heads=2, layers=1, n=1, T=1, N_sup=2, puzzle_emb_ndim=16, puzzle_emb_len=1),
               meta["vocab_size"], meta["seq_len"], meta["num_puzzle_ids"])


def test_task_budget_votes_on_a_seeded_subset(arc_data: Path) -> None:
    ds = PuzzleDataset(arc_data, "test")
    model = _model(read_meta(arc_data))
    whole = evaluate_task(model, ds, 16, "cpu")
    assert whole.metrics["eval/num_tasks"] == 4
    some = evaluate_task(model, ds, 16, "cpu", tasks=2, seed=5)
    assert some.metrics["eval/num_tasks"] == 2
    voted = {t.task_id for t in some.vote.tests}
    assert len(voted) == 2
    # every augmentation of each chosen task, nothing else
    rows = eval_rows(ds, tasks=2, seed=5)
    task_index = np.asarray(ds.arrays["task_index"])
    assert set(np.flatnonzero(np.isin(task_index, np.unique(task_index[rows])))) == set(rows)
    assert sum(t.predictions for t in some.vote.tests) == len(rows)
    # the same seed, the same tasks (evaluations during a run compare like with like); the whole split
    # when the budget covers it
    assert {t.task_id for t in evaluate_task(model, ds, 16, "cpu", tasks=2, seed=5).vote.tests} == voted
    assert len({frozenset(np.unique(task_index[eval_rows(ds, tasks=2, seed=s)])) for s in range(20)}) > 1
    assert np.array_equal(eval_rows(ds, tasks=4, seed=5), np.arange(len(ds)))
    # the subset's own votes are the whole evaluation's votes on those tasks
    full = {(t.task_id, t.test_index): (t.predictions, [c.votes for c in t.candidates]) for t in whole.vote.tests}
    for t in some.vote.tests:
        assert full[(t.task_id, t.test_index)] == (t.predictions, [c.votes for c in t.candidates])


def test_chunks_over_any_rows_equal_one_prediction(arc_data: Path) -> None:
    ds = PuzzleDataset(arc_data, "test")
    model = _model(read_meta(arc_data))
    rows = np.arange(1, len(ds), 3)
    parts = [predict(model, Rows(ds, part), 4, torch.device("cpu")) for part in row_chunks(rows, 5)]
    chunked = concat_predictions([type(p)(rows[i * 5:][p.index], p.tokens, p.halt_steps, p.confidence)
                                  for i, p in enumerate(parts)], ds.meta["seq_len"])
    (one,) = predict_chunks(model, ds, rows, 4, torch.device("cpu"))  # CHUNK rows at a time: one chunk here
    assert np.array_equal(chunked.index, rows) and np.array_equal(one.index, rows)
    assert np.array_equal(chunked.tokens, one.tokens) and np.allclose(chunked.confidence, one.confidence)
    empty = concat_predictions([], ds.meta["seq_len"])
    assert empty.tokens.shape == (0, ds.meta["seq_len"])


def test_prediction_logs_progress_with_rate_and_eta(arc_data: Path, caplog) -> None:
    ds = PuzzleDataset(arc_data, "test")
    model = _model(read_meta(arc_data))
    caplog.set_level(logging.INFO, logger="trm.progress")
    with Progress("eval: predict", len(ds), "rows", every=0.0) as p:
        predict(model, ds, 4, torch.device("cpu"), progress=p)
    lines = [r.getMessage() for r in caplog.records if r.name == "trm.progress"]
    assert len(lines) >= 3 and all("rows/s" in x and "ETA" in x for x in lines[:-1])  # then "N rows in T"
    assert p.done == len(ds)


def test_training_evaluations_use_the_task_budget_and_the_final_one_every_task(arc_data: Path, tmp_path) -> None:
    """The loop's evaluation is trm eval's with train.eval_tasks: a seeded subset of tasks during the
    run, every task at the final evaluation (the number a run ends with)."""
    from trm.config import load_config
    from trm.train.loop import Trainer
    from trm.train.session import LocalSession

    cfg = load_config(None, {"hidden": 16, "heads": 2, "expansion": 2, "layers": 1, "n": 1, "T": 1, "N_sup": 2,
                             "puzzle_emb_ndim": 16, "puzzle_emb_len": 1, "batch_size": 8, "steps": 4,
                             "eval_every": 2, "log_every": 2, "checkpoint_every": 4, "data_path": str(arc_data),
                             "generate": "none", "eval_tasks": 2, "ema": 0.0})
    reports: list[tuple[int, float, float]] = []
    tr = Trainer(cfg, LocalSession(tmp_path))
    # each side of the selection split (trm.data.selection: 1 of the 4 tasks) within the budget
    tr.session.on_report = lambda metrics, step: reports.append(
        (step, metrics["eval/num_tasks"], metrics["select/eval/num_tasks"]))
    tr.fit()
    assert reports == [(2, 2.0, 1.0), (4, 3.0, 1.0)]
