"""A sweep: Ray Tune with Optuna's TPE and ASHA, one TorchTrainer per trial, tracked in MLflow.

Pattern (Ray 2.60, Train V2): the trainable is a function (`_trial`) that
builds a `TorchTrainer` with `TuneReportCallback`, so every report of the
training workers reaches Tune's scheduler and searcher. The trial function
only asks for a sliver of the custom TRAIN_DRIVER resource; the workers take
the CPUs/GPUs. MLflow: a parent run per sweep, a child run per trial (found by
its `ray_trial_id` tag, so a restarted trial reuses it), metrics logged by
rank 0 of the trial's workers, end reason and best checkpoint set by a Tune
callback on the driver.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray import tune

from trm.config import FIELD_OWNER, Config, ConfigError, apply_overrides, config_from_dict
from trm.sweep.presets import PRESETS, Preset
from trm.sweep.stopping import OverfitStopper, RecordingASHA, end_reason
from trm.tracking import TAG_BEST_CKPT, TAG_END_REASON, TAG_TRIAL_ID, Tracker, run_params

log = logging.getLogger(__name__)
TAG_SWEEP = "trm.sweep_path"


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
                apply_overrides(config_from_dict(base.to_dict()), {key: v}).validate()
            except ConfigError as e:
                raise ConfigError(f"search space key {key!r} value {v!r}: {e}") from None


# ---------------------------------------------------------------- MLflow
def child_tracker(uri: str, parent_run_id: str, trial_id: str, trial_name: str) -> Tracker:
    """The trial's child run: found by its ray_trial_id tag (a restarted trial), else created."""
    parent = Tracker(uri, parent_run_id)
    exp_id = parent.client.get_run(parent_run_id).info.experiment_id
    found = parent.client.search_runs(
        [exp_id], filter_string=f"tags.{TAG_TRIAL_ID} = '{trial_id}' and tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=1)
    if found:
        return Tracker(uri, found[0].info.run_id)
    name = parent.client.get_experiment(exp_id).name
    return Tracker.create(uri, name, run_name=trial_name, parent_run_id=parent_run_id, tags={TAG_TRIAL_ID: trial_id})


def _trial(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial: a TorchTrainer over the config the searcher proposed."""
    from trm.sweep.trainer import make_trainer

    ctx = tune.get_context()
    cfg = apply_overrides(config_from_dict(setup["base"]), config).validate()
    tracker = child_tracker(setup["tracking_uri"], setup["parent_run_id"], ctx.get_trial_id(), ctx.get_trial_name())
    tracker.log_params(run_params(cfg.flat(), cfg.effective_depth))
    trainer = make_trainer(
        cfg, name=ctx.get_trial_id(), storage=setup["trial_storage"], num_workers=setup["workers"],
        gpus_per_worker=setup["gpus_per_worker"], cpus_per_worker=setup["cpus_per_worker"],
        tracking_uri=setup["tracking_uri"], mlflow_run_id=tracker.run_id, metric=setup["metric"], in_tune=True)
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
            tracker = child_tracker(self.uri, self.parent_run_id, trial.trial_id, str(trial))
            tags = {TAG_END_REASON: reason}
            best = self.best.get(trial.trial_id)
            if best is not None:
                tags[TAG_BEST_CKPT] = best[1]
                tags["best_" + self.metric.replace("/", "_")] = best[0]
                if "://" not in best[1] and Path(best[1]).is_dir():
                    tracker.log_artifact(best[1], "best_checkpoint")
            tracker.set_tags(tags)
            tracker.end("FAILED" if errored else "FINISHED")
        except Exception:  # noqa: BLE001 - tracking must never take the sweep down
            log.exception("could not record the end of trial %s in MLflow", trial.trial_id)


# ---------------------------------------------------------------- the sweep
def _default_concurrency(opts: SweepOptions) -> int:
    from trm.sweep.cluster import cluster_capacity, is_remote

    cap = cluster_capacity()
    per_trial_cpu = opts.workers_per_trial * opts.cpus_per_worker
    n = int(cap.get("CPU", 1) // max(per_trial_cpu, 1e-9))
    if opts.gpus_per_worker > 0:
        n = min(n, int(cap.get("GPU", 0) // (opts.workers_per_trial * opts.gpus_per_worker)))
    if n >= 1:
        return n
    need = (f"--workers-per-trial {opts.workers_per_trial} x (cpus {opts.cpus_per_worker}, gpus "
            f"{opts.gpus_per_worker})")
    if is_remote(opts.address):
        # an autoscaling cluster starts with no GPU workers: trials wait in PENDING while it adds
        # nodes, and Ray Train retries its worker-group start until they come
        log.warning("%s does not fit the cluster's current %s; trials will wait for the autoscaler", need, cap)
        return opts.num_samples or PRESETS[opts.preset].num_samples
    raise ConfigError(f"{need} does not fit this machine's {cap}")


def _storage(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


def _parent_run(uri: str, experiment: str, sweep_path: str, resume: bool, params: dict) -> Tracker:
    if resume:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{sweep_path}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
            if found:
                client.update_run(found[0].info.run_id, status="RUNNING")
                return Tracker(uri, found[0].info.run_id)
    parent = Tracker.create(uri, experiment, run_name=f"{experiment}-sweep", tags={TAG_SWEEP: sweep_path})
    parent.log_params(params)
    return parent


def run_sweep(opts: SweepOptions, space: dict[str, Any],
              report: Callable[[list[TrialRow], Tracker], None] | None = None) -> list[TrialRow]:
    """Validate everything, start (or resume) the sweep, return one row per trial."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from trm.storage import check_storage
    from trm.data.build import stage_dataset
    from trm.sweep.cluster import DRIVER_RESOURCE, check_fits, check_shared, connect_ray
    from trm.tracking import check_reachable, resolve_uri

    base, preset = base_config(opts)
    validate_space(space, base)
    storage = _storage(opts.storage)
    check_storage(storage)
    uri = resolve_uri(opts.tracking_uri)
    check_reachable(uri)
    connect_ray(opts.address)
    check_shared(uri, storage, opts.address)
    check_fits(f"one trial (--workers-per-trial {opts.workers_per_trial} x (--cpus-per-worker "
               f"{opts.cpus_per_worker:g}, --gpus-per-worker {opts.gpus_per_worker:g}))",
               opts.workers_per_trial * opts.cpus_per_worker, opts.workers_per_trial * opts.gpus_per_worker,
               opts.address)
    base.data.path = stage_dataset(base.data, storage)  # built here once; uploaded once with s3:// storage
    sweep_path = f"{storage.rstrip('/')}/{opts.name}"
    num_samples = opts.num_samples or preset.num_samples
    max_concurrent = opts.max_concurrent or _default_concurrency(opts)
    parent = _parent_run(uri, opts.name, sweep_path, opts.resume, {
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
    setup = {"base": base.to_dict(), "tracking_uri": uri, "parent_run_id": parent.run_id,
             "trial_storage": f"{sweep_path}-trials", "workers": opts.workers_per_trial,
             "gpus_per_worker": opts.gpus_per_worker, "cpus_per_worker": opts.cpus_per_worker,
             "metric": preset.metric}
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

    rows = _rows(grid, preset.metric, base, callback, parent)
    best = max((r.best for r in rows if math.isfinite(r.best)), default=float("nan"))
    parent.log_metrics({f"best_{preset.metric.replace('/', '_')}": best}, step=0, once_per_step=False)  # a resumed sweep updates it
    parent.log_table({k: [getattr(r, k) if k != "params" else str(r.params) for r in rows]
                      for k in ("trial_id", "params", "best", "reason", "run_id", "effective_depth")},
                     "trials.json")
    if report is not None:
        report(rows, parent)
    parent.end()
    _print_rows(rows, preset.metric)
    return rows


def _rows(grid, metric: str, base: Config, callback: MlflowTrialCallback, parent: Tracker) -> list[TrialRow]:
    runs = {r.data.tags.get(TAG_TRIAL_ID): r.info.run_id for r in parent.client.search_runs(
        [parent.client.get_run(parent.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")}
    rows = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[-1]
        df = result.metrics_dataframe
        best = float(df[metric].max()) if df is not None and metric in df else float("nan")
        cfg = apply_overrides(config_from_dict(base.to_dict()), dict(result.config or {}))
        reason = callback.reasons.get(trial_id, "error" if result.error else "completed")
        rows.append(TrialRow(trial_id, dict(result.config or {}), best, dict(result.metrics or {}), reason,
                             runs.get(trial_id), cfg.effective_depth))
    return rows


def _print_rows(rows: list[TrialRow], metric: str) -> None:
    keys = sorted({k for r in rows for k in r.params})
    header = f"{'trial':10s} " + " ".join(f"{k:>9s}" for k in keys) + f" {'depth':>6s} {metric:>20s}  end"
    print(header)
    for r in sorted(rows, key=lambda r: -r.best if math.isfinite(r.best) else math.inf):
        print(f"{r.trial_id:10s} " + " ".join(f"{str(r.params.get(k)):>9s}" for k in keys)
              + f" {r.effective_depth:6d} {r.best:20.4f}  {r.reason}")
    sys.stdout.flush()
