"""Depth sweep (paper Table 3 / 4): layers x n x T, effective depth = layers * (n + 1) * T.

    python sweeps/depth_sweep.py                       # smoke preset: local Ray, ~10 minutes on 2 CPU cores
    python sweeps/depth_sweep.py --seeds 2             # each configuration twice: mean +- std
    optuna-dashboard sqlite:///optuna.db               # the sweep's Optuna study (beside mlflow.db)
    python sweeps/depth_sweep.py --preset sudoku-extreme --gpus-per-worker 1 --address auto
"""
import sys

from ray import tune

from trm.sweep.cli import main
from trm.sweep.reports import depth_report

SPACES = {
    "smoke": {"layers": tune.choice([1, 2]), "n": tune.choice([1, 2]), "T": tune.choice([1, 2])},
    "tiny": {"layers": tune.choice([1, 2]), "n": tune.choice([1, 2, 3]), "T": tune.choice([1, 2])},
    "default": {"layers": tune.choice([1, 2, 4]), "n": tune.choice([2, 3, 4, 6]), "T": tune.choice([2, 3, 4, 6])},
}

if __name__ == "__main__":
    sys.exit(main("depth_sweep", SPACES, __doc__, report=depth_report))
