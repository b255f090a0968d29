"""Regularization sweep (paper 4.7): EMA rate (0 = no EMA) and weight decay on a log scale.

    python sweeps/regularization_sweep.py [--preset sudoku] [--num-samples 32]
"""
import sys

from ray import tune

from trm.sweep.cli import main

SPACES = {
    "smoke": {"ema": tune.choice([0.0, 0.9, 0.99]), "weight_decay": tune.loguniform(1e-3, 1.0)},
    "tiny": {"ema": tune.choice([0.0, 0.9, 0.99]), "weight_decay": tune.loguniform(1e-3, 1.0)},
    "default": {"ema": tune.choice([0.0, 0.99, 0.999, 0.9999]), "weight_decay": tune.loguniform(1e-2, 3.0)},
}

if __name__ == "__main__":
    sys.exit(main("regularization_sweep", SPACES, __doc__))
