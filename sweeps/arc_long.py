"""A multi-day ARC-AGI training that survives spot preemption and driver loss (paper: 4 H100 x 3 days).

    trm data arc --src ARC-AGI-1/data --out data/arc1 --augmentations 1000
    python sweeps/arc_long.py --name arc1 --workers 4 --gpus-per-worker 1 --storage s3://BUCKET/trm \\
        --deadline 80h --budget-gpu-hours 320
    python sweeps/arc_long.py --name arc1 --storage s3://BUCKET/trm --resume    # after losing the driver

Checkpoints every `checkpoint_every` steps and every `checkpoint_minutes`; a lost worker or spot node
restarts from the latest one by itself; one MLflow run holds the whole history, with cost/gpu_hours
and cost/usd_estimate. Any other dataset works too: --data data/sudoku --set arch=mlp.
"""
import sys

from trm.launch.long_run import main

# The paper's ARC-AGI settings (weight decay 0.1 instead of the puzzles' 1.0); the rest are the defaults.
ARC = {"data_path": "data/arc1", "generate": "none", "weight_decay": 0.1, "puzzle_emb_weight_decay": 0.1,
       "steps": 200_000, "eval_every": 10_000, "checkpoint_every": 2_000, "checkpoint_minutes": 30}

if __name__ == "__main__":
    sys.exit(main(ARC, __doc__))
