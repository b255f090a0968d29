"""Long runs (`sweeps/arc_long.py`): limits, resume without duplicated MLflow steps, and the faults
a multi-day spot run meets: workers SIGKILLed, the driver lost, checkpoints in S3."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.mlflow_server import REPO, start_mlflow, stop
from tests.processes import kill_session, train_workers
from tests.s3_server import s3_server  # noqa: F401
from trm.cost import CostMeter, RunLimits
from trm.storage import write_json
from trm.config import ConfigError
from trm.launch.long_run import MANIFEST, parse_deadline
from trm.tracking import Tracker
from trm.train.loop import Trainer
from trm.train.session import LocalSession

# ------------------------------------------------------------------ limits


def test_parse_deadline():
    assert parse_deadline("72h", now=1000.0) == 1000.0 + 72 * 3600
    assert parse_deadline("90m", now=0.0) == 5400.0
    assert parse_deadline("3d", now=0.0) == 3 * 86400
    assert parse_deadline("2100-01-01T00:00", now=0.0) == 4102444800.0  # UTC unless it says otherwise
    with pytest.raises(ConfigError, match="expected a duration"):
        parse_deadline("soon")
    with pytest.raises(ConfigError, match="in the past"):
        parse_deadline("2001-01-01T00:00")


def test_run_limits():
    with pytest.raises(ValueError, match="needs GPUs"):
        RunLimits(gpu_hours=10)
    with pytest.raises(ValueError, match="expected a number > 0"):
        RunLimits(gpu_hours=0, gpus=1)
    with pytest.raises(KeyError, match="p4d.24xlarge"):
        RunLimits(gpus=4, instance_type="p4d.24xlarge")
    assert RunLimits(deadline=100.0).reached(None, now=99.0) is None
    assert RunLimits(deadline=100.0).reached(None, now=100.0) == "deadline"
    clock = iter([0.0, 1800.0, 3600.0, 7200.0]).__next__
    limits = RunLimits(gpu_hours=2.0, gpus=2)
    meter = CostMeter(2, clock=clock)  # 2 GPUs: 2 GPU-hours after one wall hour
    assert limits.reached(meter) is None  # 0.5 h
    assert limits.reached(meter) == "gpu_budget"  # 1 h x 2 GPUs


def test_deadline_stops_with_a_checkpoint_and_resume_continues(tiny_config, tmp_path):
    """Past its deadline a run stops at the next log step with a checkpoint; resumed with a later
    deadline it ends exactly where an uninterrupted run ends."""
    cfg = tiny_config(steps=100, log_every=10)
    straight = Trainer(cfg, LocalSession(tmp_path / "straight"))
    straight.fit()

    first = Trainer(tiny_config(steps=100, log_every=10), LocalSession(tmp_path / "limited"),
                    RunLimits(deadline=time.time() - 1))
    m = first.fit()
    assert first.stop_reason == "deadline" and m["stop_reason"] == "deadline" and first.step == 10
    assert (tmp_path / "limited" / "checkpoints" / "step_000000010").is_dir()

    second = Trainer(tiny_config(steps=100, log_every=10), LocalSession(tmp_path / "limited"),
                     RunLimits(deadline=time.time() + 3600))
    m = second.fit()
    assert second.stop_reason is None and second.step == 100 and m["run/restarts"] == 1
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k


def test_gpu_budget_stops_and_cost_rides_in_the_checkpoint(tiny_config, tmp_path):
    limits = RunLimits(gpu_hours=1e-9, gpus=4, instance_type="p5.4xlarge", market="spot")
    t = Trainer(tiny_config(steps=100, log_every=5), LocalSession(tmp_path / "run"), limits)
    m = t.fit()
    assert t.stop_reason == "gpu_budget" and t.step == 5
    assert m["cost/gpu_hours"] > 0 and m["cost/usd_estimate"] > 0
    # 4 x p5.4xlarge spot: dollars = GPU-hours x the per-GPU price
    assert m["cost/usd_estimate"] == pytest.approx(m["cost/gpu_hours"] * 2.29, rel=1e-6)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_000000005" / "state.pt", weights_only=False)
    assert state["extra"]["cost"]["gpu_seconds"] > 0

    resumed = Trainer(tiny_config(steps=100, log_every=5), LocalSession(tmp_path / "run"),
                      RunLimits(gpu_hours=1e6, gpus=4))
    m2 = resumed.fit()
    assert resumed.step == 100
    assert m2["cost/gpu_hours"] > m["cost/gpu_hours"]  # accumulated across the restart


class SpotNotice(LocalSession):
    """A session whose cluster announces, from step `at` on, that a node is about to be reclaimed."""

    def __init__(self, *args, at: int, **kw):
        super().__init__(*args, **kw)
        self.at, self.trainer = at, None

    def agree(self, decision: dict) -> dict:
        return {**decision, "preempting": self.trainer.step >= self.at}


def test_spot_notice_checkpoints_once_without_evaluating(tiny_config, tmp_path):
    tracker = Tracker.create(f"sqlite:///{tmp_path / 'mlflow.db'}", "spot")
    session = SpotNotice(tmp_path / "run", keep=10, tracker=tracker, at=10)
    t = Trainer(tiny_config(steps=50, log_every=5, eval_every=25, checkpoint_every=25), session)
    session.trainer = t
    t.fit()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000000010", "step_000000050"]  # one just-in-time checkpoint; 25 is < 25 steps after it
    assert [m.step for m in tracker.history("train/loss")] == [10, 25, 50]
    assert [m.step for m in tracker.history("val/exact_accuracy")] == [25, 50]  # no evaluation at the notice


def test_cluster_runs_need_a_tracking_server(caplog, monkeypatch):
    from trm.launch.cluster import check_shared

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from trm.tracking import TrackingError

    with pytest.raises(TrackingError, match="start mlflow/serve.sh on the head"):
        check_shared("sqlite:///mlflow.db", "s3://b/runs", address="10.0.0.1:6379")
    check_shared("http://10.0.0.1:5000", "s3://b/runs", address="10.0.0.1:6379")
    check_shared("postgresql://mlflow@db:5432/mlflow", "s3://b/runs", address="10.0.0.1:6379")
    check_shared("sqlite:///mlflow.db", "runs", address=None)  # a local Ray shares this machine's files
    with caplog.at_level("WARNING"):
        check_shared("http://10.0.0.1:5000", "/home/me/runs", address="10.0.0.1:6379")
    assert "use s3://BUCKET/PREFIX" in caplog.text


# ------------------------------------------------------------------ MLflow: no step twice


def test_reopened_run_never_logs_a_step_twice(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker.create(uri, "dedup")
    for step in (10, 20, 30):
        t.log_metrics({"train/loss": step / 10, "val/acc": step}, step)
    again = Tracker(uri, t.run_id)  # a restarted worker: recomputes 20, 30, then goes on
    assert again.last_logged_step() == 30
    for step in (20, 30, 40):
        again.log_metrics({"train/loss": 100.0 + step, "val/acc": step}, step)
    again.log_metrics({"eval/pass_at_1": 0.5}, 30)  # a new key at an old step is still logged
    hist = {m.step: m.value for m in again.history("train/loss")}
    assert sorted(hist) == [10, 20, 30, 40] and len(again.history("train/loss")) == 4
    assert hist[20] == 2.0 and hist[40] == 140.0  # the first value of a step stands
    assert [m.step for m in again.history("eval/pass_at_1")] == [30]


# ------------------------------------------------------------------ the script: bad input

SMALL = ["--set", "generate=sudoku", "--set", "num_train=48", "--set", "num_test=32", "--set", "augmentations=4",
         "--set", "min_givens=40", "--set", "max_givens=50", "--set", "hidden=32", "--set", "heads=2",
         "--set", "expansion=2", "--set", "N_sup=2", "--set", "n=2", "--set", "T=2", "--set", "puzzle_emb_ndim=16",
         "--set", "puzzle_emb_len=1", "--set", "batch_size=16", "--set", "lr=2e-3", "--set", "lr_warmup_steps=10",
         "--set", "ema=0.9", "--set", "eval_every=10", "--set", "eval_samples=32", "--set", "log_every=5",
         "--set", "checkpoint_every=20",
         "--set", "epochs=0", "--set", "eval_every_epochs=0"]  # count steps: the ARC base counts epochs


def arc_long(*args, cwd, env=None, **kw):
    return subprocess.Popen([sys.executable, str(REPO / "sweeps" / "arc_long.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}, **kw)


def finish(proc, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-6000:]
    return out


def result_of(out: str) -> dict:
    """The JSON summary the script prints last (Ray's worker logs may follow it)."""
    return json.JSONDecoder().raw_decode(out, out.rindex('{\n  "mlflow_run_id"'))[0]


@pytest.mark.parametrize("args,needle", [
    (["--deadline", "tomorrow"], "--deadline 'tomorrow': expected a duration"),
    (["--budget-gpu-hours", "5"], "a GPU-hour budget needs GPUs"),
    (["--budget-gpu-hours", "-1"], "--budget-gpu-hours -1.0: expected a number > 0"),
    (["--gpus-per-worker", "1", "--instance-type", "p9.nano"], "no price for instance type 'p9.nano'"),
    (["--workers", "0"], "--workers 0: expected an integer >= 1"),
    (["--gpus-per-worker", "1"], "needs 1 CPUs and 1 GPUs; this machine's Ray has"),
    (["--storage", "/proc/trm-cannot-write-here"], "/proc/trm-cannot-write-here"),
    (["--tracking-uri", "http://127.0.0.1:1"], "the MLflow server does not answer"),
    (["--set", "n=0"], "model.n=0: expected 1 <= n"),
    (["--resume", "--config", "x.yaml"], "--config with --resume"),
    (["--existing"], "a run already exists at"),
])
def test_bad_input_fails_before_training(tmp_path, args, needle):
    if args == ["--existing"]:
        write_json(str(tmp_path / "runs" / "r" / MANIFEST), {"name": "r"})
        args = []
    p = arc_long("--name", "r", "--storage", str(tmp_path / "runs"), "--data", str(tmp_path / "data"), *SMALL,
                 *args, cwd=tmp_path)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2, out[-3000:]
    assert needle in out
    assert not (tmp_path / "data").exists()  # nothing built, nothing trained


def latest_registered_step(folder: Path) -> int:
    """The step of the latest checkpoint Ray Train has registered (all ranks' parts persisted), or -1.
    A step folder can exist before that, or for good when a rank died while writing it."""
    try:
        snap = json.loads((folder / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return -1
    latest = snap.get("latest_checkpoint_result")
    return int(latest["checkpoint_dir_name"].split("_")[1].split("-")[0]) if latest else -1


def final_model(run_folder: Path, step: int) -> dict:
    return torch.load(run_folder / f"step_{step:09d}" / "state.pt", weights_only=False)["model"]


def assert_one_history(uri: str, experiment: str, steps: int, eval_every: int):
    """One MLflow run holds the whole history: every eval step once, in order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ("train/loss", "val/exact_accuracy", "run/restarts"):
        got = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert got == sorted(set(got)), f"{key}: duplicated steps {got}"
        assert set(range(eval_every, steps + 1, eval_every)) <= set(got), f"{key}: missing steps in {got}"
    return run


# ------------------------------------------------------------------ faults, end to end


@pytest.mark.slow
def test_workers_sigkilled_three_times_finish_with_the_same_weights(tmp_path):
    """Real Ray on CPU, 2 DDP workers. A worker is SIGKILLed three times at random points; each time
    Ray Train restarts the group from the latest checkpoint. The final weights equal those of an
    uninterrupted run with the same seed."""
    steps = 240
    common = ["--storage", str(tmp_path / "runs"), "--data", str(tmp_path / "data"), "--workers", "2", *SMALL,
              "--set", f"steps={steps}", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    clean = result_of(finish(arc_long("--name", "clean", "--experiment", "clean", *common, cwd=tmp_path)))
    assert clean["step"] == steps and clean["run/restarts"] == 0

    rnd = random.Random(0)
    proc = arc_long("--name", "faulty", "--experiment", "faulty", *common, cwd=tmp_path, start_new_session=True)
    folder, kills, last = tmp_path / "runs" / "faulty", [], -1
    try:
        while len(kills) < 3:
            # a new registered checkpoint since the last kill (each restart has made progress), the
            # whole worker group up, then a random delay
            deadline = time.time() + 240
            while latest_registered_step(folder) <= last or len(train_workers(proc.pid)) != 2:
                assert proc.poll() is None, proc.stdout.read()[-6000:]
                assert time.time() < deadline, "no new checkpoint within 240 s"
                time.sleep(0.2)
            last = latest_registered_step(folder)
            time.sleep(rnd.uniform(0.0, 2.5))
            workers = train_workers(proc.pid)
            if len(workers) != 2:  # the run ended or a worker is restarting: try again
                continue
            victim = rnd.choice(workers)
            os.kill(victim, signal.SIGKILL)
            kills.append((victim, last))
        out = finish(proc)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    faulty = result_of(out)
    assert faulty["step"] == steps and faulty["end_reason"] == "completed"
    assert faulty["run/restarts"] == 3, faulty
    print(f"\n3 SIGKILLs at checkpoints {[s for _, s in kills]}: {faulty['run/recomputed_steps']} steps "
          f"recomputed (logged before a kill, redone after it), run/restarts={faulty['run/restarts']}")
    a, b = final_model(tmp_path / "runs" / "clean", steps), final_model(folder, steps)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert_one_history(f"sqlite:///{tmp_path / 'mlflow.db'}", "faulty", steps, 10)


def _kill_driver_then_resume(tmp_path, storage: str, tracking_uri: str, env: dict | None = None,
                             corrupt_latest: bool = False) -> dict:
    steps = 120
    args = ["--name", "dl", "--storage", storage, "--data", str(tmp_path / "data"), "--workers", "2", *SMALL,
            "--set", f"steps={steps}", "--tracking-uri", tracking_uri, "--experiment", "driver-loss"]
    proc = arc_long(*args, cwd=tmp_path, env=env, start_new_session=True)
    from mlflow.tracking import MlflowClient

    from trm.storage import read_json

    try:
        deadline = time.time() + 300
        manifest = None
        while True:  # kill once a checkpoint is written and the run has logged past it
            assert proc.poll() is None, proc.stdout.read()[-6000:]
            assert time.time() < deadline, "the run made no progress in 300 s"
            time.sleep(0.3)
            # the manifest is written once the MLflow run exists: only then read MLflow (a second
            # process creating the same SQLite schema at once would race the driver)
            manifest = manifest or read_json(f"{storage}/dl/{MANIFEST}")
            if manifest is None:
                continue
            hist = MlflowClient(tracking_uri).get_metric_history(manifest["mlflow_run_id"], "train/loss")
            # with two checkpoints registered when a corrupted latest one is to leave a good one
            if max((m.step for m in hist), default=0) >= 50 and (
                    not corrupt_latest or latest_registered_step(Path(storage) / "dl") >= 40):
                break
    finally:
        kill_session(proc.pid)  # the driver and the whole local Ray with it
    first = proc.stdout.read()
    assert "ended" not in first, first[-3000:]  # it really died mid-run
    if corrupt_latest:  # and its latest checkpoint is damaged: the resumed run must use the one before
        latest = Path(storage) / "dl" / f"step_{latest_registered_step(Path(storage) / 'dl'):09d}"
        with open(latest / "state.pt", "r+b") as f:
            f.seek(100)
            f.write(b"\x00garbage\x00")

    out = finish(arc_long(*args, "--resume", cwd=tmp_path, env=env))
    resumed = result_of(out)
    if corrupt_latest:
        assert f"skipping checkpoint {latest}" in out and "is corrupt (checksum mismatch)" in out, out[-5000:]
    assert resumed["step"] == steps and resumed["end_reason"] == "completed"
    assert resumed["run/restarts"] == 1, resumed
    run = assert_one_history(tracking_uri, "driver-loss", steps, 10)
    assert run.data.tags["driver_starts"] == "2"
    return {"run": run, "result": resumed}


@pytest.mark.slow
def test_driver_lost_then_resumed_keeps_one_mlflow_run(tmp_path):
    """...and with its latest checkpoint corrupted meanwhile, it resumes from the one before."""
    out = _kill_driver_then_resume(tmp_path, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}",
                                   corrupt_latest=True)
    assert out["result"]["run/recomputed_steps"] >= 0


@pytest.mark.slow
def test_s3_end_to_end_checkpoints_data_and_artifacts_in_the_bucket(tmp_path, s3_server):  # noqa: F811
    """Checkpoints, the dataset and MLflow artifacts go to the loopback S3 server; a driver loss
    resumes from the checkpoints listed in the bucket."""
    server, uri = start_mlflow(tmp_path, artifacts=f"s3://{s3_server.bucket}/mlflow", env=s3_server.env)
    try:
        env = {**s3_server.env, "TRM_CACHE_DIR": str(tmp_path / "node-cache")}
        out = _kill_driver_then_resume(tmp_path, f"s3://{s3_server.bucket}/runs", uri, env=env)
    finally:
        stop(server)
    keys = [o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket)
            for o in page.get("Contents", [])]
    ckpts = {k.split("/")[2] for k in keys if k.startswith("runs/dl/step_") and k.endswith("/state.pt")}
    assert "step_000000120" in ckpts and len(ckpts) >= 2, ckpts
    assert any(k.startswith("runs/dl/step_") and k.endswith("/rank1.pt") for k in keys)
    assert "runs/dl/trm_run.json" in keys
    assert any(k.startswith("runs/datasets/data-") and k.endswith("meta.json") for k in keys)  # uploaded once
    assert any(k.startswith("mlflow/") and k.endswith("/config.yaml") for k in keys)
    assert any(k.startswith("mlflow/") and k.endswith("/checkpoint/state.pt") for k in keys)
    assert (tmp_path / "node-cache" / s3_server.bucket / "runs" / "datasets").is_dir()  # workers read the cache
    assert out["result"]["checkpoint"].startswith(f"s3://{s3_server.bucket}/runs/dl/")


@pytest.mark.slow
def test_a_lost_worker_node_resumes_when_capacity_returns(tmp_path):
    """A simulated three-node cluster on this machine (`ray.cluster_utils.Cluster`: a head that trains
    nothing, two 1-CPU worker nodes, one DDP worker on each). Once a checkpoint is registered, one
    worker node disappears without notice; the run waits for capacity, a node is added back, and the
    run resumes from its last checkpoint: the same final step, one MLflow run, no step logged twice."""
    from ray.cluster_utils import Cluster

    steps = 120
    server, uri = start_mlflow(tmp_path)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=1)
        lost = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        proc = arc_long("--name", "nl", "--storage", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
                        "--workers", "2", "--cpus-per-worker", "1", *SMALL, "--set", f"steps={steps}",
                        "--tracking-uri", uri, "--experiment", "node-loss", "--address", cluster.address,
                        cwd=tmp_path, start_new_session=True)  # fmt: skip
        folder = tmp_path / "runs" / "nl"
        try:
            deadline = time.time() + 300
            while latest_registered_step(folder) < 20:
                assert proc.poll() is None, proc.stdout.read()[-6000:]
                assert time.time() < deadline, "no checkpoint within 300 s"
                time.sleep(0.3)
            cluster.remove_node(lost, allow_graceful=False)  # the node is gone, no notice
            time.sleep(10)  # the run waits: 2 workers need 2 CPUs, 1 is left
            assert proc.poll() is None, proc.stdout.read()[-6000:]
            cluster.add_node(num_cpus=1)  # capacity returns
            out = finish(proc, timeout=900)
        finally:
            if proc.poll() is None:
                kill_session(proc.pid)
        result = result_of(out)
        assert result["step"] == steps and result["end_reason"] == "completed", out[-4000:]
        assert result["run/restarts"] == 1, result
        assert_one_history(uri, "node-loss", steps, 10)  # while the server is up
    finally:
        cluster.shutdown()
        stop(server)
