"""What Ray Train (and Ray Tune on top of it) costs over a bare training loop doing the same work.

    python benchmarks/platform_overhead.py                    # smoke model, 48 and 96 steps (~6 min on 2 cores)
    python benchmarks/platform_overhead.py --steps 32 64 96   # more points for the line fit
    python benchmarks/platform_overhead.py --no-tune          # bare vs Ray Train only

The same fixed training work, the `smoke` preset's tiny model (its default n/T/layers unless --set says
otherwise) on its generated Sudoku set, with `--eval-every` 16 (an evaluation and a checkpoint per
report), is run four ways, once per step count:

  bare       trm.train.loop.Trainer(cfg, LocalSession(tmp)).fit() in this process, no Ray running
  bare+ray   the same, after the local Ray has started (idle beside it): the share of the Ray modes'
             per-step cost that is contention with Ray's own processes on a small machine
  ray_train  trm.launch.worker.make_trainer(WorkerRun(cfg), spec=WorkerSpec()).fit() on a local Ray
             (trm.launch.cluster.connect_ray): a Train V2 controller actor + one worker actor
  tune       trm.sweep.tune.run_sweep() with a one-point search space and one trial: Tune driver,
             Optuna searcher, ASHA, the overfitting stopper, the trial's TorchTrainer, MLflow tracking
             (parent + child run) to a SQLite file, and the MLflow end-of-trial callback

Timings: `wall` is from the call to its return. `first`/`last` are when the first/last report was made,
counted from the same start: bare from LocalSession's on_report hook, ray_train from a Ray Train
UserCallback on the controller (after the checkpoint is persisted), tune from the MLflow timestamps the
worker logs just before each ray.train.report. The steady per-step cost is (last - first) / (steps
between them), which includes the evaluations and checkpoints between reports (identical work in every
mode). Fixed cost = wall - steps * steady per-step. With two or more step counts a line
wall = startup + steps * per_step is also fitted per mode (least squares).

The Ray worker runs torch with 1 thread (make_trainer's WorkerRun.threads = cpus_per_worker = 1), so the
bare loop does too (--threads). Untimed (printed): one warm-up bare fit (the first Trainer in a process is
slower), starting Ray, one warm-up Ray Train fit (the first fit after ray.init is the cold one), creating
the MLflow SQLite schema and importing Optuna/Tune in this process. Everything is written under a temp
folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before Ray is imported: no token in the home folder

import ray  # noqa: E402
import ray.train  # noqa: E402

from trm.config import Config, apply_overrides, parse_set  # noqa: E402
from trm.sweep.presets import PRESETS  # noqa: E402
from common import scratch  # noqa: E402  (benchmarks/common.py)


MODES = ("bare", "bare+ray", "ray_train", "tune")


@dataclass
class Run:
    mode: str
    steps: int  # steps actually trained
    wall: float
    reports: list[tuple[int, float]] = field(default_factory=list)  # (step, seconds since start)

    @property
    def first(self) -> float:
        return self.reports[0][1] if self.reports else math.nan

    @property
    def last(self) -> float:
        return self.reports[-1][1] if self.reports else math.nan

    @property
    def steady(self) -> float:
        """Seconds per step between the first and the last report."""
        if len(self.reports) < 2:
            return math.nan
        (s0, t0), (s1, t1) = self.reports[0], self.reports[-1]
        return (t1 - t0) / (s1 - s0)

    @property
    def fixed(self) -> float:
        return self.wall - self.steps * self.steady


class ReportClock(ray.train.UserCallback):
    """On the Ray Train controller: appends (step, time) of every report to a file this script reads."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": metrics[0].get("step"), "time": time.time()}) + "\n")


# ---------------------------------------------------------------- the three ways
def make_config(data: Path, steps: int, eval_every: int, overrides: dict) -> Config:
    return apply_overrides(Config(), {**PRESETS["tiny"].overrides, **overrides, "data_path": str(data),
                                      "steps": steps, "eval_every": eval_every}).validate()


def run_bare(cfg: Config, out: Path, mode: str = "bare") -> Run:
    from trm.train.loop import Trainer
    from trm.train.session import LocalSession

    reports: list[tuple[int, float]] = []
    t0 = time.time()
    Trainer(cfg, LocalSession(out, on_report=lambda m, step: reports.append((step, time.time() - t0)))).fit()
    wall = time.time() - t0
    return Run(mode, reports[-1][0], wall, reports)


def run_ray_train(cfg: Config, storage: Path, name: str) -> Run:
    from trm.launch.cluster import WorkerSpec
    from trm.launch.worker import WorkerRun, make_trainer

    clock = storage / f"{name}.clock.jsonl"
    t0 = time.time()
    trainer = make_trainer(WorkerRun(cfg), name=name, storage=str(storage), spec=WorkerSpec())
    trainer.run_config.callbacks.append(ReportClock(str(clock)))
    result = trainer.fit()
    wall = time.time() - t0
    rows = [json.loads(x) for x in clock.read_text().splitlines()] if clock.exists() else []
    reports = [(r["step"], r["time"] - t0) for r in rows]
    return Run("ray_train", int((result.metrics or {}).get("step", reports[-1][0] if reports else 0)), wall, reports)


