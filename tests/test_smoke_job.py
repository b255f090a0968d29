"""The README's main command (`python sweeps/depth_sweep.py`, the smoke preset) end to end.

It must learn: the best trial solves >= 80 % of held-out Sudoku puzzles exactly, read back from
MLflow. And MLflow must read as researchers use it: the experiment opens in the model-training
view, child runs are named by configuration (no configuration twice), the best model is
registered with alias `best`, the trials carry system metrics and their dataset.
About 10 minutes on 2 CPU cores.
"""
import os
import re
import subprocess
import sys

import pytest

from tests.mlflow_server import REPO
from trm.tracking.runs import best_metric_name


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_readme_main_command_learns_and_reads_well_in_mlflow(tmp_path):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = subprocess.run([sys.executable, str(REPO / "sweeps" / "depth_sweep.py"), "--storage", str(tmp_path / "runs"),
                        "--tracking-uri", db], cwd=tmp_path, capture_output=True, text=True, timeout=1400,
                       env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    check_sweep(db, r.stdout, r.stderr)


def check_sweep(db: str, stdout: str, stderr: str) -> None:
    """What the smoke sweep must show, on its console and in MLflow (also run by hand on a sweep:
    python -c 'from tests.test_smoke_job import check_sweep; ...')."""
    from mlflow.tracking import MlflowClient

    out = stdout + stderr
    assert "Reporting training result" not in out and "Checkpoint successfully created" not in out
    assert "compute-matched" in stdout and "best model: models:/depth_sweep@best" in stdout

    client = MlflowClient(db)
    exp = client.get_experiment_by_name("depth_sweep")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    parent = next(x for x in runs if "mlflow.parentRunId" not in x.data.tags)
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) >= 2
    assert "layers in [1, 2]" in parent.data.params["search_space"]
    assert "object at 0x" not in parent.data.params["search_space"]

    names = [c.info.run_name for c in children]
    assert all(re.fullmatch(r"L\d+-n\d+-T\d+", n) for n in names), names
    configs = [(c.data.params["layers"], c.data.params["n"], c.data.params["T"]) for c in children]
    assert len(set(configs)) == len(configs), f"duplicate configurations: {configs}"

    # trials rank on the selection split's exact accuracy (the objective); the reported one is val/*
    BEST_TAG = best_metric_name("select/val/exact_accuracy")  # noqa: N806
    best = max(children, key=lambda c: float(c.data.tags.get(BEST_TAG, "-1")))
    best_value = max(m.value for m in client.get_metric_history(best.info.run_id, "val/exact_accuracy"))
    assert best_value >= 0.8, {n: c.data.tags.get(BEST_TAG) for n, c in zip(names, children)}

    version = client.get_model_version_by_alias("depth_sweep", "best")
    top = float(best.data.tags[BEST_TAG])
    assert version.run_id in {c.info.run_id for c in children if float(c.data.tags.get(
        BEST_TAG, "-1")) == top}

    assert any(k.startswith("system/") for c in children for k in c.data.metrics), "no system metrics"
    assert all(c.inputs.dataset_inputs for c in children), "a trial without its dataset"
    assert all(c.data.metrics.get("cost/cpu_hours", 0) > 0 for c in children)
    assert parent.data.metrics.get("cost/total_cpu_hours", 0) > 0
