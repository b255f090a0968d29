"""A sweep: Ray Tune with Optuna's TPE and ASHA, one TorchTrainer per trial, tracked in MLflow.

Pattern (Ray 2.60, Train V2): the trainable is a function (`_trial`) that
builds a `TorchTrainer` (`trm.launch.worker.make_trainer`) with
`TuneReportCallback`, so every report of the training workers reaches Tune's
scheduler and searcher. The trial function only asks for a sliver of the
custom TRAIN_DRIVER resource; the workers take the CPUs/GPUs. It is handed one
typed `TrialSetup`. MLflow (`trm.tracking.runs`): a parent run per sweep, a
child run per trial (a restarted trial reuses it), metrics logged by rank 0 of
the trial's workers, end reason and best checkpoint recorded by a Tune callback
on the driver.
"""
from __future__ import annotations

import copy
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray import tune

from trm.config import FIELD_OWNER, Config, ConfigError, apply_overrides
from trm.launch.cluster import WorkerSpec
from trm.sweep.presets import PRESETS, Preset
from trm.sweep.stopping import OverfitStopper, RecordingASHA, end_reason
from trm.tracking import Tracker, runs

log = logging.getLogger(__name__)


@dataclass
class SweepOptions:
    name: str  # experiment name, also the folder under storage
    preset: str = "smoke"
    num_samples: int | None = None
    max_concurrent: int | None = None
    workers_per_trial: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    storage: str = "runs/sweeps"
    tracking_uri: str | None = None
    address: str | None = None
    resume: bool = False
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # --set on top of the preset

    @property
    def spec(self) -> WorkerSpec:
        return WorkerSpec(self.workers_per_trial, self.gpus_per_worker, self.cpus_per_worker)


@dataclass
class TrialSetup:
    """What every trial of a sweep is handed, besides the values the searcher proposes."""
    base: Config  # the preset with --set on top; each trial applies its proposed values to a copy
    tracking_uri: str
    parent_run_id: str
    trial_storage: str  # each trial's TorchTrainer runs under TRIAL_STORAGE/TRIAL_ID
    spec: WorkerSpec
    metric: str

    def config(self, proposed: dict[str, Any]) -> Config:
        return with_values(self.base, proposed)


def with_values(base: Config, values: dict[str, Any]) -> Config:
    """A validated copy of `base` with `values` (config field -> value) applied."""
    return apply_overrides(copy.deepcopy(base), values).validate()


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    best: float
    last: dict[str, Any]
    reason: str
    run_id: str | None
    effective_depth: int


# ---------------------------------------------------------------- validation
def base_config(opts: SweepOptions) -> tuple[Config, Preset]:
    if opts.preset not in PRESETS:
        raise ConfigError(f"--preset {opts.preset!r}: expected one of {sorted(PRESETS)}")
    preset = PRESETS[opts.preset]
    cfg = apply_overrides(Config(), {**preset.overrides, **opts.overrides})
    # Ray workers run in their own folders: a relative data path must mean the driver's
    if "://" not in cfg.data.path:
        cfg.data.path = str(Path(cfg.data.path).resolve())
    return cfg.validate(), preset


def validate_space(space: dict[str, Any], base: Config) -> None:
    """Every key a config field, every value it can take valid, before any trial starts."""
    if not space:
        raise ConfigError("search space is empty: give at least one field to sweep")
    for key, domain in space.items():
        if key not in FIELD_OWNER:
            raise ConfigError(f"search space key {key!r}: not a config field; expected one of "
                              f"{', '.join(sorted(FIELD_OWNER))}")
        if hasattr(domain, "categories"):
            values = list(domain.categories)
            if not values:
                raise ConfigError(f"search space key {key!r}: tune.choice([]) is empty")
        elif hasattr(domain, "lower") and hasattr(domain, "upper"):
            if not domain.lower < domain.upper:
                raise ConfigError(f"search space key {key!r}: expected lower < upper, got "
                                  f"[{domain.lower}, {domain.upper}]")
            values = [domain.lower, domain.upper]
        else:
            values = [domain]
        for v in values:
            try:
                with_values(base, {key: v})
            except ConfigError as e:
                raise ConfigError(f"search space key {key!r} value {v!r}: {e}") from None