def run_tune(cfg: Config, storage: Path, uri: str, name: str, overrides: dict) -> Run:
    from mlflow.tracking import MlflowClient
    from ray import tune

    from trm.sweep.tune import SweepOptions, run_sweep

    opts = SweepOptions(name=name, preset="tiny", num_samples=1, max_concurrent=1, storage=str(storage),
                        tracking_uri=uri, seed=0,
                        overrides={**overrides, "data_path": cfg.data.path, "steps": cfg.train.steps,
                                   "eval_every": cfg.train.eval_every})
    space = {"n": tune.choice([cfg.model.n])}  # one point: the same config as the other modes
    # run_sweep logs artifacts (trials table, best checkpoint); keep them in the temp folder, not ./mlruns
    MlflowClient(uri).create_experiment(name, artifact_location=(storage.parent / "mlartifacts" / name).as_uri())
    t0 = time.time()
    rows = run_sweep(opts, space)
    wall = time.time() - t0
    row = rows[0]
    reports = []
    if row.run_id:
        history = MlflowClient(uri).get_metric_history(row.run_id, PRESETS["tiny"].overrides["objective"])
        reports = sorted((m.step, m.timestamp / 1000 - t0) for m in history)
    steps = int(row.last.get("step", reports[-1][0] if reports else 0))
    if row.reason != "completed":
        print(f"WARNING: the tune trial ended as {row.reason!r} at step {steps}", file=sys.stderr)
    return Run("tune", steps, wall, reports)


