"""Base configurations the sweep scripts start from (`--preset`).

smoke           small MLP-mixer TRMs (hidden 64) on generated 9x9 Sudoku with 45-55 givens: a whole depth
                sweep in about 10 minutes on 2 CPU cores whose best trial solves most held-out puzzles
                exactly; ranks by exact accuracy. Sizes chosen by measurement (the figures above PRESETS;
                the result and time in README, "The two commands").
tiny            the platform's own tests: trials of a few seconds (every exact accuracy is 0; ranks by
                cell accuracy).
sudoku          the Sudoku-Extreme MLP recipe on 1000 generated puzzles x 1000 shuffles.
sudoku-extreme  the Sudoku-Extreme MLP recipe on the Sudoku-Extreme-1K files (configs/sudoku-extreme-mlp.yaml;
                `trm data sudoku --csv-train ... --subsample 1000` into data/sudoku-extreme first;
                `--data` points elsewhere).
sudoku-extreme-att  the same with self-attention (configs/sudoku-extreme-att.yaml).
maze-hard       the Maze-Hard recipe (configs/maze-hard.yaml) on data/maze-hard.
arc-agi-1, arc-agi-2  the ARC recipes (configs/arc-agi-*.yaml) on data/arc1, data/arc2.

Every preset but smoke and tiny is its recipe, read from configs/NAME.yaml (the reference README's
commands; nothing re-typed here), with a sweep's schedule on top: the puzzle presets train the recipe's
length as steps (its epochs over the 1000 puzzle groups of Sudoku-Extreme-1K / Maze-Hard-1K, one example
each: 65104 steps at batch 768), because ASHA needs the length before any trial reads the data, and
evaluate more often than the recipe (every 1/50th, on `eval_samples`) to give ASHA its rungs. The ARC
presets count epochs, whose size only the dataset knows: each trial derives its steps, but ASHA's horizon
is the configured `steps` (default 50000), where it stops every trial still running; --set steps=N moves it.

No preset names a metric: a sweep ranks by its dataset kind's objective (trm.evaluate.objective), unless
the preset (tiny) or the user (`--set objective=...`) overrides `train.objective`, which the trials'
trainers then rank their best checkpoints by too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trm.recipes import recipe

PUZZLE_GROUPS = 1000  # training puzzles of Sudoku-Extreme-1K and Maze-Hard-1K (one example each): an epoch
RUNGS = 50  # puzzle presets: evaluations (and checkpoints) in a full trial


@dataclass(frozen=True)
class Preset:
    overrides: dict = field(default_factory=dict)
    evals: int = RUNGS  # evaluations in a full trial (steps / eval_every)
    grace: int = 5  # evaluations before ASHA may stop a trial
    reduction_factor: int = 3
    num_samples: int = 32
    overfit_margin: float = 0.02
    overfit_patience: int = 3


def _puzzles(name: str, **data) -> dict:
    """A puzzle recipe's length in steps (ASHA's horizon), evaluated every 1/RUNGS of it on
    eval_samples rather than on the whole test split."""
    r = recipe(name)
    del r["eval_every_epochs"], r["eval_samples"]
    steps = r.pop("epochs") * PUZZLE_GROUPS // r["batch_size"]
    return {**r, "steps": steps, "eval_every": steps // RUNGS, "checkpoint_every": steps // RUNGS, **data}


def _arc(name: str) -> dict:
    """An ARC recipe as it is (epochs), evaluated on eval_samples rows."""
    r = recipe(name)
    del r["eval_samples"]
    return r


PRESETS: dict[str, Preset] = {
    # measured (2 CPU cores, 1 thread per trial, AdamATan2): hidden 64, L2-n2-T2 reaches 0.87 exact at step
    # 400 and 0.91 at 500; L1-n1-T1 0.95 at 600 (Sudoku with 45-55 givens is shallow enough for depth 2
    # at full budget, but not at equal small budgets: the table compares at equal steps)
    "smoke": Preset(
        overrides={
            "data_path": "data/smoke-sudoku-g45-55",
            "generate": "sudoku",
            "num_train": 1000,
            "num_test": 256,
            "augmentations": 8,
            "min_givens": 45,
            "max_givens": 55,
            "arch": "mlp",
            "hidden": 64,
            "heads": 2,
            "expansion": 2,
            "N_sup": 4,
            "puzzle_emb_ndim": 0,
            "batch_size": 64,
            "lr": 2e-3,
            "lr_warmup_steps": 50,
            "weight_decay": 0.1,
            "ema": 0.99,
            "steps": 500,
            "eval_every": 100,
            "eval_samples": 256,
            "checkpoint_every": 100,
            "log_every": 100,
            "keep_checkpoints": 2,
        },
        evals=5,
        grace=2,
        reduction_factor=2,
        num_samples=4,
        overfit_margin=0.05,
        overfit_patience=3,
    ),
    "tiny": Preset(
        overrides={
            "data_path": "data/sudoku-tiny",
            "generate": "sudoku",
            "num_train": 64,
            "num_test": 64,
            "augmentations": 8,
            "min_givens": 40,
            "max_givens": 50,
            "hidden": 32,
            "heads": 2,
            "expansion": 2,
            "N_sup": 2,
            "puzzle_emb_ndim": 16,
            "puzzle_emb_len": 1,
            "batch_size": 32,
            "lr": 2e-3,
            "lr_warmup_steps": 10,
            "weight_decay": 0.1,
            "ema": 0.9,
            "steps": 48,
            "eval_every": 8,
            "eval_samples": 64,
            "checkpoint_every": 8,
            "log_every": 8,
            "objective": "val/cell_accuracy",
        },  # every exact accuracy is 0 at this size
        evals=6,
        grace=1,
        reduction_factor=2,
        num_samples=6,
        overfit_margin=0.02,
        overfit_patience=2,
    ),
    "sudoku": Preset(
        overrides=_puzzles(
            "sudoku-extreme-mlp",
            data_path="data/sudoku",
            generate="sudoku",
            num_train=1000,
            num_test=1000,
            augmentations=1000,
        )
    ),
    "sudoku-extreme": Preset(overrides=_puzzles("sudoku-extreme-mlp")),
    "sudoku-extreme-att": Preset(overrides=_puzzles("sudoku-extreme-att")),
    "maze-hard": Preset(overrides=_puzzles("maze-hard")),
    "arc-agi-1": Preset(overrides=_arc("arc-agi-1")),
    "arc-agi-2": Preset(overrides=_arc("arc-agi-2")),
}
