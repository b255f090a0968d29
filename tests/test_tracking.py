"""trm.tracking.runs: each kind of run is created once and found again, with the project's names."""
from __future__ import annotations

import pytest

from trm.config import Config
from trm.tracking import (ART_CONFIG, TAG_BEST_CKPT, TAG_DRIVER_STARTS, TAG_END_REASON, TAG_LAST_CKPT,
                          TAG_RUN_PATH, TAG_TRIAL_ID, TrackingError, check_reachable, runs)
from trm.errors import TrmError


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_local_run_is_reopened_from_its_folder(uri, tmp_path):
    cfg = Config()
    (tmp_path / "run").mkdir()
    first = runs.local_run(uri, "trm-train", tmp_path / "run", cfg)
    again = runs.local_run(uri, "trm-train", tmp_path / "run", cfg)
    assert again.run_id == first.run_id
    run = again.client.get_run(again.run_id)
    assert run.info.run_name == "run" and run.data.params["effective_depth"] == str(cfg.effective_depth)
    runs.finish_run(again, artifact=None)
    assert again.client.get_run(again.run_id).info.status == "FINISHED"


def test_sweep_parent_and_trial_children_are_found_again(uri, tmp_path):
    parent = runs.sweep_run(uri, "sw", "/s/sw", resume=False, params={"preset": "smoke"})
    assert runs.sweep_run(uri, "sw", "/s/sw", resume=True, params={}).run_id == parent.run_id
    assert runs.sweep_run(uri, "sw", "/s/other", resume=True, params={}).run_id != parent.run_id
    child = runs.trial_run(uri, parent.run_id, "t1", "trial_1")
    assert runs.trial_run(uri, parent.run_id, "t1", "trial_1").run_id == child.run_id  # a restarted trial
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "state.pt").write_bytes(b"x")
    runs.end_trial_run(uri, parent.run_id, "t1", "trial_1", reason="asha_pruned", errored=False,
                       metric="val/exact_accuracy", best=(0.5, str(tmp_path / "ckpt")))
    run = child.client.get_run(child.run_id)
    assert run.data.tags[TAG_END_REASON] == "asha_pruned" and run.data.tags[TAG_TRIAL_ID] == "t1"
    assert run.data.tags[TAG_BEST_CKPT] == (tmp_path / "ckpt").as_uri()  # the one form: checkpoint_uri
    assert run.data.tags["best_val_exact_accuracy"] == "0.5" and run.info.status == "FINISHED"
    assert runs.trial_run_ids(parent) == {"t1": child.run_id}
    runs.record_sweep(parent, "val/exact_accuracy", 0.5, {"trial_id": ["t1"]})
    assert parent.client.get_run(parent.run_id).data.metrics["best_val_exact_accuracy"] == 0.5


def test_long_run_start_reopen_and_end(uri):
    cfg = Config()
    run = runs.start_long_run(uri, "trm-long", "r", "s3://b/r", cfg, workers=2, gpus_per_worker=1,
                              instance_type="p5.4xlarge", market="spot")
    runs.fail_run(run, RuntimeError("lost"), tag_reason=True)
    got = run.client.get_run(run.run_id)
    assert got.info.status == "FAILED" and got.data.tags[TAG_END_REASON] == "error"
    assert got.data.tags[TAG_RUN_PATH] == "s3://b/r" and got.data.params["workers"] == "2"
    assert [a.path for a in run.client.list_artifacts(run.run_id)] == [ART_CONFIG]
    again = runs.reopen_long_run(uri, run.run_id, driver_starts=2)
    assert again.client.get_run(run.run_id).info.status == "RUNNING"
    runs.finish_run(again, reason="deadline", checkpoint="s3://b/r/step_000000010")
    got = run.client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags[TAG_END_REASON] == "deadline"
    assert got.data.tags[TAG_LAST_CKPT] == "s3://b/r/step_000000010" and got.data.tags[TAG_DRIVER_STARTS] == "2"


def test_an_unreachable_server_is_a_user_error():
    with pytest.raises(TrmError, match="--tracking-uri http://127.0.0.1:9"):
        check_reachable("http://127.0.0.1:9", timeout=2)
    assert issubclass(TrackingError, TrmError)
