import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray import tune

from trm.config import ConfigError
from trm.sweep.presets import PRESETS
from trm.sweep.stopping import OverfitStopper
from trm.sweep.tune import SweepOptions, base_config, validate_space
from tests.mlflow_server import REPO, mlflow_server  # noqa: F401

# ------------------------------------------------------------------ the overfitting stopper

def feed(stopper, stream, trial="t"):
    """Feed (val, train, loss) triples; return the 1-based report at which it stopped, or None."""
    for i, (val, train, loss) in enumerate(stream, start=1):
        if stopper(trial, {"val/exact_accuracy": val, "train/exact_accuracy": train, "train/loss": loss}):
            return i
    return None


def test_stopper_stops_an_overfitting_trial():
    s = OverfitStopper(margin=0.02, patience=3)
    stream = [(0.10, 0.2, 1.0), (0.30, 0.4, 0.8), (0.40, 0.5, 0.6),  # learning
              (0.35, 0.6, 0.5), (0.30, 0.7, 0.4), (0.25, 0.8, 0.3),  # val falls while train rises
              (0.20, 0.9, 0.2)]
    assert feed(s, stream) == 6
    assert s.reasons["t"] == "overfit_stopped"


def test_stopper_lets_a_healthy_trial_run():
    s = OverfitStopper(margin=0.02, patience=3)
    # noisy but no sustained drop; also a drop without rising train accuracy is not overfitting
    stream = [(0.1, 0.1, 1), (0.2, 0.2, 1), (0.19, 0.3, 1), (0.25, 0.3, 1), (0.1, 0.3, 1), (0.1, 0.3, 1),
              (0.1, 0.2, 1), (0.3, 0.4, 1), (0.31, 0.5, 1)]
    assert feed(s, stream) is None and "t" not in s.reasons


def test_stopper_stops_a_diverging_trial():
    s = OverfitStopper()
    assert feed(s, [(0.1, 0.1, 1.0), (0.2, 0.2, float("nan"))]) == 2
    assert s.reasons["t"] == "diverged"
    s2 = OverfitStopper()
    assert feed(s2, [(0.1, 0.1, math.inf)]) == 1 and s2.reasons["t"] == "diverged"


def test_strikes_must_be_consecutive():
    s = OverfitStopper(margin=0.0, patience=2)
    stream = [(0.5, 0.1, 1), (0.4, 0.2, 1), (0.6, 0.3, 1), (0.5, 0.4, 1), (0.7, 0.5, 1)]
    assert feed(s, stream) is None


# ------------------------------------------------------------------ names, the space, no duplicates

def test_trial_names_and_the_space_read_as_a_researcher_writes_them():
    from trm.sweep.tune import describe_space, discrete_size, trial_label

    assert trial_label({"layers": 2, "n": 3, "T": 2}) == "L2-n3-T2"
    assert trial_label({"layers": 1, "n": 1, "T": 2, "seed": 1}) == "L1-n1-T2-s1"
    assert trial_label({"lr": 0.00123, "ema": 0.999}) == "ema=0.999-lr=0.00123"
    space = {"layers": tune.choice([1, 2]), "lr": tune.loguniform(1e-4, 1e-2)}
    assert describe_space(space) == "layers in [1, 2]; lr ~ loguniform(0.0001, 0.01)"
    assert discrete_size(space) is None
    assert discrete_size({"layers": tune.choice([1, 2]), "n": tune.choice([1, 2, 3])}) == 6


def test_the_searcher_never_proposes_a_configuration_twice():
    import optuna

    from trm.sweep.tune import UniqueOptunaSearch

    space = {"layers": tune.choice([1, 2]), "n": tune.choice([1, 2]), "T": tune.choice([1, 2])}
    search = UniqueOptunaSearch(space=space, metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                                size=8, seeds=2)
    proposed = []
    for i in range(20):
        config = search.suggest(f"t{i}")
        if not isinstance(config, dict):
            break
        proposed.append(tuple(sorted(config.items())))
        search.on_trial_complete(f"t{i}", {"m": float(i)})
    assert len(proposed) == 16 and len(set(proposed)) == 16  # 8 configurations x seeds 0 and 1
    assert {dict(p)["seed"] for p in proposed} == {0, 1}