# ---------------------------------------------------------------- one trial
def _trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: a TorchTrainer over the config the searcher proposed."""
    from trm.launch.worker import WorkerRun, make_trainer

    ctx = tune.get_context()
    cfg = setup.config(config)
    tracker = runs.trial_run(setup.tracking_uri, setup.parent_run_id, ctx.get_trial_id(), ctx.get_trial_name())
    tracker.log_config(cfg)
    trainer = make_trainer(WorkerRun(cfg, setup.tracking_uri, tracker.run_id), name=ctx.get_trial_id(),
                           storage=setup.trial_storage, spec=setup.spec, metric=setup.metric, in_tune=True)
    trainer.fit()


class MlflowTrialCallback(tune.Callback):
    """Driver side: remembers each trial's best checkpoint, and when the trial ends tags its
    child run with the end reason and logs that checkpoint (or its S3 URI)."""

    def __init__(self, uri: str, parent_run_id: str, metric: str, stopper: OverfitStopper,
                 scheduler: RecordingASHA):
        self.uri, self.parent_run_id, self.metric = uri, parent_run_id, metric
        self.stopper, self.scheduler = stopper, scheduler
        self.best: dict[str, tuple[float, str | None]] = {}
        self.reasons: dict[str, str] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value, path = result.get(self.metric), result.get("checkpoint_path")
        if value is None or path is None or not math.isfinite(value):
            return
        if value >= self.best.get(trial.trial_id, (-math.inf, None))[0]:
            self.best[trial.trial_id] = (value, path)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, errored=True)

    def _finish(self, trial, errored: bool) -> None:
        reason = end_reason(trial.trial_id, self.stopper, self.scheduler, errored)
        self.reasons[trial.trial_id] = reason
        try:
            runs.end_trial_run(self.uri, self.parent_run_id, trial.trial_id, str(trial), reason=reason,
                               errored=errored, metric=self.metric, best=self.best.get(trial.trial_id))
        except Exception:  # noqa: BLE001 - tracking must never take the sweep down
            log.exception("could not record the end of trial %s in MLflow", trial.trial_id)


# ---------------------------------------------------------------- the sweep
def _default_concurrency(opts: SweepOptions) -> int:
    """Trials at once: as many as the cluster's CPUs and GPUs hold now."""
    from trm.launch.cluster import cluster_capacity, is_remote

    cap, spec = cluster_capacity(), opts.spec
    n = int(cap.get("CPU", 1) // max(spec.cpus, 1e-9))
    if spec.gpus > 0:
        n = min(n, int(cap.get("GPU", 0) // spec.gpus))
    if n >= 1:
        return n
    need = spec.describe("--workers-per-trial")
    if is_remote(opts.address):
        # an autoscaling cluster starts with no GPU workers: trials wait in PENDING while it adds
        # nodes, and Ray Train retries its worker-group start until they come
        log.warning("%s does not fit the cluster's current %s; trials will wait for the autoscaler", need, cap)
        return opts.num_samples or PRESETS[opts.preset].num_samples
    raise ConfigError(f"{need} does not fit this machine's {cap}")


def run_sweep(opts: SweepOptions, space: dict[str, Any],
              report: Callable[[list[TrialRow], Tracker], None] | None = None) -> list[TrialRow]:
    """Validate everything, start (or resume) the sweep, return one row per trial."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from trm.launch.cluster import DRIVER_RESOURCE, preflight
    from trm.storage import join, resolve

    base, preset = base_config(opts)
    validate_space(space, base)
    storage = resolve(opts.storage)
    uri = preflight(base, storage=storage, tracking_uri=opts.tracking_uri, address=opts.address, spec=opts.spec,
                    what=f"one trial ({opts.spec.describe('--workers-per-trial')})")
    sweep_path = join(storage, opts.name)
    num_samples = opts.num_samples or preset.num_samples
    max_concurrent = opts.max_concurrent or _default_concurrency(opts)
    parent = runs.sweep_run(uri, opts.name, sweep_path, opts.resume, {
        "preset": opts.preset, "num_samples": num_samples, "max_concurrent": max_concurrent,
        "workers_per_trial": opts.workers_per_trial, "metric": preset.metric,
        "search_space": ", ".join(f"{k}={v}" for k, v in space.items())[:6000]})
    log.info("sweep %s: MLflow parent run %s at %s; storage %s", opts.name, parent.run_id, uri, sweep_path)

    stopper = OverfitStopper(metric=preset.metric, train_metric=preset.metric.replace("val/", "train/"),
                             margin=preset.overfit_margin, patience=preset.overfit_patience)
    # ASHA counts training steps, not reports: a run also reports at unscheduled checkpoints
    # (wall-time, spot notice), which must not move a trial through the rungs faster
    scheduler = RecordingASHA(time_attr="step", metric=preset.metric, mode="max",
                              max_t=base.train.steps,
                              grace_period=min(preset.grace * base.train.eval_every, base.train.steps),
                              reduction_factor=preset.reduction_factor)
    callback = MlflowTrialCallback(uri, parent.run_id, preset.metric, stopper, scheduler)
    setup = TrialSetup(base, uri, parent.run_id, f"{sweep_path}-trials", opts.spec, preset.metric)
    trainable = tune.with_resources(tune.with_parameters(_trial, setup=setup), {"cpu": 0, DRIVER_RESOURCE: 0.01})

    if opts.resume and tune.Tuner.can_restore(sweep_path):
        log.info("resuming sweep from %s", sweep_path)
        tuner = tune.Tuner.restore(sweep_path, trainable, resume_errored=True, param_space=space)
    else:
        searcher = OptunaSearch(metric=preset.metric, mode="max",
                                sampler=optuna.samplers.TPESampler(seed=opts.seed))
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name=opts.name, storage_path=storage, stop=stopper, callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=1), verbose=1))
    grid = tuner.fit()

    rows = _rows(grid, preset.metric, base, callback, runs.trial_run_ids(parent))
    best = max((r.best for r in rows if math.isfinite(r.best)), default=float("nan"))
    runs.record_sweep(parent, preset.metric, best,
                      {k: [getattr(r, k) if k != "params" else str(r.params) for r in rows]
                       for k in ("trial_id", "params", "best", "reason", "run_id", "effective_depth")})
    if report is not None:
        report(rows, parent)
    parent.end()
    _print_rows(rows, preset.metric)
    return rows


def _rows(grid, metric: str, base: Config, callback: MlflowTrialCallback, run_ids: dict[str, str]) -> list[TrialRow]:
    rows = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[-1]
        df = result.metrics_dataframe
        best = float(df[metric].max()) if df is not None and metric in df else float("nan")
        cfg = apply_overrides(copy.deepcopy(base), dict(result.config or {}))
        reason = callback.reasons.get(trial_id, "error" if result.error else "completed")
        rows.append(TrialRow(trial_id, dict(result.config or {}), best, dict(result.metrics or {}), reason,
                             run_ids.get(trial_id), cfg.effective_depth))
    return rows


def _print_rows(rows: list[TrialRow], metric: str) -> None:
    keys = sorted({k for r in rows for k in r.params})
    header = f"{'trial':10s} " + " ".join(f"{k:>9s}" for k in keys) + f" {'depth':>6s} {metric:>20s}  end"
    print(header)
    for r in sorted(rows, key=lambda r: -r.best if math.isfinite(r.best) else math.inf):
        print(f"{r.trial_id:10s} " + " ".join(f"{str(r.params.get(k)):>9s}" for k in keys)
              + f" {r.effective_depth:6d} {r.best:20.4f}  {r.reason}")
    sys.stdout.flush()
