"""The command line every sweep script shares: `main(name, spaces, report)`."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from trm.sweep.presets import PRESETS


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke",
                   help="base config: smoke (CPU, minutes), sudoku, sudoku-extreme (paper sizes)")
    p.add_argument("--num-samples", type=int, help="trials (default: the preset's)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="DDP workers per trial")
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--cpus-per-worker", type=float, default=1)
    p.add_argument("--storage", default="runs/sweeps", help="checkpoint storage: a folder or s3://bucket/prefix")
    p.add_argument("--tracking-uri", help="MLflow (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local Ray)")
    p.add_argument("--resume", action="store_true", help="resume an interrupted sweep of the same name")
    p.add_argument("--name", help="experiment name (default: the script's)")
    p.add_argument("--data", help="dataset folder (overrides the preset's data.path)")
    p.add_argument("--seed", type=int, default=0, help="seed of Optuna's TPE sampler")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config field")
    return p


def main(name: str, spaces: dict[str, dict[str, Any]], description: str,
         report: Callable | None = None, argv: list[str] | None = None) -> int:
    """Parse flags, pick the preset's search space, run the sweep. Errors before any trial exit 2."""
    from trm.storage import StorageError
    from trm.config import ConfigError, parse_set
    from trm.sweep.cluster import RayConnectError
    from trm.sweep.tune import SweepOptions, run_sweep
    from trm.tracking import TrackingError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    a = parser(description).parse_args(argv)
    try:
        overrides = parse_set(a.set)
        if a.data:
            overrides.update({"data_path": a.data})
        opts = SweepOptions(name=a.name or name, preset=a.preset, num_samples=a.num_samples,
                            max_concurrent=a.max_concurrent, workers_per_trial=a.workers_per_trial,
                            gpus_per_worker=a.gpus_per_worker, cpus_per_worker=a.cpus_per_worker,
                            storage=a.storage, tracking_uri=a.tracking_uri, address=a.address, resume=a.resume,
                            seed=a.seed, overrides=overrides)
        for flag, value in (("--num-samples", a.num_samples), ("--max-concurrent", a.max_concurrent),
                            ("--workers-per-trial", a.workers_per_trial)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} {value}: expected an integer >= 1")
        run_sweep(opts, spaces[a.preset if a.preset in spaces else "default"], report)
    except (ConfigError, StorageError, RayConnectError, TrackingError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    return 0