# ---------------------------------------------------------------- report
def fit_line(runs: list[Run]) -> tuple[float, float]:
    """Least squares wall = startup + steps * per_step."""
    xs, ys = [r.steps for r in runs], [r.wall for r in runs]
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return math.nan, math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def print_report(runs: list[Run], cfg: Config, info: dict) -> None:
    modes = [m for m in MODES if any(r.mode == m for r in runs)]
    bare = {r.steps: r for r in runs if r.mode == "bare"}
    print()
    print("=" * 100)
    m = cfg.model
    print(f"platform overhead: smoke model (hidden {m.hidden}, layers {m.layers}, n {m.n}, T {m.T}, N_sup {m.N_sup}, "
          f"batch {cfg.train.batch_size}), eval+checkpoint every {cfg.train.eval_every} steps, "
          f"torch threads {info['threads']}")
    print(f"untimed: warm-up bare fit ({info['warmup_steps']} steps) {info['bare_warmup']:.1f} s; ray.init "
          f"{info['ray_init']:.1f} s; warm-up Ray Train fit ({info['warmup_steps']} steps, cold) "
          f"{info['warmup']:.1f} s; "
          f"MLflow SQLite schema {info['mlflow_init']:.1f} s")
    print()
    print(f"{'mode':10s} {'steps':>5s} {'wall s':>8s} {'steps/s':>8s} {'x bare':>7s} {'first rep s':>11s} "
          f"{'last rep s':>10s} {'steady s/step':>13s} {'x bare':>7s} {'fixed s':>8s} {'- bare':>7s}")
    for r in sorted(runs, key=lambda r: (modes.index(r.mode), r.steps)):
        b = bare.get(r.steps)
        print(f"{r.mode:10s} {r.steps:5d} {r.wall:8.2f} {r.steps / r.wall:8.2f} "
              f"{ratio(r.wall, b.wall if b else math.nan):7.2f} {r.first:11.2f} {r.last:10.2f} "
              f"{r.steady:13.4f} {ratio(r.steady, b.steady if b else math.nan):7.2f} {r.fixed:8.2f} "
              f"{r.fixed - (b.fixed if b else math.nan):7.2f}")
    lines = {mode: fit_line([r for r in runs if r.mode == mode]) for mode in modes}
    if any(math.isfinite(v[1]) for v in lines.values()):
        print()
        print("line fit over step counts: wall = startup + steps * per_step (few points on a shared machine: a few s "
              "of noise per run moves the slope a lot; the per-run columns above are the steadier estimate)")
        print(f"{'mode':10s} {'startup s':>9s} {'- bare':>7s} {'per_step s':>10s} {'x bare':>7s}")
        b0, b1 = lines.get("bare", (math.nan, math.nan))
        for mode in modes:
            s0, s1 = lines[mode]
            print(f"{mode:10s} {s0:9.2f} {s0 - b0:7.2f} {s1:10.4f} {ratio(s1, b1):7.2f}")
    print("=" * 100)
    longest = max(r.steps for r in runs)
    at = {r.mode: r for r in runs if r.steps == longest}
    parts = [f"{longest} steps: bare {at['bare'].wall:.1f} s"] if "bare" in at else [f"{longest} steps:"]
    for mode in MODES[1:]:
        if mode in at:
            r, b = at[mode], at.get("bare")
            parts.append(f"{mode} {r.wall:.1f} s (x{ratio(r.wall, b.wall if b else math.nan):.2f} wall, "
                         f"+{r.fixed - (b.fixed if b else math.nan):.1f} s fixed, "
                         f"x{ratio(r.steady, b.steady if b else math.nan):.2f} steady per-step)")
    print("SUMMARY: " + "; ".join(parts))
    sys.stdout.flush()


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[48, 96],
                   help="step counts to run each mode at (two or more: line fit); with --eval-every 16 at most "
                        "96, since the smoke preset's ASHA max_t is 6 reports")
    p.add_argument("--eval-every", type=int, default=16, help="steps between reports (evaluation + checkpoint)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the bare loop (Ray worker: 1)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--no-tune", action="store_true", help="skip the Ray Tune runs")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up fits (bare and Ray Train)")
    p.add_argument("--no-bare-with-ray", action="store_true",
                   help="skip the bare loop run again while the local Ray is up (separates contention with Ray's "
                        "own processes from the cost inside the worker)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the smoke config (e.g. n=2)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (printed)")
    a = p.parse_args(argv)
    evals = PRESETS["tiny"].evals
    if not a.no_tune and max(a.steps) > evals * a.eval_every:
        p.error(f"--steps {max(a.steps)}: the tune mode stops at {evals} reports (the smoke preset's ASHA max_t); "
                f"expected <= {evals * a.eval_every} with --eval-every {a.eval_every}")
    if any(s < 2 * a.eval_every or s % a.eval_every for s in a.steps):
        p.error("--steps: expected multiples of --eval-every with at least two reports each")

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from trm.data.build import ensure_dataset

    overrides = parse_set(a.set)
    runs: list[Run] = []
    info = {"threads": a.threads, "ray_init": math.nan, "warmup": math.nan, "warmup_steps": a.eval_every,
            "mlflow_init": math.nan, "bare_warmup": math.nan}
    with scratch("trm-overhead-", a.keep) as tmp:
        data = tmp / "data" / "sudoku-tiny"
        base = make_config(data, a.steps[0], a.eval_every, overrides)
        ensure_dataset(base.data)
        torch.set_num_threads(a.threads)
        if not a.no_warmup:  # first Trainer in this process: lazy torch initialisation
            t0 = time.time()
            run_bare(make_config(data, a.eval_every, a.eval_every, overrides), tmp / "bare-warmup")
            info["bare_warmup"] = time.time() - t0

        for steps in a.steps:  # (a) bare, before Ray exists on this process
            runs.append(run_bare(make_config(data, steps, a.eval_every, overrides), tmp / f"bare-{steps}"))
            print(f"bare {steps} steps: {runs[-1].wall:.2f} s", flush=True)

        from trm.launch.cluster import connect_ray

        if ray.is_initialized():
            raise SystemExit("Ray is already initialized in this process")
        os.environ.pop("RAY_ADDRESS", None)  # a new local Ray, not someone else's cluster
        t0 = time.time()
        connect_ray(None, num_cpus=a.num_cpus)
        info["ray_init"] = time.time() - t0

        if not a.no_bare_with_ray:  # the same bare loop while the (idle) local Ray runs beside it
            for steps in a.steps:
                runs.append(run_bare(make_config(data, steps, a.eval_every, overrides), tmp / f"bare+ray-{steps}",
                                     "bare+ray"))
                print(f"bare+ray {steps} steps: {runs[-1].wall:.2f} s", flush=True)

        storage = tmp / "ray"
        storage.mkdir()
        if not a.no_warmup:
            t0 = time.time()
            run_ray_train(make_config(data, a.eval_every, a.eval_every, overrides), storage, "warmup")
            info["warmup"] = time.time() - t0
            print(f"warm-up Ray Train fit: {info['warmup']:.2f} s", flush=True)
        for steps in a.steps:  # (b) Ray Train
            runs.append(run_ray_train(make_config(data, steps, a.eval_every, overrides), storage, f"rt-{steps}"))
            print(f"ray_train {steps} steps: {runs[-1].wall:.2f} s", flush=True)

        if not a.no_tune:  # (c) Ray Tune + Ray Train
            import optuna  # noqa: F401 - imported untimed, as a long-lived sweep driver would have them
            from mlflow.tracking import MlflowClient
            from ray.tune.search.optuna import OptunaSearch  # noqa: F401

            uri = f"sqlite:///{tmp / 'mlflow.db'}"
            t0 = time.time()
            MlflowClient(uri).search_experiments()  # creates the schema once, outside the timed runs
            info["mlflow_init"] = time.time() - t0
            for steps in a.steps:
                runs.append(run_tune(make_config(data, steps, a.eval_every, overrides), tmp / "tune", uri,
                                     f"tune-{steps}", overrides))
                print(f"tune {steps} steps: {runs[-1].wall:.2f} s", flush=True)
        print_report(runs, base, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
