"""How much training ASHA + Optuna's TPE spends to match an exhaustive full-budget grid, on a small space.

    python benchmarks/asha_efficiency.py                       # layers {1,2} x n {1,2,3} x T {1,2}: ~8-9 min on 2 cores
    python benchmarks/asha_efficiency.py --layers 1 2 --n 1 3 --T 1 2   # 8 configs, quicker
    python benchmarks/asha_efficiency.py --seed 0 1 2          # one ASHA arm per TPE seed, same grid (+~4 min each)
    python benchmarks/asha_efficiency.py --asha-concurrent 2   # as the sweeps run on 2 CPUs (not deterministic)

Both arms run on the `tiny` preset (tiny model, generated Sudoku set; its metric is val/cell_accuracy
because exact accuracy is 0 at that size) through the project's real trial path: a Tune function trial
(trm.sweep.tune._trial) that builds and fits a Ray Train TorchTrainer with one worker, MLflow tracking to a
SQLite file, on a local Ray (trm.launch.cluster.connect_ray). One trial-iteration = one report = the
preset's `eval_every` training steps and an evaluation; a full-budget trial is `max_t` = preset.evals
iterations.

  grid  every config of the space (tune.grid_search, Tune's BasicVariantGenerator), no scheduler, no
        stopper: configs x max_t trial-iterations. Its target is the best metric any config reached at
        any iteration (also shown: the best final value, and 99% of the best).
  asha  what trm.sweep.tune.run_sweep sets up: OptunaSearch(TPESampler(seed)) over tune.choice of the
        same values, RecordingASHA(max_t, grace, reduction_factor of the preset) and, unless
        --no-overfit-stopper, the OverfitStopper; num_samples = number of grid configs unless
        --num-samples. A Tune callback records every result in the order Tune receives it; the
        trial-iterations spent to reach a target = the position of the first result >= the target.

Training is seeded (train.seed, data stream) and each worker runs torch with 1 thread, so a config
reproduces its learning curve exactly; the script checks this by comparing every ASHA result with the
grid's result for the same config and iteration. With --asha-concurrent 1 (default) the ASHA arm is
deterministic too (TPE's suggestions and ASHA's decisions depend on the order results arrive, which
with several trials at once depends on timing). Everything lives in a temp folder, removed at the end.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before Ray is imported: no token in the home folder

import ray  # noqa: E402
from ray import tune  # noqa: E402

from trm.config import apply_overrides, parse_set  # noqa: E402
from trm.sweep.presets import PRESETS  # noqa: E402
from common import scratch  # noqa: E402  (benchmarks/common.py)

AXES = ("layers", "n", "T")


class Recorder(tune.Callback):
    """Driver side: every result, in the order Tune processes them."""

    def __init__(self, metric: str):
        self.metric = metric
        self.t0 = time.time()
        self.rows: list[dict[str, Any]] = []
        self.errored: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.rows.append({"trial": trial.trial_id, "config": tuple(trial.config[k] for k in AXES),
                          "it": int(result["training_iteration"]), "value": result.get(self.metric),
                          "time": time.time() - self.t0})

    def on_trial_error(self, iteration, trials, trial, **info):
        self.errored.add(trial.trial_id)


def run_arm(name: str, space: dict, *, base, metric: str, tmp: Path, uri: str, search_alg=None, scheduler=None,
            stopper=None, num_samples: int = 1, max_concurrent: int = 1) -> tuple[Recorder, float]:
    from trm.evaluate.objective import Objective
    from trm.launch.cluster import DRIVER_RESOURCE, WorkerSpec
    from trm.sweep.tune import TrialSetup, _trial
    from trm.tracking import Tracker

    from mlflow.tracking import MlflowClient

    # artifacts, if any, under the temp folder rather than ./mlruns
    MlflowClient(uri).create_experiment(name, artifact_location=(tmp / "mlartifacts" / name).as_uri())
    parent = Tracker.create(uri, name, run_name=f"{name}-sweep")
    setup = TrialSetup(base, uri, parent.run_id, str(tmp / "tune" / f"{name}-trials"), WorkerSpec(), Objective(metric))
    trainable = tune.with_resources(tune.with_parameters(_trial, setup=setup), {"cpu": 0, DRIVER_RESOURCE: 0.01})
    recorder = Recorder(metric)
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp / "tune"), stop=stopper, callbacks=[recorder],
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=0))
    recorder.t0 = t0 = time.time()
    tuner.fit()
    wall = time.time() - t0
    parent.end()
    return recorder, wall


def report_arm(seed: int, rows: list[dict], wall: float, reasons: dict[str, str], curves: dict,
               targets: tuple, grid_total: int, grid_wall: float, concurrent: int) -> str:
    """Print one ASHA arm against the grid; return its one-line summary."""
    total = len(rows)
    print()
    print(f"asha, TPE seed {seed}: {len(reasons)} trials started, {len({r['config'] for r in rows})} distinct "
          f"configs (TPE may propose a config again; Optuna's first 10 suggestions are random startup trials)")
    trials: dict[str, dict] = {}
    for r in rows:
        t = trials.setdefault(r["trial"], {"config": r["config"], "its": 0, "best": -math.inf})
        t["its"] = max(t["its"], r["it"])
        if r["value"] is not None:
            t["best"] = max(t["best"], r["value"])
    print(f"{'trial':10s} {'config':22s} {'iters':>5s} {'best':>7s}  end  (in order of first result)")
    for tid, t in trials.items():
        print(f"{tid:10s} {fmt_cfg(t['config']):22s} {t['its']:5d} {t['best']:7.4f}  {reasons.get(tid, '?')}")
    diffs = [abs(r["value"] - curves[r["config"]][r["it"]]) for r in rows
             if r["value"] is not None and r["it"] in curves.get(r["config"], {})]
    print(f"reproducibility: {len(diffs)} ASHA results matched against the grid's same config+iteration, "
          f"max |difference| {max(diffs, default=math.nan):.2e}")
    best = max((r["value"] for r in rows if r["value"] is not None), default=math.nan)
    print(f"asha trial-iterations in total: {total} = {total / grid_total:.1%} of the grid's; best {best:.4f}; "
          f"wall {wall:.1f} s = {wall / grid_wall:.1%} of the grid's ({concurrent} at once; every trial, pruned "
          f"after 1 iteration or not, pays Ray Train's fixed start-up)")
    print(f"{'target':34s} {'value':>7s} {'asha iters':>10s} {'of grid':>8s} {'asha wall s':>11s}  reached by")
    reached = []
    for label, target in targets:
        hit = next((i for i, r in enumerate(rows) if r["value"] is not None and r["value"] >= target - 1e-12), None)
        reached.append(None if hit is None else hit + 1)
        if hit is None:
            print(f"{label:34s} {target:7.4f} {'never':>10s} {'-':>8s} {'-':>11s}  (asha best {best:.4f})")
        else:
            r = rows[hit]
            print(f"{label:34s} {target:7.4f} {hit + 1:10d} {(hit + 1) / grid_total:8.1%} {r['time']:11.1f}  "
                  f"{fmt_cfg(r['config'])}, iteration {r['it']}")
    exact, relaxed = reached[0], reached[-1]
    if exact is not None:
        head = (f"seed {seed}: ASHA+TPE reached the grid best {targets[0][1]:.4f} after {exact}/{grid_total} grid "
                f"trial-iterations ({exact / grid_total:.1%})")
    else:
        head = f"seed {seed}: ASHA+TPE never reached the grid best {targets[0][1]:.4f} (its best: {best:.4f})"
    relaxed_s = (f"after {relaxed}/{grid_total} ({relaxed / grid_total:.1%})" if relaxed is not None
                 else "never reached")
    return (f"{head}; {targets[-1][0]} {relaxed_s}; ASHA spent {total}/{grid_total} = {total / grid_total:.1%} "
            f"of the grid's trial-iterations in all, {wall / grid_wall:.1%} of its wall time")


def depth(cfg: tuple) -> int:
    layers, n, T = cfg
    return layers * (n + 1) * T


def fmt_cfg(cfg: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(AXES, cfg))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--T", type=int, nargs="+", default=[1, 2])
    p.add_argument("--evals", type=int, default=PRESETS["tiny"].evals,
                   help="iterations (reports) of a full-budget trial = ASHA's max_t (preset: %(default)s)")
    p.add_argument("--num-samples", type=int, help="ASHA trials (default: the number of grid configs)")
    p.add_argument("--grid-concurrent", type=int, default=2, help="grid trials at once")
    p.add_argument("--asha-concurrent", type=int, default=1,
                   help="ASHA trials at once (1: deterministic; 2: as the sweeps run on this machine)")
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="seed(s) of Optuna's TPE sampler: one ASHA arm per seed against the same grid "
                        "(each adds ~4 min with the defaults)")
    p.add_argument("--tolerance", type=float, default=0.99, help="the relaxed target: this fraction of the grid best")
    p.add_argument("--no-overfit-stopper", action="store_true",
                   help="ASHA arm without run_sweep's OverfitStopper (ASHA + TPE only)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the smoke config")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (printed)")
    a = p.parse_args(argv)
    for flag in ("evals", "grid_concurrent", "asha_concurrent"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: expected >= 1")

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from trm.config import Config
    from trm.data.build import ensure_dataset
    from trm.launch.cluster import connect_ray
    from trm.sweep.stopping import OverfitStopper, RecordingASHA, end_reason
    from trm.sweep.tune import validate_space

    from trm.evaluate.objective import objective_for

    preset = PRESETS["tiny"]
    objective = objective_for(None, preset.overrides.get("objective"))
    metric = objective.name
    values = {"layers": sorted(set(a.layers)), "n": sorted(set(a.n)), "T": sorted(set(a.T))}
    configs = list(itertools.product(*(values[k] for k in AXES)))
    num_samples = a.num_samples or len(configs)
    with scratch("trm-asha-", a.keep) as tmp:
        base = apply_overrides(Config(), {**preset.overrides, **parse_set(a.set),
                                          "data_path": str(tmp / "data" / "sudoku-tiny")})
        eval_every = base.train.eval_every
        base = apply_overrides(base, {"steps": a.evals * eval_every}).validate()  # exactly max_t reports
        validate_space({k: tune.choice(v) for k, v in values.items()}, base)
        ensure_dataset(base.data)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ.pop("RAY_ADDRESS", None)  # a new local Ray, not someone else's cluster
        connect_ray(None, num_cpus=a.num_cpus)
        grid_total = len(configs) * a.evals
        print(f"space: {' x '.join(f'{k} {values[k]}' for k in AXES)} = {len(configs)} configs; max_t {a.evals} "
              f"iterations of {eval_every} steps; metric {metric}", flush=True)

        # ------------------------------------------------------------ the exhaustive grid
        print(f"grid: {len(configs)} trials x {a.evals} iterations, {a.grid_concurrent} at once ...", flush=True)
        grid_rec, grid_wall = run_arm("grid", {k: tune.grid_search(v) for k, v in values.items()}, base=base,
                                      metric=metric, tmp=tmp, uri=uri, max_concurrent=a.grid_concurrent)
        print(f"grid done in {grid_wall:.1f} s", flush=True)
        curves: dict[tuple, dict[int, float]] = {}
        for r in grid_rec.rows:
            curves.setdefault(r["config"], {})[r["it"]] = r["value"]
        incomplete = [c for c in configs if len(curves.get(c, {})) < a.evals]
        grid_points = [(v, c, it) for c, curve in curves.items() for it, v in curve.items()
                       if v is not None and math.isfinite(v)]
        best_any, best_cfg, best_it = max(grid_points)
        finals = {c: curve[max(curve)] for c, curve in curves.items() if curve}
        best_final_cfg = max(finals, key=finals.get)
        best_final = finals[best_final_cfg]

        # ------------------------------------------------------------ ASHA + TPE, once per seed
        arms = []
        for seed in a.seed:
            stopper = None if a.no_overfit_stopper else OverfitStopper(
                objective, margin=preset.overfit_margin, patience=preset.overfit_patience)
            scheduler = RecordingASHA(time_attr="training_iteration", metric=metric, mode="max", max_t=a.evals,
                                      grace_period=preset.grace, reduction_factor=preset.reduction_factor)
            searcher = OptunaSearch(metric=metric, mode="max", sampler=optuna.samplers.TPESampler(seed=seed))
            print(f"asha: {num_samples} trials, TPE seed {seed}, ASHA grace {preset.grace} rf "
                  f"{preset.reduction_factor} max_t {a.evals}, overfit stopper {'off' if stopper is None else 'on'}, "
                  f"{a.asha_concurrent} at once ...", flush=True)
            rec, wall = run_arm(f"asha-seed{seed}", {k: tune.choice(v) for k, v in values.items()}, base=base,
                                metric=metric, tmp=tmp, uri=uri, search_alg=searcher, scheduler=scheduler,
                                stopper=stopper, num_samples=num_samples, max_concurrent=a.asha_concurrent)
            print(f"asha seed {seed} done in {wall:.1f} s", flush=True)
            reasons = {tid: end_reason(tid, stopper or OverfitStopper(), scheduler, tid in rec.errored)
                       for tid in dict.fromkeys(r["trial"] for r in rec.rows)}
            arms.append((seed, rec, wall, reasons))

        # ------------------------------------------------------------ report
        print()
        print("=" * 100)
        print(f"grid ({len(configs)} configs, full budget, {len(configs)} trials started): {metric} per iteration")
        print(f"{'config':22s} {'depth':>5s} " + " ".join(f"{'it' + str(i):>7s}" for i in range(1, a.evals + 1))
              + f" {'best':>7s}")
        for c in sorted(configs, key=lambda c: -max((v for v in curves.get(c, {}).values()), default=-1)):
            curve = curves.get(c, {})
            print(f"{fmt_cfg(c):22s} {depth(c):5d} "
                  + " ".join(f"{curve[i]:7.4f}" if i in curve else f"{'-':>7s}" for i in range(1, a.evals + 1))
                  + f" {max(curve.values(), default=math.nan):7.4f}")
        if incomplete:
            print(f"WARNING: grid configs without all {a.evals} iterations: {[fmt_cfg(c) for c in incomplete]}")
        print(f"grid best (any iteration): {best_any:.4f} ({fmt_cfg(best_cfg)}, iteration {best_it}); "
              f"grid best final: {best_final:.4f} ({fmt_cfg(best_final_cfg)})")
        print(f"grid trial-iterations: {len(configs)} configs x {a.evals} = {grid_total} "
              f"(recorded {len(grid_rec.rows)}), wall {grid_wall:.1f} s with {a.grid_concurrent} at once")
        targets = (("grid best, any iteration (exact)", best_any), ("grid best final", best_final),
                   (f"{a.tolerance:.0%} of grid best", a.tolerance * best_any))
        summaries = []
        for seed, rec, wall, reasons in arms:
            summaries.append(report_arm(seed, rec.rows, wall, reasons, curves, targets, grid_total, grid_wall,
                                        a.asha_concurrent))
        print("=" * 100)
        for s in summaries:
            print("SUMMARY: " + s)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
