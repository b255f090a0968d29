"""Learning, not just running: a small TRM beats copying the givens on generated Sudoku."""
import numpy as np
import pytest
import torch

from trm.config import load_config
from trm.data import sudoku
from trm.data.dataset import PuzzleDataset
from trm.evaluate import predict
from trm.train.loop import Trainer
from trm.train.session import LocalSession


@pytest.mark.slow
def test_small_trm_learns_sudoku(tmp_path):
    torch.set_num_threads(2)
    data = tmp_path / "sudoku"
    train = sudoku.generate(300, seed=11, min_givens=34, max_givens=44)[:2]
    test = sudoku.generate(200, seed=12, min_givens=34, max_givens=44)[:2]
    sudoku.build_dataset(data, train, test, augmentations=100, seed=0)
    cfg = load_config(None, {
        "data_path": str(data), "generate": "none", "hidden": 64, "heads": 4, "expansion": 2, "n": 2, "T": 1,
        "N_sup": 4, "puzzle_emb_ndim": 0, "batch_size": 64, "steps": 450, "lr": 1e-3, "lr_warmup_steps": 50,
        "weight_decay": 0.1, "ema": 0.99, "eval_every": 150, "eval_samples": 200, "checkpoint_every": 450})
    trainer = Trainer(cfg, LocalSession(tmp_path / "run"))
    trainer.fit()

    ds = PuzzleDataset(data, "test")
    pred = predict(trainer.eval_model, ds, 100, trainer.device)
    inputs, labels = np.asarray(ds.arrays["inputs"])[pred.index], np.asarray(ds.arrays["labels"])[pred.index]
    blanks = inputs == 1
    model_acc = (pred.tokens[blanks] == labels[blanks]).mean()
    # copy-the-givens baseline: givens copied, each blank filled with the most common training digit
    train_labels = np.asarray(PuzzleDataset(data, "train").arrays["labels"])
    common = np.bincount(train_labels.ravel()).argmax()
    baseline_acc = (labels[blanks] == common).mean()
    print(f"blank-cell accuracy: model {model_acc:.3f}, copy-the-givens baseline {baseline_acc:.3f}")
    assert (pred.tokens[~blanks] == labels[~blanks]).mean() > 0.95  # it also learned to copy givens
    assert model_acc > baseline_acc + 0.08
