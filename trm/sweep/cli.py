"""The command line every sweep script shares: `main(name, spaces, description, report)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from trm.cli_common import ArgumentParser, add_flags, overrides_from, require_positive, run_main
from trm.sweep.presets import PRESETS


def parser(description: str) -> argparse.ArgumentParser:
    p = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="smoke",
        help="base config: smoke (CPU, minutes), sudoku, sudoku-extreme (paper sizes)",
    )
    p.add_argument("--num-samples", type=int, help="trials (default: the preset's)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="DDP workers per trial")
    add_flags(
        p,
        "gpus_per_worker",
        "cpus_per_worker",
        "storage",
        gpus_per_worker=0.0,
        cpus_per_worker=1.0,
        storage="runs/sweeps",
    )
    add_flags(p, "tracking_uri", "address")
    p.add_argument("--resume", action="store_true", help="resume an interrupted sweep of the same name")
    p.add_argument("--name", help="experiment name (default: the script's)")
    add_flags(p, "data", "set")
    p.add_argument("--seed", type=int, default=0, help="seed of Optuna's TPE sampler")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run each configuration with training seeds 0..K-1; the report shows mean +- std",
    )
    p.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="Optuna RDB storage (default: sqlite optuna.db beside a SQLite MLflow DB); "
        "watch it with `optuna-dashboard URL`",
    )
    p.add_argument(
        "--multi-objective",
        action="store_true",
        help="Optuna: maximise the metric and minimise each trial's device-hours (Pareto front)",
    )
    p.add_argument("--prices", help="JSON/YAML price table for trials' dollars, as long runs (see trm/cost.py)")
    p.add_argument("--verbose", action="store_true", help="Ray's per-report and checkpoint logs, Tune's results")
    return p


def main(
    name: str,
    spaces: dict[str, dict[str, Any]],
    description: str,
    report: Callable | None = None,
    argv: list[str] | None = None,
    expander: Any = None,
    early_stopping: bool = True,
) -> int:
    """Parse flags, pick the preset's search space, run the sweep. A user's error exits 2 before any trial.
    `expander` and `early_stopping`: as `trm.sweep.tune.SweepOptions` (a paper table's rows, whole budgets)."""

    def sweep(a: argparse.Namespace) -> None:
        from trm.cost import load_price_table
        from trm.sweep.tune import SweepOptions, run_sweep

        require_positive(a, "--num-samples", "--max-concurrent", "--workers-per-trial", "--seeds")
        opts = SweepOptions(
            name=a.name or name,
            preset=a.preset,
            num_samples=a.num_samples,
            max_concurrent=a.max_concurrent,
            workers_per_trial=a.workers_per_trial,
            gpus_per_worker=a.gpus_per_worker,
            cpus_per_worker=a.cpus_per_worker,
            storage=a.storage,
            tracking_uri=a.tracking_uri,
            address=a.address,
            resume=a.resume,
            seed=a.seed,
            overrides=overrides_from(a),
            seeds=a.seeds,
            optuna_storage=a.optuna_storage,
            multi_objective=a.multi_objective,
            verbose=a.verbose,
            prices=load_price_table(a.prices) if a.prices else None,
            expander=expander,
            early_stopping=early_stopping,
        )
        run_sweep(opts, spaces[a.preset if a.preset in spaces else "default"], report)

    return run_main(parser(description), sweep, argv)