def test_the_depth_table_compares_trials_at_an_equal_budget():
    from trm.sweep.reports import matched_step
    from trm.sweep.tune import TrialRow

    rows = [TrialRow("a", {"layers": 1}, 0.9, {}, "completed", None, 2, {100: 0.1, 200: 0.5, 300: 0.9}),
            TrialRow("b", {"layers": 2}, 0.3, {}, "asha_pruned", None, 12, {100: 0.0, 200: 0.3})]
    assert matched_step(rows) == 200


# ------------------------------------------------------------------ bad input, before any trial

def test_search_space_is_validated():
    base, _ = base_config(SweepOptions(name="x"))
    with pytest.raises(ConfigError, match="search space is empty"):
        validate_space({}, base)
    with pytest.raises(ConfigError, match="search space key 'depth': not a config field"):
        validate_space({"depth": tune.choice([1, 2])}, base)
    with pytest.raises(ConfigError, match=r"search space key 'n' value 0: model.n=0: expected 1 <= n"):
        validate_space({"n": tune.choice([0, 1])}, base)
    with pytest.raises(ConfigError, match="expected lower < upper"):
        validate_space({"lr": tune.loguniform(1e-2, 1e-2 + 1e-9)} | {"weight_decay": tune.uniform(2, 1)}, base)
    with pytest.raises(ConfigError, match="--preset 'huge'"):
        base_config(SweepOptions(name="x", preset="huge"))


def run_script(script, *args, cwd, timeout=600, env=None):
    return subprocess.run([sys.executable, str(REPO / "sweeps" / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})})


