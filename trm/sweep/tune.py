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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ray import tune
from ray.tune.search.optuna import OptunaSearch as OptunaSearchBase

from trm.cli_common import WORKER_WAIT_MINUTES
from trm.config import FIELD_OWNER, Config, ConfigError, apply_overrides, refuse_replaced
from trm.errors import TrmError
from trm.evaluate.objective import Objective, objective_for
from trm.launch.cluster import WorkerSpec, is_remote
from trm.sweep.console import SweepConsole, quiet_loggers, tune_verbosity
from trm.sweep.presets import PRESETS, Preset
from trm.sweep.stopping import OverfitStopper, RecordingASHA, end_reason
from trm.tracking import TAG_BEST_CKPT, Tracker, checkpoint_path, runs

log = logging.getLogger(__name__)


class Expander(Protocol):
    """Search-space keys that stand for several config fields (a paper table's `row`: trm.sweep.paper): the
    `keys` it takes, and the config fields a trial's proposed values mean on the sweep's base config.
    Pickled into every trial: a module-level object."""

    keys: frozenset[str]

    def __call__(self, values: dict[str, Any], base: Config) -> dict[str, Any]: ...


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
    seeds: int = 1  # repeat each configuration with training seeds 0..seeds-1
    optuna_storage: str | None = None  # Optuna RDB URL (default: optuna.db beside a SQLite MLflow DB)
    multi_objective: bool = False  # Optuna: maximise the metric and minimise each trial's device-hours
    verbose: bool = False  # Ray's per-report and checkpoint logs
    prices: dict | None = None  # price table for trials' dollars (--prices, trm.cost.load_price_table); None: defaults
    expander: Expander | None = None  # search-space keys beyond the config's fields (e.g. a table's rows)
    early_stopping: bool = True  # False: no ASHA, no overfitting stop (a table compares whole budgets)

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
    objective: Objective  # the sweep's: Ray keeps each trial's best checkpoints by it too
    verbose: bool = False
    expander: Expander | None = None
    # how long a trial waits for its workers: on a cluster that autoscales, queued trials wait for nodes
    worker_wait_minutes: float = WORKER_WAIT_MINUTES

    def config(self, proposed: dict[str, Any]) -> Config:
        return with_values(self.base, proposed, self.expander)


def with_values(base: Config, values: dict[str, Any], expander: Expander | None = None) -> Config:
    """A validated copy of `base` with `values` (config field -> value, or an `expander`'s keys) applied."""
    return _applied(base, values, expander).validate()


def _applied(base: Config, values: dict[str, Any], expander: Expander | None) -> Config:
    return apply_overrides(copy.deepcopy(base), expander(values, base) if expander is not None else values)


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    best: float
    last: dict[str, Any]
    reason: str
    run_id: str | None
    effective_depth: int
    history: dict[int, float] = field(default_factory=dict)  # step -> metric at each evaluation
    hours: float = 0.0  # device-hours (GPU-hours, or CPU-hours on CPUs)

    @property
    def label(self) -> str:
        return trial_label(self.params)

    @property
    def steps(self) -> int:
        return max(self.history, default=0)


# ---------------------------------------------------------------- names
_DEPTH_KEYS = (("layers", "L"), ("n", "n"), ("T", "T"))


def trial_label(params: dict[str, Any], with_seed: bool = True) -> str:
    """A trial's name from its proposed values: layers=2 n=3 T=2 -> L2-n3-T2; others key=value."""
    parts = [f"{short}{params[k]}" for k, short in _DEPTH_KEYS if k in params]
    for k, v in sorted(params.items()):
        if k in ("layers", "n", "T", "seed"):
            continue
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    if with_seed and "seed" in params:
        parts.append(f"s{params['seed']}")
    return "-".join(parts) or "trial"


def describe_space(space: dict[str, Any]) -> str:
    """The search space as a reader writes it: layers in [1, 2]; lr ~ loguniform(0.0001, 0.01)."""
    out = []
    for k, d in space.items():
        if hasattr(d, "categories"):
            out.append(f"{k} in {list(d.categories)}")
        elif hasattr(d, "lower") and hasattr(d, "upper"):
            kind = "loguniform" if "Log" in type(d.get_sampler()).__name__ else "uniform"
            out.append(f"{k} ~ {kind}({d.lower:g}, {d.upper:g})")
        else:
            out.append(f"{k} = {d}")
    return "; ".join(out)


