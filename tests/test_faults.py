"""Faults a user meets before a run starts (issue 17, items 2, 3 and 8), each through the real
`trm` entry point in a subprocess: exit 2, one `error:` line naming the file, key or flag at
fault, no traceback, and the run folder as it was (nothing new on a refusal; byte-identical on a
refused resume). Fast: tiny Sudoku data, a 1-layer width-16 model, CPU."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_long_run import latest_registered_step

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "generate=none", "--set", "device=cpu", "--set", "arch=mlp", "--set", "hidden=16",
        "--set", "layers=1", "--set", "n=1", "--set", "T=1", "--set", "N_sup=2", "--set", "expansion=2",
        "--set", "puzzle_emb_ndim=0", "--set", "batch_size=8", "--set", "log_every=1", "--set", "eval_every=2",
        "--set", "checkpoint_every=2", "--set", "eval_samples=8"]


def trm(*args: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "trm.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env, check=False, **popen)


def refused(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one error line holding every needle, no traceback; returns that line."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from trm.data import sudoku

    path = tmp_path_factory.mktemp("data") / "sudoku"
    train = sudoku.generate(16, 0, 30, 40, 0)
    test = sudoku.generate(8, 1, 30, 40, 0)
    sudoku.build_dataset(path, train[:2], test[:2], 1, 0)
    return path


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """A finished 2-step run (one checkpoint) to resume, evaluate and fine-tune from."""
    root = tmp_path_factory.mktemp("run")
    r = trm("train", "--out", "runs/a", "--no-tracking", "--set", f"data_path={data}", *TINY, "--set", "steps=2",
            cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "runs" / "a"


def broken(data: Path, tmp_path: Path, how) -> Path:
    bad = tmp_path / "bad-data"
    shutil.copytree(data, bad)
    how(bad)
    return bad


def _truncate(d: Path) -> None:
    f = d / "train" / "inputs.npy"
    f.write_bytes(f.read_bytes()[:-100])


def _drop_key(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    del meta["seq_len"]
    (d / "meta.json").write_text(json.dumps(meta))


def _token_over_vocab(d: Path) -> None:
    a = np.load(d / "train" / "inputs.npy")
    a[3, 5] = 200
    np.save(d / "train" / "inputs.npy", a)


def _puzzle_id_over(d: Path) -> None:
    a = np.load(d / "test" / "puzzle_ids.npy")
    a[1] = 7
    np.save(d / "test" / "puzzle_ids.npy", a)


BAD_DATA = [
    ("truncated", _truncate, ("train/inputs.npy", "truncated")),
    ("missing key", _drop_key, ("meta.json", "missing key 'seq_len'")),
    ("invalid json", lambda d: (d / "meta.json").write_text("{not json"), ("meta.json", "not valid JSON")),
    ("token over vocab", _token_over_vocab, ("train/inputs.npy", "sample 3 holds 200", "vocab_size=11")),
    ("puzzle id over", _puzzle_id_over, ("test/puzzle_ids.npy", "num_puzzle_ids=1")),
]


@pytest.mark.parametrize("name,how,needles", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_a_bad_dataset_is_refused_before_the_run_folder_exists(data, tmp_path, name, how, needles):
    bad = broken(data, tmp_path, how)
    r = trm("train", "--out", "runs/x", "--set", f"data_path={bad}", *TINY, "--set", "steps=2",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    refused(r, str(bad), *needles)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_bad_dataset_is_refused_by_eval(run, data, tmp_path):
    bad = broken(data, tmp_path, _token_over_vocab)
    refused(trm("eval", "--checkpoint", str(run), "--data", str(bad), "--split", "train", cwd=tmp_path),
            "inputs.npy", "vocab_size=11")


def test_a_yaml_syntax_error_names_file_and_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  lr: 1.0e-4\n   steps: [3\n")
    refused(trm("train", "--config", "bad.yaml", "--out", "runs/x", cwd=tmp_path), "bad.yaml: line 3", "YAML")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("setting,needle", [("lr=nan", "train.lr=nan: expected a finite number"),
                                            ("ema=inf", "train.ema=inf: expected a finite number")])
def test_a_non_finite_value_is_refused(tmp_path, setting, needle):
    refused(trm("train", "--out", "runs/x", "--set", setting, cwd=tmp_path), needle)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("setting,source", [("steps=3", "epochs"), ("eval_every=7", "eval_every_epochs")])
def test_a_value_epochs_would_replace_is_refused_with_the_way_out(tmp_path, setting, source):
    r = trm("train", "--config", str(REPO / "configs" / "arc-agi-1.yaml"), "--set", setting, "--out", "runs/x",
            cwd=tmp_path)
    refused(r, f"train.{setting.split('=')[0]}", f"derived from train.{source}=", f"set {source}=0")
    assert not (tmp_path / "runs").exists()


def test_a_sweep_refuses_steps_on_a_preset_that_counts_epochs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    r = subprocess.run([sys.executable, str(REPO / "sweeps" / "depth_sweep.py"), "--preset", "arc-agi-1",
                        "--set", "steps=3"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env, check=False)
    refused(r, "train.steps=3", "derived from train.epochs=", "set epochs=0")
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_is_refused(data, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    refused(trm("train", "--out", "runs", "--no-tracking", "--set", f"data_path={data}", *TINY, cwd=tmp_path),
            "--out runs: is a file")
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_out_on_a_read_only_disk_is_refused(data, tmp_path):
    ro = Path("/proc/sys")  # read-only even for root; a chmod-ed folder is not
    if os.access(ro, os.W_OK):
        pytest.skip("/proc/sys is writable here")
    refused(trm("train", "--out", str(ro / "trm-run"), "--no-tracking", "--set", f"data_path={data}", *TINY,
                cwd=tmp_path), f"--out {ro}/trm-run", "not writable")


def test_a_tracking_uri_of_unknown_scheme_is_refused(data, tmp_path):
    r = trm("train", "--out", "runs/x", "--tracking-uri", "sqlit:///mlflow.db", "--set", f"data_path={data}", *TINY,
            cwd=tmp_path)
    refused(r, "--tracking-uri sqlit:///mlflow.db", "unknown scheme 'sqlit'")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--batch-size", "-1"), ("--limit", "-5")])
def test_eval_flags_out_of_range_are_refused(run, tmp_path, flag, value):
    refused(trm("eval", "--checkpoint", str(run), flag, value, cwd=tmp_path), f"{flag} {value}")


def test_a_refused_resume_leaves_the_run_folder_byte_identical(run, data, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(run, folder)
    before = snapshot(folder)
    r = trm("train", "--out", str(folder), "--set", f"data_path={data}", *TINY, "--set", "steps=4",
            "--set", "hidden=32", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    refused(r, f"--out {folder}", "model.hidden: checkpoint 16 vs config 32")
    assert snapshot(folder) == before
    assert not (tmp_path / "mlflow.db").exists()


def test_a_second_writer_is_refused_naming_the_holder(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "trm.cli", "train", "--out", "runs/x", "--no-tracking",
                              "--set", f"data_path={data}", *TINY, "--set", "steps=1000000"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        holder = tmp_path / "runs" / "x" / ".trm.writer.json"
        deadline = time.time() + 120
        while not holder.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert holder.is_file(), "the first run never took its folder"
        r = trm("train", "--out", "runs/x", "--no-tracking", "--set", f"data_path={data}", *TINY,
                "--set", "steps=1000000", cwd=tmp_path)
        refused(r, "--out runs/x: another process is writing this run", f"pid {first.pid} on ")
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_two_first_runs_create_one_sqlite_store_without_racing(tmp_path):
    """Two processes opening one new SQLite MLflow DB at once both ran the schema migrations, and one
    failed in alembic ('duplicate column name'); the creation is now serialised by a lock beside the DB."""
    code = ("import sys; from trm.tracking import Tracker; "
            "print(Tracker.create(sys.argv[1], 'race', run_name='r').run_id)")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 2


# ---------------------------------------------------------------- puzzle maps (item 8)
def with_tasks(data: Path, tmp_path: Path, name: str, tasks: list[str]) -> Path:
    """The Sudoku data under another task-to-puzzle-id map: task i at puzzle id i + 1, one augmentation."""
    from trm.data.puzzle_map import FINGERPRINT, PuzzleMap

    out = tmp_path / name
    shutil.copytree(data, out)
    meta = json.loads((out / "meta.json").read_text())
    meta.update(task_ids=tasks, task_first_puzzle_id=list(range(1, len(tasks) + 1)),
                task_num_augmentations=[1] * len(tasks), num_puzzle_ids=len(tasks) + 1)
    meta[FINGERPRINT] = PuzzleMap.of(meta).fingerprint
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def mapped_run(data, tmp_path_factory) -> tuple[Path, Path]:
    """A run trained on data whose tasks are t1, t2 (puzzle ids 1, 2)."""
    root = tmp_path_factory.mktemp("mapped")
    ab = with_tasks(data, root, "ab", ["t1", "t2"])
    r = trm("train", "--out", "runs/ab", "--no-tracking", "--set", f"data_path={ab}", *TINY, "--set", "steps=2",
            cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "runs" / "ab", ab


def test_every_dataset_records_its_puzzle_map_fingerprint(data):
    from trm.data.puzzle_map import FINGERPRINT, PuzzleMap

    meta = json.loads((data / "meta.json").read_text())
    assert meta[FINGERPRINT] == PuzzleMap.of(meta).fingerprint


def test_every_checkpoint_records_its_puzzle_map(mapped_run):
    from trm.data.puzzle_map import FINGERPRINT
    from trm.train import checkpoint as ckpt

    run, ab = mapped_run
    state = ckpt.read_file(ckpt.resolve(run, prefer="latest"), "state.pt")
    recorded = state["extra"]["puzzle_map"]
    assert recorded["fingerprint"] == json.loads((ab / "meta.json").read_text())[FINGERPRINT]
    assert recorded["tasks"] == {"t1": [1, 1], "t2": [2, 1]}


def test_eval_on_another_task_order_is_refused_naming_the_tasks(mapped_run, data, tmp_path):
    run, ab = mapped_run
    assert trm("eval", "--checkpoint", str(run), "--data", str(ab), cwd=tmp_path).returncode == 0
    ba = with_tasks(data, tmp_path, "ba", ["t2", "t1"])
    refused(trm("eval", "--checkpoint", str(run), "--data", str(ba), cwd=tmp_path), f"--data {ba}", "t2, t1",
            "other puzzle ids")
    abc = with_tasks(data, tmp_path, "abc", ["t1", "t2", "t3"])
    refused(trm("eval", "--checkpoint", str(run), "--data", str(abc), cwd=tmp_path), "t3", "not in the checkpoint")


def test_fine_tuning_may_add_tasks_but_not_move_them(mapped_run, data, tmp_path):
    run, _ = mapped_run
    ba = with_tasks(data, tmp_path, "ba", ["t2", "t1"])
    r = trm("train", "--out", "runs/ft-ba", "--no-tracking", "--init-from", str(run), "--set", f"data_path={ba}",
            *TINY, "--set", "steps=2", cwd=tmp_path)
    refused(r, f"--init-from {run}", "t2, t1")
    assert not (tmp_path / "runs").exists()
    abc = with_tasks(data, tmp_path, "abc", ["t1", "t2", "t3"])
    r = trm("train", "--out", "runs/ft-abc", "--no-tracking", "--init-from", str(run), "--set", f"data_path={abc}",
            *TINY, "--set", "steps=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]


# ---------------------------------------------------------------- runtime faults (items 1, 4, 7)
def stopped(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A run that stopped with a reason: exit != 0 (2: a TrmError), one error line, no traceback.
    Under Ray, the lines its actors forward to the driver ("(TrainController pid=...) ...": Ray's own
    log of a worker's death, with its traceback) are Ray's record, not the run's end: left out."""
    ray_line = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")
    own = [line for line in (r.stdout + r.stderr).splitlines() if not ray_line.match(line)]
    assert r.returncode == 2, "\n".join(own)[-3000:]
    assert not any("Traceback" in line for line in own), "\n".join(own)[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line and not ray_line.match(line)]
    assert len(errors) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def steps_logged(folder: Path) -> list[int]:
    path = folder / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def mlflow_run(db: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{db}").get_run(run_id)


def every_weight_finite(folder: Path) -> bool:
    import torch

    from trm.train import checkpoint as ckpt

    state = ckpt.read_file(folder, "state.pt")
    tensors = [*state["model"].values(), *(state["ema"] or {}).values()]
    return all(bool(t.isfinite().all()) for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def corrupt(folder: Path) -> None:
    f = folder / "state.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def test_a_run_whose_checkpoints_all_fail_is_refused_and_restart_sets_them_aside(run, data, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(run, folder)
    for step in (folder / "checkpoints").glob("step_*"):
        corrupt(step)
    before = snapshot(folder)
    db = tmp_path / "mlflow.db"
    args = ("train", "--out", str(folder), "--set", f"data_path={data}", *TINY, "--set", "steps=4",
            "--tracking-uri", f"sqlite:///{db}")
    line = refused(trm(*args, cwd=tmp_path), f"--out {folder}", "step_000000002/state.pt is corrupt", "--restart")
    assert "none of its 1 checkpoints" in line
    assert snapshot(folder) == before and not db.exists()  # never silently from step 0

    r = trm(*args, "--restart", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (aside,) = folder.glob("checkpoints.old-*")
    assert {p.name for p in aside.iterdir()} >= {"checkpoints", "metrics.jsonl", "config.yaml"}
    assert (aside / "checkpoints" / "step_000000002" / "state.pt").read_bytes() == before[
        "checkpoints/step_000000002/state.pt"]
    assert (aside / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    assert steps_logged(folder) == [2, 4]  # from step 0 (reported every 2 steps), each step once
    assert sorted(p.name for p in (folder / "checkpoints").glob("step_*"))[-1] == "step_000000004"
    run_id = (folder / "mlflow_run_id").read_text().strip()
    assert mlflow_run(db, run_id).info.status == "FINISHED"


def test_a_resume_with_another_batch_size_is_refused_with_the_reason(run, data, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(run, folder)
    before = snapshot(folder)
    r = trm("train", "--out", str(folder), "--no-tracking", "--set", f"data_path={data}", *TINY, "--set", "steps=4",
            "--set", "batch_size=16", cwd=tmp_path)
    refused(r, f"--out {folder}", "trained with batch_size=8", "batch_size=16", "--set batch_size=8", "--restart")
    assert snapshot(folder) == before


def test_divergence_stops_with_one_line_and_the_mlflow_run_failed(data, tmp_path):
    from trm.tracking import TAG_END_REASON

    db = tmp_path / "mlflow.db"
    r = trm("train", "--out", "runs/d", "--set", f"data_path={data}", *TINY, "--set", "steps=40",
            "--set", "lr=1e6", "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path)
    line = stopped(r, "diverged at step", "non-finite")
    folder = tmp_path / "runs" / "d"
    kept = sorted((folder / "checkpoints").glob("step_*"))
    assert kept, "the last finite checkpoint is kept"
    assert f"last good checkpoint {kept[-1].name} kept" in line
    assert all(every_weight_finite(k) for k in kept)  # no checkpoint of non-finite weights
    logged = steps_logged(folder)
    assert len(logged) == len(set(logged)) and logged[-1] < 40
    run = mlflow_run(db, (folder / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FAILED" and run.data.tags[TAG_END_REASON] == "diverged"


def _file_size_limit(limit: int):
    """In the child: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored), a real OS limit
    standing in for a full disk."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(run, data, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(run, folder)
    good = folder / "checkpoints" / "step_000000002"
    assert (good / "state.pt").stat().st_size > 200_000  # over the limit below: its next one cannot be written
    r = trm("train", "--out", str(folder), "--no-tracking", "--set", f"data_path={data}", *TINY, "--set", "steps=4",
            cwd=tmp_path, preexec_fn=_file_size_limit(200_000))
    stopped(r, "disk full while writing checkpoint step_000000004 under", str(folder / "checkpoints"),
            "the last good checkpoint step_000000002 is kept")
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_000000002"]  # no partial folder
    from trm.train import checkpoint as ckpt

    ckpt.verify_digests(good)
    assert steps_logged(folder) == [2]  # step 4's report stopped at its checkpoint


# ---------------------------------------------------------------- the same faults under Ray Train (slow)
RAY_ENV = {"RAY_AUTH_MODE": "disabled"}


def runs_at(db: Path, run_path: Path) -> list:
    """The MLflow runs of `trm train --workers` tagged with this run folder (its Ray storage location)."""
    from mlflow.tracking import MlflowClient

    from trm.tracking import TAG_RUN_PATH

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("trm-train")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_PATH}` = '{run_path.resolve()}'")


@pytest.mark.slow
def test_divergence_under_ray_train_ends_the_same_way(data, tmp_path):
    from trm.tracking import TAG_END_REASON

    db = tmp_path / "mlflow.db"
    r = trm("train", "--out", "runs/d", "--workers", "1", "--set", f"data_path={data}", *TINY, "--set", "steps=40",
            "--set", "lr=1e6", "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path, env=RAY_ENV)
    line = stopped(r, "diverged at step", "non-finite")
    folder = tmp_path / "runs" / "d"
    kept = sorted(folder.glob("step_*"))
    assert kept and all(every_weight_finite(k) for k in kept)
    assert "last good checkpoint step_" in line
    (run,) = runs_at(db, folder)
    assert run.info.status == "FAILED" and run.data.tags[TAG_END_REASON] == "diverged"


@pytest.mark.slow
def test_retries_exhausted_end_in_one_line_and_a_rerun_continues_the_mlflow_run(data, tmp_path):
    """--max-failures 0 and a worker SIGKILLed (a node lost without notice): one line naming the cause
    and the command to resume; that command continues the same MLflow run, no step logged twice."""
    from tests.processes import kill_session, train_workers

    db = tmp_path / "mlflow.db"
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    args = ["train", "--out", "runs/r", "--workers", "1", "--max-failures", "0", "--set", f"data_path={data}", *TINY,
            "--tracking-uri", f"sqlite:///{db}"]
    proc = subprocess.Popen([sys.executable, "-m", "trm.cli", *args, "--set", "steps=100000"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    folder = tmp_path / "runs" / "r"
    try:
        deadline = time.time() + 240
        while latest_registered_step(folder) < 4 or not train_workers(proc.pid):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        os.kill(train_workers(proc.pid)[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    line = stopped(r, "training failed after 0 retries (--max-failures 0): rank 0",
                   "resume from the last checkpoint with: trm train --out runs/r")
    (dead,) = runs_at(db, folder)
    assert dead.info.status == "FAILED"

    resume_at = latest_registered_step(folder)
    assert resume_at >= 4, line
    r = trm(*args, "--set", f"steps={resume_at + 4}", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = runs_at(db, folder)  # the same MLflow run, finished
    assert run.info.run_id == dead.info.run_id and run.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    history = [m.step for m in MlflowClient(f"sqlite:///{db}").get_metric_history(run.info.run_id, "train/loss")]
    assert history == sorted(set(history)) and history[-1] == resume_at + 4, history


@pytest.mark.slow
def test_a_run_that_fails_after_every_restart_stops_with_the_reason(data, tmp_path):
    """A worker that dies right after each restart (here SIGKILLed as soon as its start is in the run's
    ledger) never advances the checkpoint: after 3 restarts in a row from it the run stops with one line
    saying so, rather than retrying up to --max-failures (or, preemptions, forever); the ledger counts every
    start; the MLflow run ends FAILED, reason "stalled". (The work each restart loses: tests/test_attempts.py.)"""
    from tests.processes import kill_session, train_workers
    from trm.launch.attempts import ATTEMPTS
    from trm.tracking import TAG_END_REASON

    db = tmp_path / "mlflow.db"
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    args = ["train", "--out", "runs/s", "--workers", "1", "--max-failures", "10", "--set", f"data_path={data}", *TINY,
            "--set", "steps=100000", "--set", "checkpoint_every=40", "--set", "eval_every=40",
            "--tracking-uri", f"sqlite:///{db}"]
    proc = subprocess.Popen([sys.executable, "-m", "trm.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    folder = tmp_path / "runs" / "s"
    def ledger() -> dict:
        try:
            return json.loads((folder / ATTEMPTS).read_text())
        except (OSError, ValueError):  # not yet written
            return {"starts": 0, "stalled": 0}

    killed = 0
    try:
        deadline = time.time() + 480
        while latest_registered_step(folder) < 40:  # the first checkpoint: then the first failure
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else ""
            time.sleep(0.2)
        while proc.poll() is None:
            assert time.time() < deadline, f"still running after {killed} kills: {ledger()}"
            workers, now = train_workers(proc.pid), ledger()
            # an attempt that has started from its checkpoint fails at once (the one that stops is left be)
            if workers and now["starts"] > killed and now["stalled"] < 3:
                os.kill(workers[0], signal.SIGKILL)
                killed += 1
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    step = latest_registered_step(folder)  # the first attempt's newest checkpoint: no attempt after it wrote one
    line = stopped(r, f"stopped: 3 attempts in a row from the checkpoint at step {step} ended without writing a "
                   "newer checkpoint", "resume with: trm train --out runs/s")
    end = ledger()
    assert (end["starts"], end["resume_step"], killed) == (5, step, 4), (end, killed, line)
    (run,) = runs_at(db, folder)
    assert run.info.status == "FAILED" and run.data.tags[TAG_END_REASON] == "stalled"


@pytest.mark.slow
def test_a_run_whose_workers_never_get_their_resources_stops_naming_them(data, tmp_path):
    """A cluster (here `ray.cluster_utils.Cluster`, one CPU node) that never has the GPU the run asks for:
    a cluster can autoscale, so the run waits, but only --worker-wait-minutes in all (Train V2's worker-group
    start timeout, cut to 5 s here in the driver's environment, which Train passes on to its controller,
    times its retries); then one line naming what the workers asked for and
    what Ray has free, and nothing trained."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        start = time.time()
        r = trm("train", "--out", "runs/w", "--workers", "1", "--gpus-per-worker", "1", "--no-tracking",
                "--worker-wait-minutes", "0.25", "--address", cluster.address, "--set", f"data_path={data}", *TINY,
                "--set", "steps=4", cwd=tmp_path, env={**RAY_ENV, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5"})
        took = time.time() - start
    finally:
        cluster.shutdown()
    stopped(r, "1 worker(s) of 1 CPU, 1 GPU each did not start within 0.25 min (--worker-wait-minutes)",
            "Ray has 1 of 1 CPU, 0 of 0 GPU free", "resume with: trm train --out runs/w")
    assert took < 120, took  # 15 s of waiting, not forever
    assert latest_registered_step(tmp_path / "runs" / "w") == -1


@pytest.mark.slow
def test_a_resume_with_another_worker_count_continues_the_run(data, tmp_path):
    """Two DDP workers, then the same run resumed on one (a smaller cluster): the weights, optimiser and
    step carry over; each rank's carried samples cannot (their slots were split over two ranks), so they
    restart from y_init/z_init with a warning saying why, and the run finishes in its one MLflow run with
    no step twice."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    args = ["train", "--out", "runs/n", "--set", f"data_path={data}", *TINY, "--tracking-uri", f"sqlite:///{db}"]
    r = trm(*args, "--workers", "2", "--set", "steps=4", cwd=tmp_path, env=RAY_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "runs" / "n"
    (first,) = runs_at(db, folder)
    assert (folder / "step_000000004" / "rank1.pt").is_file()
    r = trm(*args, "--workers", "1", "--set", "steps=8", cwd=tmp_path, env=RAY_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "saved with 2 workers, now 1; carried slots restart" in r.stdout + r.stderr, r.stderr[-3000:]
    (run,) = runs_at(db, folder)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    history = [m.step for m in MlflowClient(f"sqlite:///{db}").get_metric_history(run.info.run_id, "train/loss")]
    assert history == sorted(set(history)) and history[-1] == 8, history


@pytest.mark.slow
def test_a_full_disk_under_ray_ends_in_one_line_saying_so(data, tmp_path):
    """`trm train --workers` with its checkpoints on a small tmpfs that fills after the first checkpoint:
    Ray's copy of the next checkpoint to storage runs out of space; the run ends in one line saying disk
    full (the retries it had, the resume command), and the last registered checkpoint verifies."""
    from tests.processes import kill_session
    from trm.train import checkpoint as ckpt

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
        args = ["train", "--out", "disk/f", "--workers", "1", "--max-failures", "0", "--set", f"data_path={data}",
                *TINY, "--set", "steps=100000", "--set", "checkpoint_every=4", "--no-tracking"]
        proc = subprocess.Popen([sys.executable, "-m", "trm.cli", *args], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        folder = disk / "f"
        try:
            deadline = time.time() + 240
            while latest_registered_step(folder) < 4:
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                assert time.time() < deadline, "no checkpoint within 240 s"
                time.sleep(0.2)
            kept = latest_registered_step(folder)
            with open(disk / "filler", "wb") as f:  # the disk fills (another job's files)
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                kill_session(proc.pid)
        r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        stopped(r, "training failed after 0 retries (--max-failures 0): rank 0: DiskFullError: disk full while "
                "writing checkpoint", "No space left on device", "resume from the last checkpoint with: trm train")
        last = latest_registered_step(folder)
        assert last >= kept
        ckpt.verify_digests(folder / ckpt.step_dir_name(last))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_tracking_server_gone_for_good_ends_in_one_line_naming_it(data, tmp_path):
    """A real MLflow server, killed mid-run and not restarted: one line naming its URI, the last good
    checkpoint and --no-tracking; MLflow's own retries cut to none (its documented setting) to keep
    the test short."""
    import socket
    import urllib.request

    from tests.processes import kill_session
    from trm.train import checkpoint as ckpt

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    proc = None
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "the MLflow server did not start"
                time.sleep(0.5)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "",
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        proc = subprocess.Popen([sys.executable, "-m", "trm.cli", "train", "--out", "runs/t", "--tracking-uri", uri,
                                 "--set", f"data_path={data}", *TINY, "--set", "steps=100000"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        folder = tmp_path / "runs" / "t"
        while not list((folder / "checkpoints").glob("step_*")):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline + 120, "no checkpoint within 240 s"
            time.sleep(0.2)
        kill_session(server.pid)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if server.poll() is None:
            kill_session(server.pid)
    line = stopped(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                   f"--tracking-uri {uri}: the MLflow server stopped answering", "the last good checkpoint step_",
                   "--no-tracking")
    kept = line.split("the last good checkpoint ")[1].split(" ")[0]
    ckpt.verify_digests(folder / "checkpoints" / kept)
    logged = steps_logged(folder)
    assert len(logged) == len(set(logged))


@pytest.mark.slow
def test_a_long_run_is_refused_on_a_run_folder_another_process_writes(data, tmp_path):
    """Long runs take the run lock of `trm train` when their storage is local: here the test holds
    it, as a `trm train --workers` on that folder would."""
    from trm.launch.long_run import MANIFEST
    from trm.run_lock import RunLock

    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    with RunLock(folder):
        r = subprocess.run([sys.executable, str(REPO / "sweeps" / "arc_long.py"), "--name", "r", "--storage",
                            str(tmp_path / "runs"), "--data", str(data), *TINY, "--set", "steps=4",
                            "--set", "epochs=0", "--set", "eval_every_epochs=0",
                            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
                           env={**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        stopped(r, f"--name {folder}: another process is writing this run", f"pid {os.getpid()} on ")
    assert not (folder / MANIFEST).exists()


@pytest.mark.slow
def test_workers_resume_refusals_and_restart(data, tmp_path):
    """`trm train --workers`: the same resume checks as a local run (another batch_size, every
    checkpoint corrupt: refused, folder unchanged), and --restart sets Ray's files aside and starts a
    new MLflow run (the old one keeps its history)."""
    from trm.tracking import TAG_RUN_PATH

    db = tmp_path / "mlflow.db"
    args = ["train", "--out", "runs/w", "--workers", "1", "--set", f"data_path={data}", *TINY, "--set", "steps=4",
            "--tracking-uri", f"sqlite:///{db}"]
    r = trm(*args, cwd=tmp_path, env=RAY_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "runs" / "w"
    (first,) = runs_at(db, folder)

    refused(trm(*args, "--set", "batch_size=16", cwd=tmp_path, env=RAY_ENV), "trained with batch_size=8")
    for step in folder.glob("step_*"):
        corrupt(step)
    before = snapshot(folder)
    refused(trm(*args, cwd=tmp_path, env=RAY_ENV), "--out runs/w", "state.pt is corrupt", "--restart")
    assert snapshot(folder) == before

    r = trm(*args, "--restart", cwd=tmp_path, env=RAY_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    (aside,) = folder.glob("checkpoints.old-*")
    assert sorted(p.name for p in aside.glob("step_*")) == sorted(p.name for p in folder.glob("step_*")) != []
    (second,) = runs_at(db, folder)
    assert second.info.run_id != first.info.run_id
    from mlflow.tracking import MlflowClient

    old = MlflowClient(f"sqlite:///{db}").get_run(first.info.run_id)
    assert old.data.tags[TAG_RUN_PATH] == str(aside)