@pytest.mark.parametrize("args,needle", [
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--set", "n=0"], "model.n=0: expected 1 <= n"),
    (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing answers at 127.0.0.1:1"),
    (["--tracking-uri", "http://127.0.0.1:1"], "--tracking-uri http://127.0.0.1:1: the MLflow server does not answer"),
    (["--storage", "/proc/trm-cannot-write-here"], "/proc/trm-cannot-write-here"),
    (["--num-samples", "0"], "--num-samples 0: expected an integer >= 1"),
])
def test_bad_flags_fail_before_any_trial(tmp_path, args, needle):
    r = run_script("depth_sweep.py", *args, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert needle in r.stderr
    assert not (tmp_path / "runs" / "depth_sweep").exists()  # no trial started


# ------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_smoke_depth_sweep_end_to_end(tmp_path, mlflow_server):  # noqa: F811
    """The smoke depth sweep on local Ray against a real `mlflow server`, read back through MlflowClient."""
    from mlflow.tracking import MlflowClient

    from trm.data.dataset import PuzzleDataset
    from trm.evaluate.task import evaluate_task
    from trm.train.loop import load_for_eval

    r = run_script("depth_sweep.py", "--preset", "tiny", "--num-samples", "5", "--max-concurrent", "2", "--storage",
                   str(tmp_path / "runs"), "--tracking-uri", mlflow_server, "--seed", "1", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Depth vs accuracy" in r.stdout

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("depth_sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 5
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"depth_table.md", "depth_vs_accuracy.png"}

    # the preset overrides its dataset kind's objective; trials rank on its selection-split twin
    metric = "select/" + PRESETS["tiny"].overrides["objective"]
    for child in children:
        p = child.data.params
        for key in ("n", "T", "layers", "arch", "hidden", "ema", "weight_decay", "lr", "N_sup"):
            assert key in p, key
        assert int(p["effective_depth"]) == int(p["layers"]) * (int(p["n"]) + 1) * int(p["T"])
        for key in ("train/loss", "train/exact_accuracy", "val/cell_accuracy", "val/exact_accuracy",
                    "val/mean_halt_steps", "throughput/samples_per_s"):
            assert key in child.data.metrics, key
        tags = child.data.tags
        assert tags["trial_end_reason"] in ("completed", "asha_pruned", "overfit_stopped", "diverged")
        assert tags["ray_trial_id"] and tags["git_commit"]
    reasons = [c.data.tags["trial_end_reason"] for c in children]
    assert any(x in ("asha_pruned", "overfit_stopped") for x in reasons), reasons

    # the best checkpoint of the best trial, restored, reproduces its logged validation accuracy
    best = max(children, key=lambda c: float(c.data.tags[f"best_{metric.replace('/', '_')}"]))
    folder = Path(client.download_artifacts(best.info.run_id, "best_checkpoint", str(tmp_path / "dl")))
    model, cfg, state = load_for_eval(folder)
    logged = {m.step: m.value for m in client.get_metric_history(best.info.run_id, metric)}
    ds = PuzzleDataset(cfg.data.path, "test")
    assert Path(cfg.data.path).is_relative_to(tmp_path)
    from trm.data.selection import Selection

    scores = evaluate_task(model, ds, cfg.train.batch_size, model.y_init.device, limit=cfg.train.eval_samples,
                           selection=Selection.of(cfg.train)).metrics
    assert scores[metric] == pytest.approx(logged[state["step"]], abs=1e-9)


@pytest.mark.slow
def test_sweep_driver_lost_then_restored(tmp_path):
    """The sweep's driver dies mid-sweep (with its local Ray); `--resume` restores the Tuner
    (resume_errored), interrupted trials resume from their own checkpoints into their own MLflow
    child runs, and no child logs a step twice."""
    from mlflow.tracking import MlflowClient

    from tests.processes import kill_session

    storage, db = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--preset", "tiny", "--num-samples", "4", "--max-concurrent", "2", "--storage", str(storage),
            "--tracking-uri", db, "--seed", "3"]
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "depth_sweep.py"), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.time() + 300
        while True:  # kill once Tune has saved its state and a trial has a checkpoint past its first
            assert proc.poll() is None, proc.stdout.read()[-5000:]
            assert time.time() < deadline, "no trial checkpoint within 300 s"
            time.sleep(0.5)
            steps = [int(p.name.split("_")[1]) for p in (storage / "depth_sweep-trials").glob("*/step_*")]
            if list((storage / "depth_sweep").glob("experiment_state*.json")) and steps and max(steps) >= 24:
                break
    finally:
        kill_session(proc.pid)

    r = run_script("depth_sweep.py", *args, "--resume", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming sweep" in r.stderr

    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("depth_sweep").experiment_id])
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    assert len(parents) == 1
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4, [c.data.tags.get("ray_trial_id") for c in children]
    restarts = 0
    for child in children:
        got = [m.step for m in client.get_metric_history(child.info.run_id, "val/cell_accuracy")]
        assert got == sorted(set(got)), f"duplicated steps {got}"
        restarts += int(child.data.metrics.get("run/restarts", 0))
    assert restarts >= 1  # at least one trial resumed from its own checkpoint


def test_overfit_stopper_compares_task_metrics_with_training_accuracy():
    from trm.evaluate.objective import Objective

    assert Objective("val/exact_accuracy").train_metric == "train/exact_accuracy"
    assert Objective("val/cell_accuracy").train_metric == "train/cell_accuracy"
    # ARC's pass@2 has no training twin: comparing it with itself would never see overfitting
    assert Objective("eval/task_pass_at_2").train_metric == "train/exact_accuracy"


# ------------------------------------------------------------------ a resumed sweep keeps its memory

