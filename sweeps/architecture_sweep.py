"""Architecture sweep (paper Table 1 ablations): attention vs MLP-mixer, width, heads, and the
HRM switches (1-step gradient, Q-learning halting, separate f_L/f_H networks).

    python sweeps/architecture_sweep.py [--preset sudoku]
"""
import sys

from ray import tune

from trm.sweep.cli import main

SPACES = {
    "smoke": {"arch": tune.choice(["attention", "mlp"]), "hidden": tune.choice([32, 64]),
              "heads": tune.choice([1, 2]), "gradient": tune.choice(["full", "one_step"]),
              "halting": tune.choice(["bce", "q_learning"]), "separate_nets": tune.choice([False, True])},
    "tiny": {"arch": tune.choice(["attention", "mlp"]), "hidden": tune.choice([16, 32]),
             "heads": tune.choice([1, 2]), "gradient": tune.choice(["full", "one_step"]),
             "halting": tune.choice(["bce", "q_learning"]), "separate_nets": tune.choice([False, True])},
    "default": {"arch": tune.choice(["attention", "mlp"]), "hidden": tune.choice([256, 384, 512]),
                "heads": tune.choice([4, 8]), "gradient": tune.choice(["full", "one_step"]),
                "halting": tune.choice(["bce", "q_learning"]), "separate_nets": tune.choice([False, True])},
}

if __name__ == "__main__":
    sys.exit(main("architecture_sweep", SPACES, __doc__))