def discrete_size(space: dict[str, Any]) -> int | None:
    """Configurations in a space of choices only (None when a range is in it)."""
    if not all(hasattr(d, "categories") for d in space.values()):
        return None
    return math.prod(len(d.categories) for d in space.values())


def optuna_storage_url(given: str | None, tracking_uri: str) -> str:
    """--optuna-storage, else optuna.db beside a SQLite MLflow DB, else ./optuna.db."""
    if given:
        return given
    if tracking_uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(tracking_uri[len("sqlite:///") :]).with_name("optuna.db"))
    return "sqlite:///" + str(Path("optuna.db").resolve())


# ---------------------------------------------------------------- validation
def base_config(opts: SweepOptions) -> tuple[Config, Preset]:
    if opts.preset not in PRESETS:
        raise ConfigError(f"--preset {opts.preset!r}: expected one of {sorted(PRESETS)}")
    preset = PRESETS[opts.preset]
    cfg = apply_overrides(Config(), {**preset.overrides, **opts.overrides})
    refuse_replaced(cfg, preset.overrides, opts.overrides, f"--preset {opts.preset}")  # steps under epochs
    # Ray workers run in their own folders: a relative data path must mean the driver's
    if "://" not in cfg.data.path:
        cfg.data.path = str(Path(cfg.data.path).resolve())
    return cfg.validate(), preset


def validate_space(space: dict[str, Any], base: Config, expander: Expander | None = None) -> None:
    """Every key a config field (or an `expander`'s), every value it can take valid, before any trial starts."""
    if not space:
        raise ConfigError("search space is empty: give at least one field to sweep")
    known = set(FIELD_OWNER) | (set(expander.keys) if expander is not None else set())
    for key, domain in space.items():
        if key not in known:
            raise ConfigError(
                f"search space key {key!r}: not a config field; expected one of {', '.join(sorted(known))}"
            )
        if hasattr(domain, "categories"):
            values = list(domain.categories)
            if not values:
                raise ConfigError(f"search space key {key!r}: tune.choice([]) is empty")
        elif hasattr(domain, "lower") and hasattr(domain, "upper"):
            if not domain.lower < domain.upper:
                raise ConfigError(
                    f"search space key {key!r}: expected lower < upper, got [{domain.lower}, {domain.upper}]"
                )
            values = [domain.lower, domain.upper]
        else:
            values = [domain]
        for v in values:
            try:
                with_values(base, {key: v}, expander)
            except ConfigError as e:
                raise ConfigError(f"search space key {key!r} value {v!r}: {e}") from None


def _own_end_reason(trial) -> str | None:
    """The end reason of the TrmError a trial raised. Tune pickles it (unwrapped from Ray's task error
    where it can) into the trial's local folder before calling the callbacks: read there, since the copy
    in storage is synced later."""
    import cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # noqa: BLE001 - no readable error: just "error"
        return None
    cause = getattr(error, "cause", None) or error
    reason = getattr(cause, "end_reason", None)
    return reason if isinstance(cause, TrmError) and isinstance(reason, str) else None