def test_asha_rung_records_survive_a_lost_driver(tmp_path):
    """Ray's Tuner.restore rebuilds the scheduler from tuner.pkl (as it was before the first trial); the
    sweep's memory file carries ASHA's records, the stopper's and the callback's ends across the loss."""
    import json
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from trm.sweep.stopping import RecordingASHA
    from trm.sweep.tune import make_ranking, sweep_objective
    from trm.launch.cluster import WorkerSpec

    def asha(max_t=48):  # the tiny preset's rungs: steps 8, 16, 32
        return RecordingASHA(time_attr="step", metric="m", mode="max", max_t=max_t, grace_period=8,
                             reduction_factor=2)

    trials = {t: SimpleNamespace(trial_id=t) for t in "abcd"}
    before = asha()
    for t in "abc":
        before.on_trial_add(None, trials[t])
    assert before.on_trial_result(None, trials["a"], {"step": 8, "m": 0.9}) == TrialScheduler.CONTINUE
    assert before.on_trial_result(None, trials["b"], {"step": 8, "m": 0.1}) == TrialScheduler.STOP
    assert before.on_trial_result(None, trials["a"], {"step": 16, "m": 0.95}) == TrialScheduler.CONTINUE
    state = json.loads(json.dumps(before.state_dict()))  # through JSON, as on disk

    after = asha()
    after.load_state_dict(state, finished={"b"})
    for t in "abc":  # Tune re-adds the trials it restores
        after.on_trial_add(None, trials[t])
    assert after.rungs() == before.rungs() and after.pruned == {"b"}
    # a trial past a rung is not judged there again: a poor value after the resume changes nothing
    assert after.on_trial_result(None, trials["a"], {"step": 16, "m": 0.0}) == TrialScheduler.CONTINUE
    assert after.rungs() == before.rungs()
    # a trial ASHA had pruned, that Tune resumes (it ended after Tune's last save), is not promoted
    assert after.on_trial_result(None, trials["b"], {"step": 16, "m": 1.0}) == TrialScheduler.STOP
    after.on_trial_complete(None, trials["b"], {"step": 16, "m": 1.0})
    assert after.rungs() == before.rungs()
    # a new trial is compared against the records from before the loss (alone in a fresh rung it would go on)
    after.on_trial_add(None, trials["d"])
    assert after.on_trial_result(None, trials["d"], {"step": 8, "m": 0.05}) == TrialScheduler.STOP
    fresh = asha()
    fresh.on_trial_add(None, trials["d"])
    assert fresh.on_trial_result(None, trials["d"], {"step": 8, "m": 0.05}) == TrialScheduler.CONTINUE
    with pytest.raises(ConfigError, match=r"--resume: the sweep's ASHA rungs were at steps \[\[32.0, 16.0, 8.0\]\]"):
        asha(max_t=96).load_state_dict(state)

    # the callback's memory file: everything above plus the end reasons, bests and hours, for this parent run
    base, preset = base_config(SweepOptions(name="x", preset="tiny"))
    objective = sweep_objective(base)
    first = make_ranking(objective, base, preset, WorkerSpec(1, 0, 1), "sqlite:///unused.db", "parent-1")
    first.callback.memory = str(tmp_path / "memory.json")
    first.scheduler.load_state_dict(state)
    first.stopper("c", {"train/loss": float("nan")})
    first.callback.reasons.update({"b": "asha_pruned", "c": "diverged"})
    first.callback.best["a"] = (0.95, "/ckpt/a")
    first.callback.remember()
    second = make_ranking(objective, base, preset, WorkerSpec(1, 0, 1), "sqlite:///unused.db", "parent-1")
    second.callback.memory = first.callback.memory
    assert second.callback.recall()
    assert second.scheduler.rungs() == before.rungs() and second.scheduler.finished == {"b", "c"}
    assert second.stopper.reasons == {"c": "diverged"} and second.callback.best == {"a": (0.95, "/ckpt/a")}
    other = make_ranking(objective, base, preset, WorkerSpec(1, 0, 1), "sqlite:///unused.db", "parent-2")
    other.callback.memory = first.callback.memory
    assert not other.callback.recall() and other.scheduler.rungs() == asha().rungs()


