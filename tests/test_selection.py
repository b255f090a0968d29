"""The selection split (trm.data.selection): disjoint from the reported rows, by group (a puzzle with all its
augmentations; an ARC task with all its test inputs), reproducible by seed, recorded in meta.json; what the
trainer ranks by, beside what it reports."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY
from trm.config import ConfigError, load_config
from trm.data.dataset import PuzzleDataset
from trm.data.selection import Selection, SelectionError, choose, digest
from trm.evaluate.objective import Objective
from trm.evaluate.task import evaluate_task
from trm.train import checkpoint as ckpt
from trm.train.loop import Trainer
from trm.train.session import LocalSession


def _check_split(ds: PuzzleDataset, sel: Selection, keys: np.ndarray) -> np.ndarray:
    parts = sel.split(ds)
    assert len(parts.select) and len(parts.report)
    assert not np.intersect1d(parts.select, parts.report).size  # disjoint
    assert np.array_equal(np.sort(np.r_[parts.select, parts.report]), np.arange(len(ds)))  # together: the split
    assert not np.intersect1d(keys[parts.select], keys[parts.report]).size  # no group on both sides
    return np.unique(keys[parts.select])


def test_sudoku_split_disjoint_and_reproducible_by_seed(sudoku_data):
    ds = PuzzleDataset(sudoku_data, "test")
    keys = np.asarray(ds.arrays["group_ids"])
    chosen = _check_split(ds, Selection(0.25, 3), keys)
    assert len(chosen) == 4  # ceil(0.25 x 16 puzzles)
    # the same seed, the same split (a fresh computation, not the cache); another seed, another one
    assert np.array_equal(choose(np.unique(keys), 0.25, 3), chosen)
    draws = {tuple(_check_split(ds, Selection(0.25, s), keys)) for s in range(10)}
    assert len(draws) > 1

    # recorded by the builder: the default split (fraction 0.1, seed 0), the one a run computes
    rec = ds.meta["selection"]
    assert (rec["fraction"], rec["seed"], rec["by"], rec["of"]) == (0.1, 0, "puzzles", 16)
    default = Selection().split(ds)
    assert rec["groups"] == default.groups.tolist() and rec["digest"] == digest(default.groups)


def test_dataset_built_before_selection_computes_the_same_split(sudoku_data, tmp_path: Path):
    old = tmp_path / "old"
    shutil.copytree(sudoku_data, old)
    meta = json.loads((old / "meta.json").read_text())
    recorded = meta.pop("selection")
    (old / "meta.json").write_text(json.dumps(meta))
    assert Selection().split(PuzzleDataset(old, "test")).groups.tolist() == recorded["groups"]
    # a dataset whose recorded split is not what its group ids give is refused, not silently re-split
    meta["selection"] = {**recorded, "digest": "0" * 16}
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="selection split"):
        Selection().split(PuzzleDataset(old, "test"))


def test_arc_split_by_task(tmp_path: Path):
    from tests.test_arc import _arc_cli, _rand_task, _write_combined

    rng = np.random.default_rng(0)
    subsets = {"training": {"t0": _rand_task(rng)}, "evaluation": {f"e{i}": _rand_task(rng, 2, 2) for i in range(6)}}
    _write_combined(tmp_path / "kaggle", subsets)
    data = _arc_cli("--src", str(tmp_path / "kaggle"), "--out", str(tmp_path / "arc"), "--test-set", "evaluation")
    ds = PuzzleDataset(data, "test")
    keys = np.asarray(ds.arrays["task_index"])
    chosen = _check_split(ds, Selection(0.5, 1), keys)
    assert len(chosen) == 3
    rec = ds.meta["selection"]
    assert rec["by"] == "tasks" and rec["of"] == 6 and rec["count"] == 1
    assert rec["task_ids"] == [ds.meta["task_ids"][g] for g in rec["groups"]]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_fraction_out_of_range_is_a_config_error(fraction: float):
    with pytest.raises(ConfigError, match="train.selection_fraction"):
        load_config(None, {"selection_fraction": fraction})


def test_fraction_leaving_a_side_empty(sudoku_data):
    with pytest.raises(SelectionError, match=r"train.selection_fraction=0.99: leaves the reported split empty"):
        Selection(0.99, 0).split(PuzzleDataset(sudoku_data, "test"))  # ceil(0.99 x 16) = 16 puzzles


def test_cli_refuses_an_empty_side_before_writing(sudoku_data, tmp_path: Path):
    from tests.test_faults import TINY as CLI_TINY
    from tests.test_faults import refused, trm

    out = tmp_path / "run"
    r = trm("train", "--no-tracking", "--out", str(out), "--set", f"data_path={sudoku_data}", *CLI_TINY,
            "--set", "steps=2", "--set", "selection_fraction=0.99", cwd=tmp_path)
    refused(r, "train.selection_fraction=0.99", "reported split empty")
    assert not out.exists()  # nothing written


def test_evaluation_reports_the_rest_and_ranks_on_the_selection(tiny_config, tmp_path: Path):
    """select/* are the selection rows' metrics, val/* the others'; together the whole split's. The best
    checkpoint is kept by select/*; `select_on=test` is the reference's: one split, ranked and reported."""
    cfg = tiny_config(steps=50, eval_every=25, checkpoint_every=25, device="cpu", eval_samples=0,
                      objective="val/cell_accuracy", selection_fraction=0.25)
    trainer = Trainer(cfg, LocalSession(tmp_path / "run"))
    assert trainer.objective == Objective("select/val/cell_accuracy")
    assert trainer.objective.train_metric == "train/cell_accuracy"
    metrics = trainer.fit()
    assert metrics["score"] == metrics["select/val/cell_accuracy"] != metrics["val/cell_accuracy"]
    assert metrics["best/score"] == trainer.best["value"] and trainer.best["metric"] == "select/val/cell_accuracy"
    assert ckpt.read_score(Path(ckpt.resolve(str(tmp_path / "run"), prefer="best")))["metric"] == trainer.best["metric"]

    ds = PuzzleDataset(cfg.data.path, "test")
    parts = Selection(0.25, 0).split(ds)
    r = evaluate_task(trainer.eval_model, ds, 8, "cpu", objective=trainer.objective.name, selection=trainer.selection)
    whole = evaluate_task(trainer.eval_model, ds, 8, "cpu", objective=trainer.objective.name)
    assert r.metric == "select/val/cell_accuracy" and whole.metric == "val/cell_accuracy"
    assert "selection split" in r.split and "4 puzzles" in r.split
    n_sel, n_rep = len(parts.select), len(parts.report)
    for k in ("val/cell_accuracy", "val/exact_accuracy"):
        mixed = (n_sel * r.metrics["select/" + k] + n_rep * r.metrics[k]) / (n_sel + n_rep)
        assert mixed == pytest.approx(whole.metrics[k], abs=1e-6)

    ref = tiny_config(steps=25, eval_every=25, checkpoint_every=25, device="cpu", select_on="test")
    reference = Trainer(ref, LocalSession(tmp_path / "ref"))
    assert reference.objective == Objective("val/exact_accuracy")
    m = reference.fit()
    assert not any(k.startswith("select/") for k in m) and m["score"] == m["val/exact_accuracy"]
    with pytest.raises(ConfigError, match="train.select_on=test"):
        tiny_config(select_on="test", objective="select/val/cell_accuracy")