# ---------------------------------------------------------------- one trial
def _trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: a TorchTrainer over the config the searcher proposed."""
    from ray.train import TrainingFailedError

    from trm.launch.attempts import Stalled
    from trm.launch.single import stop_of_launch, workers_unavailable
    from trm.launch.worker import WorkerRun, make_trainer
    from trm.storage import join

    if not setup.verbose:
        quiet_loggers()
    ctx = tune.get_context()
    cfg = setup.config(config)
    tracker = runs.trial_run(setup.tracking_uri, setup.parent_run_id, ctx.get_trial_id(), trial_label(config))
    tracker.log_config(cfg)
    try:
        runs.log_dataset(tracker, cfg.data.path, Path(cfg.data.path).name, asdict(cfg.data), "train")
    except Exception:  # noqa: BLE001 - a dataset record must never take the trial down
        log.warning("could not log the dataset of trial %s", ctx.get_trial_id(), exc_info=True)
    trainer = make_trainer(
        WorkerRun(cfg, setup.tracking_uri, tracker.run_id, quiet=not setup.verbose),
        name=ctx.get_trial_id(),
        storage=setup.trial_storage,
        spec=setup.spec,
        metric=setup.objective.name,
        in_tune=True,
        worker_wait_minutes=setup.worker_wait_minutes,
    )
    try:
        trainer.fit()
    except TrainingFailedError as e:  # the trial errors; one that never got its workers says which it lacked
        if (unavailable := workers_unavailable(trainer, e)) is not None:
            raise unavailable from e
        raise
    stop = stop_of_launch(trainer, join(setup.trial_storage, ctx.get_trial_id()))
    if stop.get("reason") == "stalled":  # the trial errors, saying why (a divergence was reported as such)
        raise Stalled(stop.get("message", "stalled"))


class UniqueOptunaSearch(OptunaSearchBase):
    """Optuna (TPE) that never proposes a configuration twice, and with `seeds` > 1 runs each new
    configuration with training seeds 0..seeds-1 (Optuna learns from seed 0; the others are
    repeats that the report averages). A duplicate proposal is told to Optuna as failed (through the
    Searcher's own on_trial_complete, under a stand-in trial id) and asked again; when every
    configuration of a discrete space has run, the search is finished.

    A resumed sweep keeps its memory. Ray restores this searcher from the pickle it saved with its last
    experiment state (every ~10 s), so a trial proposed after that save, whose driver was then lost, is in
    the RDB study but not in the pickle. Whenever the study is opened or the pickle restored,
    `remember_study` reads back every trial of the study: its configuration counts as seen, and a
    trial Tune resumes finds its Optuna trial again (each is tagged with its Tune trial id when asked)."""

    def __init__(self, *args, seeds: int = 1, size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seeds, self.size = seeds, size
        self._seen: set[tuple] = set()
        self._queue: list[dict] = []
        self._repeats: set[str] = set()
        self._asked_as: dict[str, str] = {}  # trial id -> the stand-in id Optuna's trial was asked under

    def suggest(self, trial_id: str):
        from ray.tune.search import Searcher

        if self._queue:
            self._repeats.add(trial_id)
            return self._queue.pop(0)
        if self.size is not None and len(self._seen) >= self.size:
            return Searcher.FINISHED
        for attempt in range(500):
            asked_as = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            config = super().suggest(asked_as)
            if not isinstance(config, dict):
                return config
            key = config_key(config)
            if key not in self._seen:
                break
            super().on_trial_complete(asked_as, None, error=True)  # Optuna: FAIL, so TPE moves on
        else:
            return Searcher.FINISHED
        if asked_as != trial_id:
            self._asked_as[trial_id] = asked_as
        self._ot_trials[asked_as].set_user_attr(OPTUNA_TRIAL_ID_ATTR, trial_id)  # in the RDB: survives the driver
        self._seen.add(key)
        if self.seeds > 1:
            self._queue += [{**config, "seed": s} for s in range(1, self.seeds)]
            config = {**config, "seed": 0}
        return config

    def _setup_study(self, mode: str | list) -> None:
        super()._setup_study(mode)
        self.remember_study()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.remember_study()

    def remember_study(self) -> None:
        """Every configuration the study holds (complete, pruned, running, or failed under a Tune trial id:
        each was trained, at least in part) is seen; a running trial proposed under a Tune trial id that this
        searcher does not know gets its Optuna trial back, so that Tune can resume it and tell it."""
        import optuna

        if self._ot_study is None:
            return
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False):
            tune_id = t.user_attrs.get(OPTUNA_TRIAL_ID_ATTR)
            if t.state in states or (tune_id and t.state == optuna.trial.TrialState.FAIL):
                self._seen.add(config_key(t.params))
            if tune_id and t.state == optuna.trial.TrialState.RUNNING and t.number not in known:
                asked_as = self._asked_as.get(tune_id, tune_id)
                # FrozenTrial keeps its storage id private; Trial(study, id) is how Study.ask makes one
                self._ot_trials[asked_as] = optuna.trial.Trial(self._ot_study, t._trial_id)

    def on_trial_result(self, trial_id: str, result: dict):
        from optuna.exceptions import UpdateFinishedTrialError

        if trial_id in self._repeats or (isinstance(self.metric, str) and self.metric not in result):
            return  # a report without the objective (a diverged window) tells Optuna nothing
        try:
            super().on_trial_result(self._asked_as.get(trial_id, trial_id), result)
        except UpdateFinishedTrialError:  # resumed, it had finished after Tune's last save, before the loss
            log.debug("the Optuna trial of %s had already finished", trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._repeats:
            return
        asked_as = self._asked_as.get(trial_id, trial_id)
        if self._finished_in_study(asked_as):  # resumed, it had been told before the loss: once is enough
            self._completed_trials.add(asked_as)
            return
        super().on_trial_complete(asked_as, result, error)

    def _finished_in_study(self, asked_as: str) -> bool:
        import optuna

        trial = self._ot_trials.get(asked_as)
        if trial is None or self._ot_study is None:
            return False
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        return trial.number in {t.number for t in self._ot_study.get_trials(deepcopy=False, states=finished)}


OPTUNA_TRIAL_ID_ATTR = "ray_trial_id"  # the Optuna trial's user attribute naming its Tune trial


def config_key(config: dict[str, Any]) -> tuple:
    """A configuration as the searcher compares them: its values, in key order."""
    return tuple(sorted((k, repr(v)) for k, v in config.items()))


def memory_path(sweep_path: str) -> str:
    """The sweep's memory file: beside its experiment folder, not in it. Tune copies its driver's staging
    folder over the experiment folder at every save, and a resumed Tune first copies the experiment folder
    into that staging folder: a file inside would be overwritten with its state at the loss."""
    return f"{sweep_path}-memory.json"


class MlflowTrialCallback(tune.Callback):
    """Driver side: remembers each trial's best checkpoint and its evaluations, and when the trial
    ends tags its child run with the end reason, its cost, and logs that checkpoint (or its S3 URI).
    `storage`: the sweep's, which Ray's checkpoint paths are under. (The console is `SweepConsole`'s.)

    `memory`: the sweep's JSON file (`memory_path`, beside its experiment folder) holding what Tune's restore
    forgets: ASHA's rung records, the stopper's and its own end reasons, bests and costs; rewritten
    (atomically) after every result and every end, read back when a resumed sweep sets up."""

    memory: str | None = None  # a class default: a callback unpickled from an older sweep's tuner.pkl has none

    def __init__(
        self,
        uri: str,
        parent_run_id: str,
        objective: Objective,
        stopper: OverfitStopper,
        scheduler: RecordingASHA,
        spec: WorkerSpec | None = None,
        storage: str | None = None,
    ):
        self.uri, self.parent_run_id, self.objective, self.metric = uri, parent_run_id, objective, objective.name
        self.stopper, self.scheduler, self.spec, self.storage = stopper, scheduler, spec, storage
        self.best: dict[str, tuple[float, str]] = {}
        self.reasons: dict[str, str] = {}
        self.hours: dict[str, float] = {}
        self.prices: dict | None = None  # the price table a trial's dollars come from (None: trm.cost's defaults)

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self.recall()  # Tune sets its callbacks up after restoring its trials, before any result

    def remember(self) -> None:
        """Write the sweep's memory (see the class); a failed write is a warning, never the sweep's end."""
        from trm.storage import write_json

        if self.memory is None:
            return
        state = {
            "parent_run_id": self.parent_run_id,
            "asha": self.scheduler.state_dict(),
            "stopper": self.stopper.state_dict(),
            "reasons": self.reasons,
            "best": {t: list(b) for t, b in self.best.items()},
            "hours": self.hours,
        }
        try:
            write_json(self.memory, state)
        except Exception:  # noqa: BLE001
            log.warning("could not write the sweep's memory to %s", self.memory, exc_info=True)

    def recall(self) -> bool:
        """Read the memory of this sweep (same MLflow parent run) back into this callback, its stopper and
        its scheduler; False when there is none."""
        from trm.storage import read_json

        try:
            state = read_json(self.memory) if self.memory is not None else None
        except ValueError:  # written atomically, so only a hand-edited file; say so and go on without it
            log.warning("the sweep's memory %s does not parse: resuming without ASHA's rungs", self.memory)
            return False
        if not state or state.get("parent_run_id") != self.parent_run_id:
            return False
        self.reasons.update(state["reasons"])
        self.best.update({t: (float(v), p) for t, (v, p) in state["best"].items()})
        self.hours.update(state["hours"])
        self.stopper.load_state_dict(state["stopper"])
        # an ended trial that Tune resumes (it ended after Tune's last save) stays ended; a failed one runs again
        self.scheduler.load_state_dict(state["asha"], finished={t for t, r in self.reasons.items() if r != "error"})
        return True

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value, path = result.get(self.metric), result.get("checkpoint_path")
        if value is not None and path is not None and math.isfinite(value):
            best = self.best.get(trial.trial_id)
            if self.objective.better(value, best[0] if best is not None else self.objective.worst):
                self.best[trial.trial_id] = (value, path)
        self.remember()  # after the stopper's and ASHA's decisions on this result

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, errored=True)

    def _finish(self, trial, errored: bool) -> None:
        reason = end_reason(trial.trial_id, self.stopper, self.scheduler, errored)
        if reason == "error":  # a trial that stopped saying why (stalled, no_workers) ends with that reason
            reason = _own_end_reason(trial) or reason
        self.reasons[trial.trial_id] = reason
        last = trial.last_result or {}
        seconds = float(last.get("time_total_s") or 0.0)
        cost = trial_cost(seconds, self.spec, self.prices) if self.spec is not None else {}
        self.hours[trial.trial_id] = cost.get("cost/device_hours", 0.0)
        self.remember()
        best = self.best.get(trial.trial_id)
        try:
            runs.end_trial_run(
                self.uri,
                self.parent_run_id,
                trial.trial_id,
                trial_label(trial.config),
                reason=reason,
                errored=errored or reason == "diverged",  # FAILED in MLflow, its reason in the tag
                metric=self.metric,
                best=best,
                cost=cost,
                storage=self.storage,
            )
        except Exception:  # noqa: BLE001 - tracking must never take the sweep down
            log.exception("could not record the end of trial %s in MLflow", trial.trial_id)


def trial_cost(seconds: float, spec: WorkerSpec, prices: dict | None = None) -> dict[str, float]:
    """A trial's cost from its wall time: GPU-hours (or CPU-hours on CPUs), and dollars for GPUs at one
    GPU's share of the default instance (trm.cost: the same price table as long runs, `--prices`)."""
    from trm.cost import DEFAULT_INSTANCE_TYPE, DEFAULT_MARKET, usd_per_gpu_hour

    hours = seconds / 3600.0
    out = {
        "cost/wall_hours": hours,
        "cost/cpu_hours": hours * spec.workers * spec.cpus_per_worker,
        "cost/gpu_hours": hours * spec.workers * spec.gpus_per_worker,
    }
    out["cost/device_hours"] = out["cost/gpu_hours"] or out["cost/cpu_hours"]
    if spec.gpus_per_worker > 0:
        out["cost/usd_estimate"] = out["cost/gpu_hours"] * usd_per_gpu_hour(
            DEFAULT_INSTANCE_TYPE, DEFAULT_MARKET, prices
        )
    return out


# ---------------------------------------------------------------- the sweep
def _default_concurrency(opts: SweepOptions) -> int:
    """Trials at once: as many as the cluster's CPUs and GPUs hold now."""
    from trm.launch.cluster import cluster_capacity

    cap, spec = cluster_capacity(), opts.spec
    n = int(cap.get("CPU", 1) // max(spec.cpus, 1e-9))
    if spec.gpus > 0:
        n = min(n, int(cap.get("GPU", 0) // spec.gpus))
    if n >= 1:
        return n
    need = spec.describe("--workers-per-trial")
    if is_remote(opts.address):
        # an autoscaling cluster starts with no GPU workers: trials wait in PENDING while it adds
        # nodes, and Ray Train retries its worker-group start until they come (no wait bound there)
        log.warning("%s does not fit the cluster's current %s; trials will wait for the autoscaler", need, cap)
        return opts.num_samples or PRESETS[opts.preset].num_samples
    raise ConfigError(f"{need} does not fit this machine's {cap}")


# ---------------------------------------------------------------- what ranks trials
def sweep_objective(base: Config) -> Objective:
    """The sweep's one objective: `train.objective` when set, else the base dataset's kind (its meta.json,
    local or on S3, once preflight has built or staged it; unreadable: the kind its generator builds).
    Pinned in `base` as `train.objective`, so each trial's trainer keeps its best checkpoint by it too."""
    from trm.storage import join, read_json

    try:
        meta = read_json(join(base.data.path, "meta.json"))
    except Exception:  # noqa: BLE001 - an unreadable meta.json: the generator's kind decides
        meta = None
    if not isinstance(meta, dict) and base.data.generate != "none":
        meta = {"name": base.data.generate}
    objective = objective_for(
        meta if isinstance(meta, dict) else None, base.train.objective or None, base.train.select_on != "test"
    )
    base.train.objective = objective.name
    return objective


@dataclass
class Ranking:
    """What ranks and stops trials, all made from the sweep's one objective (the trials' trainers get it
    as `train.objective`, Optuna from `searcher`)."""

    objective: Objective
    stopper: OverfitStopper
    scheduler: RecordingASHA
    callback: MlflowTrialCallback


def make_ranking(
    objective: Objective, base: Config, preset: Preset, spec: WorkerSpec, uri: str, parent_run_id: str
) -> Ranking:
    stopper = OverfitStopper(objective, margin=preset.overfit_margin, patience=preset.overfit_patience)
    # ASHA counts training steps, not reports: a run also reports at unscheduled checkpoints
    # (wall-time, spot notice), which must not move a trial through the rungs faster
    scheduler = RecordingASHA(
        time_attr="step",
        metric=objective.name,
        mode=objective.mode,
        max_t=base.train.steps,
        grace_period=min(preset.grace * base.train.eval_every, base.train.steps),
        reduction_factor=preset.reduction_factor,
    )
    callback = MlflowTrialCallback(uri, parent_run_id, objective, stopper, scheduler, spec)
    return Ranking(objective, stopper, scheduler, callback)


def make_searcher(
    objective: Objective, opts: SweepOptions, study: str, storage_url: str, size: int | None
) -> UniqueOptunaSearch:
    """Optuna's TPE on the objective (and, with --multi-objective, each trial's time, minimised)."""
    import optuna

    metric: str | list[str] = [objective.name, "time_total_s"] if opts.multi_objective else objective.name
    mode: str | list[str] = [objective.mode, "min"] if opts.multi_objective else objective.mode
    return UniqueOptunaSearch(
        metric=metric,
        mode=mode,
        sampler=optuna.samplers.TPESampler(seed=opts.seed),
        study_name=study,
        storage=optuna.storages.RDBStorage(storage_url),
        seeds=opts.seeds,
        size=size,
    )


def run_sweep(
    opts: SweepOptions,
    space: dict[str, Any],
    report: Callable[[list[TrialRow], Tracker, str], str | None] | None = None,
) -> list[TrialRow]:
    """Validate everything, start (or resume) the sweep, return one row per trial. `report(rows, parent,
    metric)` (e.g. trm.sweep.reports.depth_report) gets the objective's name and returns a table."""
    from trm.cost import DEFAULT_INSTANCE_TYPE, DEFAULT_MARKET
    from trm.launch.cluster import DRIVER_RESOURCE, preflight
    from trm.storage import join, resolve

    if not opts.verbose:
        quiet_loggers()
    base, preset = base_config(opts)
    if not opts.early_stopping:  # ASHA's first rung and the stopper's patience past the run's end
        preset = replace(preset, grace=10**9, overfit_patience=10**9)
    validate_space(space, base, opts.expander)
    if opts.seeds > 1 and "seed" in space:
        raise ConfigError("--seeds: the search space already sweeps `seed`")
    storage = resolve(opts.storage)
    uri = preflight(
        base,
        storage=storage,
        tracking_uri=opts.tracking_uri,
        address=opts.address,
        spec=opts.spec,
        what=f"one trial ({opts.spec.describe('--workers-per-trial')})",
        quiet=not opts.verbose,
    )
    assert uri is not None  # a sweep is always tracked (preflight's tracking=True gives the resolved uri)
    objective = sweep_objective(base)  # once the dataset is built or staged, where preflight put it
    sweep_path = join(storage, opts.name)
    size = discrete_size(space)
    num_samples = opts.num_samples or preset.num_samples
    if size is not None and size * opts.seeds < num_samples:
        log.info(
            "the space holds %d configurations: running each once%s (not %d trials)",
            size,
            f" per seed ({opts.seeds} seeds)" if opts.seeds > 1 else "",
            num_samples,
        )
        num_samples = size * opts.seeds
    max_concurrent = opts.max_concurrent or _default_concurrency(opts)
    optuna_url = optuna_storage_url(opts.optuna_storage, uri)
    parent = runs.sweep_run(
        uri,
        opts.name,
        sweep_path,
        opts.resume,
        {
            "preset": opts.preset,
            "num_samples": num_samples,
            "max_concurrent": max_concurrent,
            "workers_per_trial": opts.workers_per_trial,
            "metric": objective.name,
            "seeds": opts.seeds,
            "objectives": f"{objective.mode} {objective.name}" + (", min device-hours" if opts.multi_objective else ""),
            "search_space": describe_space(space)[:6000],
            "optuna_storage": optuna_url,
            "asha": f"rungs every {preset.grace * base.train.eval_every} x {preset.reduction_factor}^k steps "
            f"up to {base.train.steps}",
        },
    )
    study = f"{opts.name}-{parent.run_id[:8]}"
    parent.set_tags({"optuna_study": study})
    try:
        runs.log_dataset(parent, base.data.path, Path(base.data.path).name, asdict(base.data), "train")
    except Exception:  # noqa: BLE001
        log.warning("could not log the sweep's dataset", exc_info=True)
    log.info(
        "sweep %s: MLflow parent run %s at %s; storage %s; Optuna study %s in %s",
        opts.name,
        parent.run_id,
        uri,
        sweep_path,
        study,
        optuna_url,
    )

    ranking = make_ranking(objective, base, preset, opts.spec, uri, parent.run_id)
    stopper, scheduler, callback = ranking.stopper, ranking.scheduler, ranking.callback
    callback.prices = opts.prices
    callback.storage = storage
    callback.memory = memory_path(sweep_path)
    console = SweepConsole(objective, stopper, scheduler, num_samples, verbose=opts.verbose)
    setup = TrialSetup(
        base,
        uri,
        parent.run_id,
        f"{sweep_path}-trials",
        opts.spec,
        objective,
        opts.verbose,
        opts.expander,
        worker_wait_minutes=-1 if is_remote(opts.address) else WORKER_WAIT_MINUTES,
    )
    trainable = tune.with_resources(tune.with_parameters(_trial, setup=setup), {"cpu": 0, DRIVER_RESOURCE: 0.01})

    if opts.resume and tune.Tuner.can_restore(sweep_path):
        log.info("resuming sweep from %s", sweep_path)
        callback.recall()  # refuses other ASHA rungs (another --preset or steps) before any trial starts
        tuner = tune.Tuner.restore(sweep_path, trainable, resume_errored=True, param_space=space)
    else:
        searcher = make_searcher(objective, opts, study, optuna_url, size)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=max_concurrent,
                trial_name_creator=lambda t: trial_label(t.config),
                trial_dirname_creator=lambda t: f"{trial_label(t.config)}_{t.trial_id}",
            ),
            # Tune's own reporter off without --verbose; SweepConsole prints
            run_config=tune.RunConfig(
                name=opts.name,
                storage_path=storage,
                stop=stopper,
                callbacks=[callback, console],
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=tune_verbosity(opts.verbose),
            ),
        )
    grid = tuner.fit()
    # resumed, Tune ran the callback it unpickled from tuner.pkl, not this one: read what it remembered
    callback.recall()

    rows = _rows(grid, objective, base, callback, runs.trial_run_ids(parent), opts.expander)
    done = sorted(
        (r for r in rows if math.isfinite(r.best)), key=lambda r: r.best, reverse=objective.mode == "max"
    )  # best first
    best = done[0].best if done else float("nan")
    total = {
        k: sum(_trial_metric(parent, r.run_id, k) for r in rows)
        for k in ("cost/cpu_hours", "cost/gpu_hours", "cost/usd_estimate")
    }
    runs.record_sweep(
        parent,
        objective.name,
        best,
        {
            k: [getattr(r, k) if k != "params" else str(r.params) for r in rows]
            for k in ("trial_id", "label", "params", "best", "reason", "run_id", "effective_depth", "steps")
        },
        extra={k.replace("cost/", "cost/total_"): v for k, v in total.items()},
    )
    table = None
    if report is not None:
        table = report(rows, parent, objective.name)
        if table:
            runs.describe(
                parent, f"Sweep of {describe_space(space)} on preset `{opts.preset}`; {len(rows)} trials.\n\n{table}"
            )
    _register_best(done, uri, opts.name)
    if done:  # the parent row reads as the sweep's summary in the runs table (children are nested under it)
        top = done[0]
        parent.client.update_run(
            parent.run_id,
            name=f"{opts.name}: {len(rows)} trials, best {top.label} {objective.name.split('/')[-1]} {top.best:.3f}",
        )
    parent.end()
    if not table:  # the report's table already ranks every trial
        _print_rows(rows, objective)
    if opts.multi_objective:
        front = [
            r
            for r in rows
            if math.isfinite(r.best)
            and not any(
                o.best >= r.best and o.hours <= r.hours and (o.best, o.hours) != (r.best, r.hours) for o in rows
            )
        ]
        print(
            "Pareto front (best "
            + objective.name
            + " vs device-hours): "
            + ", ".join(f"{r.label} {r.best:.3f} / {r.hours:.4f} h" for r in sorted(front, key=lambda r: r.hours))
        )
    print(
        f"sweep cost: {total['cost/cpu_hours']:.3f} CPU-hours, {total['cost/gpu_hours']:.3f} GPU-hours"
        + (
            f", ${total['cost/usd_estimate']:.2f} ({DEFAULT_INSTANCE_TYPE} {DEFAULT_MARKET})"
            if total["cost/usd_estimate"]
            else ""
        )
    )
    print(
        f"MLflow: mlflow ui --backend-store-uri {uri}, then open "
        f"http://127.0.0.1:5000/#/experiments/{parent.experiment_id()}/runs?workflowType=machine_learning "
        f"(the model-training view)\nOptuna: optuna-dashboard {optuna_url}"
    )
    sys.stdout.flush()
    return rows


def _trial_metric(parent: Tracker, run_id: str | None, key: str) -> float:
    if run_id is None:
        return 0.0
    return float(parent.client.get_run(run_id).data.metrics.get(key, 0.0))


def _register_best(ranked: list[TrialRow], uri: str, name: str) -> None:
    """The best trial's best checkpoint (EMA weights) as an MLflow model in its child run,
    registered under the sweep's name with alias `best`; `ranked`: trials with a score, best first."""
    from trm.train.loop import load_for_eval

    done = [r for r in ranked if r.run_id]
    if not done:
        return
    top = done[0]
    run_id = top.run_id
    assert run_id is not None  # `done` holds the rows with a run id
    try:
        run = Tracker(uri, run_id)
        tag = run.client.get_run(run_id).data.tags.get(TAG_BEST_CKPT)
        path = checkpoint_path(tag) if tag else None
        if not path or "://" in path or not Path(path).is_dir():
            return
        model, cfg, state = load_for_eval(path)
        version = runs.register_best_model(
            uri, run_id, model, name, {**top.params, "step": state.get("step"), "best": top.best}
        )
        print(f"best model: models:/{name}@best (version {version}, trial {top.label}, step {state.get('step')})")
    except Exception as e:  # noqa: BLE001 - registration must never take the sweep down
        from trm.cli_common import one_line

        # one line; the traceback with --debug
        log.warning("could not register the best model: %s", one_line(e), exc_info=log.isEnabledFor(logging.DEBUG))


def _rows(
    grid,
    objective: Objective,
    base: Config,
    callback: MlflowTrialCallback,
    run_ids: dict[str, str],
    expander: Expander | None = None,
) -> list[TrialRow]:
    rows = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[-1]
        df = result.metrics_dataframe
        metric = objective.name
        values = df[metric] if df is not None and metric in df else None
        best = float("nan") if values is None else float(values.max() if objective.mode == "max" else values.min())
        cfg = _applied(base, dict(result.config or {}), expander)
        reason = callback.reasons.get(trial_id, "error" if result.error else "completed")
        history = {}
        if df is not None and metric in df and "step" in df:
            history = {int(s): float(v) for s, v in zip(df["step"], df[metric], strict=True) if v == v}
        rows.append(
            TrialRow(
                trial_id,
                dict(result.config or {}),
                best,
                dict(result.metrics or {}),
                reason,
                run_ids.get(trial_id),
                cfg.effective_depth,
                history,
                callback.hours.get(trial_id, 0.0),
            )
        )
    return rows


def _print_rows(rows: list[TrialRow], objective: Objective) -> None:
    metric, sign = objective.name, -1.0 if objective.mode == "max" else 1.0
    print(f"\nTrials ranked by best {metric} (each at its own budget; see the compute-matched table above):")
    print(f"{'trial':16s} {'depth':>6s} {'steps':>6s} {'best ' + metric:>26s}  end")
    for r in sorted(rows, key=lambda r: sign * r.best if math.isfinite(r.best) else math.inf):
        print(f"{r.label:16s} {r.effective_depth:6d} {r.steps:6d} {r.best:26.4f}  {r.reason}")
    sys.stdout.flush()