def test_a_resumed_searcher_knows_every_trial_of_its_study(tmp_path, caplog):
    """Ray restores the searcher from a pickle up to ~10 s older than the loss; the RDB study holds every
    trial. Resumed, no configuration is proposed again and a trial Tune resumes can still be told."""
    import optuna

    from trm.sweep.tune import OPTUNA_TRIAL_ID_ATTR, UniqueOptunaSearch, config_key

    space = {"layers": tune.choice([1, 2]), "n": tune.choice([1, 2, 3])}  # 6 configurations
    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def searcher():  # as Tune makes it: from tuner.pkl, then set_search_properties with the space
        s = UniqueOptunaSearch(metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                               study_name="sweep-1", storage=optuna.storages.RDBStorage(url), size=6)
        s.set_search_properties("m", "max", space)
        return s

    first = searcher()
    proposed = {t: first.suggest(t) for t in ("t0", "t1")}
    first.save(str(tmp_path / "searcher-state.pkl"))  # Tune's last experiment save
    proposed |= {t: first.suggest(t) for t in ("t2", "t3")}  # t2: Tune will resume it; t3: lost with the driver
    first.on_trial_complete("t0", {"m": 0.5})
    first.on_trial_complete("t1", {"m": 0.7})
    assert len({config_key(c) for c in proposed.values()}) == 4

    resumed = searcher()
    resumed.restore(str(tmp_path / "searcher-state.pkl"))  # what restore_from_dir does
    assert resumed._seen == {config_key(c) for c in proposed.values()}
    more = []
    for i in range(10):
        config = resumed.suggest(f"r{i}")
        if not isinstance(config, dict):
            break
        more.append(config_key(config))
    assert len(more) == 2 and set(more).isdisjoint(resumed._seen - set(more))  # the two left, each once
    resumed.on_trial_complete("t2", {"m": 0.9})  # the resumed trial finds its Optuna trial
    with caplog.at_level(logging.WARNING):
        resumed.on_trial_complete("t0", {"m": 0.1})  # told before the loss (after Tune's last save): not again
    assert "Cannot tell" not in caplog.text
    study = optuna.load_study(study_name="sweep-1", storage=url)
    told = {t.user_attrs[OPTUNA_TRIAL_ID_ATTR]: t for t in study.trials if OPTUNA_TRIAL_ID_ATTR in t.user_attrs}
    assert {t: told[t].state.name for t in ("t0", "t1", "t2")} == dict.fromkeys(("t0", "t1", "t2"), "COMPLETE")
    assert told["t0"].value == 0.5
    # with no pickle at all (lost before Tune's first save), the study alone is enough
    assert searcher()._seen == {config_key(c) for c in proposed.values()} | set(more)


