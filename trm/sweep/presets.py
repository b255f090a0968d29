"""Base configurations the sweep scripts start from (`--preset`).

smoke           tiny models on a small generated Sudoku set: a whole sweep in minutes on 2 CPU cores.
                Exact accuracy is 0 for every trial at that size, so it ranks by cell accuracy.
sudoku          the paper's sizes (hidden 512, batch 768) on 1000 generated puzzles x 1000 shuffles.
sudoku-extreme  the paper's sizes on the Sudoku-Extreme files (`trm data sudoku --csv-train ...`
                into data/sudoku-extreme first; `--data` points elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    overrides: dict = field(default_factory=dict)
    metric: str = "val/exact_accuracy"
    evals: int = 50  # evaluations in a full trial (steps / eval_every)
    grace: int = 5  # evaluations before ASHA may stop a trial
    reduction_factor: int = 3
    num_samples: int = 32
    overfit_margin: float = 0.02
    overfit_patience: int = 3


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        overrides={"data_path": "data/sudoku-smoke", "generate": "sudoku", "num_train": 64, "num_test": 64,
                   "augmentations": 8, "min_givens": 40, "max_givens": 50,
                   "hidden": 32, "heads": 2, "expansion": 2, "N_sup": 2, "puzzle_emb_ndim": 16,
                   "puzzle_emb_len": 1, "batch_size": 32, "lr": 2e-3, "lr_warmup_steps": 10, "weight_decay": 0.1,
                   "ema": 0.9, "steps": 48, "eval_every": 8, "eval_samples": 64, "checkpoint_every": 8,
                   "log_every": 8},
        metric="val/cell_accuracy", evals=6, grace=1, reduction_factor=2, num_samples=6,
        overfit_margin=0.02, overfit_patience=2),
    "sudoku": Preset(
        overrides={"data_path": "data/sudoku", "generate": "sudoku", "num_train": 1000, "num_test": 1000,
                   "augmentations": 1000, "arch": "mlp", "steps": 50_000, "eval_every": 1000,
                   "checkpoint_every": 1000}),
    "sudoku-extreme": Preset(
        overrides={"data_path": "data/sudoku-extreme", "generate": "none", "arch": "mlp", "steps": 50_000,
                   "eval_every": 1000, "checkpoint_every": 1000}),
}
