"""A multi-day ARC-AGI training that survives spot preemption and driver loss (paper: 4 H100 x 3 days).

    trm data arc --src kaggle/combined --subsets training evaluation concept --test-set evaluation \
        --augmentations 1000 --out data/arc1
    python sweeps/arc_long.py --name arc1 --workers 4 --gpus-per-worker 1 --storage s3://BUCKET/trm \\
        --deadline 80h --budget-gpu-hours 320
    python sweeps/arc_long.py --name arc1 --storage s3://BUCKET/trm --resume    # after losing the driver

Checkpoints every `checkpoint_every` steps and every `checkpoint_minutes`; a lost worker or spot node
restarts from the latest one by itself; one MLflow run holds the whole history, with cost/gpu_hours
and cost/usd_estimate. ARC-AGI-2: --data data/arc2 (configs/arc-agi-2.yaml); any other recipe works
too: --config configs/maze-hard.yaml.
"""
import sys

from trm.launch.long_run import main
from trm.sweep.presets import PRESETS

# The reference's ARC-AGI-1 recipe (configs/arc-agi-1.yaml): n=4, T=3, 100000 epochs evaluated every 10000,
# weight decay 0.1, puzzle-embedding lr 1e-2, AdamATan2, EMA, the whole test split at each evaluation;
# checkpoints more often than the reference.
ARC = {**PRESETS["arc-agi-1"].overrides, "eval_samples": 0, "checkpoint_every": 2_000, "checkpoint_minutes": 30}

if __name__ == "__main__":
    sys.exit(main(ARC, __doc__))