@pytest.mark.slow
def test_a_resumed_sweep_keeps_optuna_and_asha_memory(tmp_path):
    """Killed (driver and its local Ray) once a trial has ended and ASHA holds rung records, then
    `--resume`d: no configuration is trained twice (MLflow children, Tune's trial folders, the Optuna
    study), every rung record and end from before the loss stands, and a trial ASHA pruned before it
    is not trained on to the end."""
    import json

    import optuna
    from mlflow.tracking import MlflowClient

    from tests.processes import kill_session
    from trm.sweep.tune import OPTUNA_TRIAL_ID_ATTR, memory_path, trial_label

    storage, db = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    memory = Path(memory_path(str(storage / "depth_sweep")))
    args = ["--preset", "tiny", "--num-samples", "5", "--max-concurrent", "2", "--storage", str(storage),
            "--tracking-uri", db, "--seed", "5"]
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "depth_sweep.py"), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.time() + 400
        while True:  # kill once a trial has ended and a rung compares two trials
            assert proc.poll() is None, proc.stdout.read()[-5000:]
            assert time.time() < deadline, "no trial ended within 400 s"
            time.sleep(0.5)
            try:
                state = json.loads(memory.read_text())
            except (OSError, ValueError):
                continue
            if state["reasons"] and any(len(rec) >= 2 for b in state["asha"]["rungs"] for _, rec in b):
                break
    finally:
        kill_session(proc.pid)
    before = json.loads(memory.read_text())

    r = run_script("depth_sweep.py", *args, "--resume", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming sweep" in r.stderr
    after = json.loads(memory.read_text())

    # every rung record and every end from before the loss stands; a trial ended before it has no new record
    ended = set(before["reasons"])
    for b_before, b_after in zip(before["asha"]["rungs"], after["asha"]["rungs"], strict=True):
        for (m, rec), (m2, rec2) in zip(b_before, b_after, strict=True):
            assert m == m2 and rec.items() <= rec2.items(), (m, rec, rec2)
            assert not ended & (rec2.keys() - rec.keys()), (m, rec, rec2)
    assert before["reasons"].items() <= after["reasons"].items(), (before["reasons"], after["reasons"])

    # no configuration trained twice: MLflow's children, Tune's trial folders, the Optuna study
    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("depth_sweep").experiment_id])
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    assert len(parents) == 1
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    names = [c.info.run_name for c in children]
    assert len(names) >= 5 and len(set(names)) == len(names), names
    folders = [p.name.rsplit("_", 1)[0] for p in (storage / "depth_sweep").iterdir() if p.is_dir()]
    assert len(set(folders)) == len(folders), folders
    study = optuna.load_study(study_name=parents[0].data.tags["optuna_study"],
                              storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    asked = [trial_label(t.params) for t in study.trials if OPTUNA_TRIAL_ID_ATTR in t.user_attrs]
    assert len(set(asked)) == len(asked), asked
    by_trial = {c.data.tags["ray_trial_id"]: c for c in children}
    # the memory after the resume holds every trial's end, as MLflow and the depth table have it
    assert {t: c.data.tags["trial_end_reason"] for t, c in by_trial.items()} == after["reasons"]
    for trial_id, child in by_trial.items():
        row = rf"\| {child.info.run_name} \|.*\| {after['reasons'][trial_id]} \|"
        assert re.search(row, r.stdout), (row, r.stdout[-3000:])
    for trial_id in before["asha"]["pruned"]:  # pruned before the loss: not trained on to the end
        steps = [m.step for m in client.get_metric_history(by_trial[trial_id].info.run_id, "val/cell_accuracy")]
        assert max(steps) < 48 and steps == sorted(set(steps)), steps


def test_a_diverged_trial_ends_as_diverged_in_the_depth_table(tmp_path):
    """The loop reports stop_reason "diverged" and then raises: whichever reaches Tune first, the trial's end
    is `diverged` (not `error`), in the table and in the decisions below it."""
    from trm.sweep.reports import depth_report
    from trm.sweep.stopping import RecordingASHA, end_reason
    from trm.sweep.tune import TrialRow
    from trm.tracking import Tracker

    stopper = OverfitStopper()
    scheduler = RecordingASHA(time_attr="step", metric="val/exact_accuracy", mode="max", max_t=48, grace_period=8)
    assert stopper("t", {"step": 16, "train/loss": 2.0, "diverged": 1.0, "stop_reason": "diverged"})
    assert end_reason("t", stopper, scheduler, errored=True) == "diverged"
    assert end_reason("t", stopper, scheduler, errored=False) == "diverged"
    assert end_reason("u", stopper, scheduler, errored=True) == "error"

    parent = Tracker.create(f"sqlite:///{tmp_path / 'mlflow.db'}", "depth", run_name="sweep")
    rows = [TrialRow("a", {"layers": 1, "n": 1, "T": 1}, 0.5, {}, "completed", None, 2, {8: 0.3, 16: 0.5}),
            TrialRow("t", {"layers": 2, "n": 1, "T": 1}, 0.2, {}, "diverged", None, 4, {8: 0.2})]
    table = depth_report(rows, parent, "val/exact_accuracy")
    assert "| L2-n1-T1 | 2 | 1 | 1 | 4 | 0.200 | - | 8 | diverged |" in table
    assert "- L2-n1-T1: diverged at step 8" in table


@pytest.mark.slow
def test_a_diverging_trial_ends_as_diverged_and_the_sweep_goes_on(tmp_path):
    """lr=1e6: each trial's loss goes non-finite; each ends `diverged` (console, MLflow tag, FAILED), not
    retried as an error, and the sweep runs its next trial and ends normally."""
    from mlflow.tracking import MlflowClient

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = run_script("depth_sweep.py", "--preset", "tiny", "--num-samples", "2", "--max-concurrent", "1",
                   "--storage", str(tmp_path / "runs"), "--tracking-uri", db, "--set", "lr=1e6", cwd=tmp_path,
                   timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("stopped: diverged at step") == 2, r.stdout[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("depth_sweep").experiment_id])
    children = [x for x in runs if "mlflow.parentRunId" in x.data.tags]
    assert len(children) == 2
    for child in children:
        assert child.data.tags["trial_end_reason"] == "diverged" and child.info.status == "FAILED"
        assert int(child.data.metrics.get("run/restarts", 0)) == 0  # not retried
