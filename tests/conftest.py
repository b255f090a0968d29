"""Shared fixtures: small generated datasets and tiny configs that train in seconds on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trm.config import Config, load_config
from trm.data import sudoku

torch.set_num_threads(1)  # tiny models: one thread beats two threads fighting on a shared 2-core box

TINY = {"hidden": 16, "heads": 2, "expansion": 2, "layers": 1, "n": 1, "T": 2, "N_sup": 3,
        "puzzle_emb_ndim": 16, "puzzle_emb_len": 1, "batch_size": 8, "lr": 3e-3, "lr_warmup_steps": 5,
        "eval_every": 25, "log_every": 25, "eval_samples": 16, "checkpoint_every": 25, "weight_decay": 0.1,
        "ema": 0.9}


@pytest.fixture(scope="session")
def sudoku_data(tmp_path_factory) -> str:
    """40 easy generated puzzles x 4 augmentations, 16 test puzzles."""
    out = tmp_path_factory.mktemp("data") / "sudoku"
    train = sudoku.generate(40, seed=1, min_givens=36, max_givens=45)[:2]
    test = sudoku.generate(16, seed=2, min_givens=36, max_givens=45)[:2]
    sudoku.build_dataset(out, train, test, augmentations=4, seed=0)
    return str(out)


@pytest.fixture
def tiny_config(sudoku_data):
    def make(**overrides) -> Config:
        base = dict(TINY)
        if overrides.get("epochs"):  # a run counted in epochs derives eval_every (setting it too is refused)
            base.pop("eval_every")
        return load_config(None, {**base, "data_path": sudoku_data, "generate": "none", **overrides})
    return make


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
