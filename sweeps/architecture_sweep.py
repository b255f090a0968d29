"""Architecture sweep (paper Tables 1 and 2): the reference's models (`variant`: the TRM, single z,
six z, HRM with its two 4-layer networks and 1-step gradient, the direct-prediction transformer),
attention vs MLP-mixer, width, heads, and the halting loss (BCE or HRM's Q-learning).

Each variant brings its own values (`trm.config.VARIANT_DEFAULTS`: HRM's layers, cycles and
gradient, the transformer's single pass). The TRM's ablation switches (1-step gradient, separate
f_L/f_H networks) stay `--set` options: HRM is the variant that has them by design.

    python sweeps/architecture_sweep.py [--preset sudoku]
"""
import sys

from ray import tune

from trm.sweep.cli import main

VARIANTS = ["trm", "singlez", "multiz", "hrm", "transformer"]

SPACES = {
    "smoke": {"variant": tune.choice(VARIANTS), "arch": tune.choice(["attention", "mlp"]),
              "hidden": tune.choice([32, 64]), "heads": tune.choice([1, 2]),
              "halting": tune.choice(["bce", "q_learning"])},
    "tiny": {"variant": tune.choice(VARIANTS), "arch": tune.choice(["attention", "mlp"]),
             "hidden": tune.choice([16, 32]), "heads": tune.choice([1, 2]),
             "halting": tune.choice(["bce", "q_learning"])},
    "default": {"variant": tune.choice(VARIANTS), "arch": tune.choice(["attention", "mlp"]),
                "hidden": tune.choice([256, 384, 512]), "heads": tune.choice([4, 8]),
                "halting": tune.choice(["bce", "q_learning"])},
}

if __name__ == "__main__":
    sys.exit(main("architecture_sweep", SPACES, __doc__))
