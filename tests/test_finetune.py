"""Fine-tuning / test-time training: `trm train --init-from` on held-out tasks' demonstrations, new
puzzle embeddings at the mean of the trained ones, optional frozen weights, then `trm submit`."""
from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.test_submit import (EVAL_IDS, check_submission_format, needs_arc, pretrained,  # noqa: F401 - fixture
                               build, train, write_kaggle)
from trm.cli import main
from trm.tracking import TAG_INIT_FROM
from trm.train import checkpoint as ckpt

NEW_IDS = ["0a1d4ef5", "0a2355a6"]  # evaluation tasks the pretraining never saw


def _state(run) -> dict:
    return ckpt.read_file(ckpt.resolve(run, prefer="latest"), "state.pt")


@needs_arc
def test_finetune_on_unseen_tasks_then_submit(pretrained, tmp_path, capsys) -> None:  # noqa: F811
    root, data, parent, _ = pretrained
    challenges = write_kaggle(tmp_path / "src", "evaluation", NEW_IDS, "evaluation", solutions=False)
    new_data = build(tmp_path / "src", tmp_path / "data")
    parent_state = _state(parent)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # one step with lr 0 on the weights: what the run starts from, visible in its checkpoint
    run = train(new_data, tmp_path / "ft", 1, "--init-from", str(parent), "--set", "lr=1e-12",
                "--set", "puzzle_emb_lr=0", tracking=uri)
    state = _state(run)
    parent_ema = {k[len("module."):]: v for k, v in parent_state["ema"].items() if k.startswith("module.")}
    for k, v in state["model"].items():
        if k in parent_ema and k != "puzzle_emb.weight":
            assert torch.allclose(v, parent_ema[k], atol=1e-6), k
    table, old = state["model"]["puzzle_emb.weight"], parent_state["model"]["puzzle_emb.weight"]
    assert table.shape[0] == state["meta"]["num_puzzle_ids"] != old.shape[0]
    assert torch.allclose(table, old[1:].mean(0, keepdim=True).expand_as(table), atol=1e-6)
    assert state["extra"]["init_from"].startswith(str(parent))
    tags = MlflowClient(uri).search_runs(MlflowClient(uri).get_experiment_by_name("trm-train").experiment_id
                                         )[0].data.tags
    assert tags[TAG_INIT_FROM].startswith(str(parent.resolve()))

    # freeze_weights: only the puzzle embeddings move
    frozen = train(new_data, tmp_path / "frozen", 3, "--init-from", str(parent), "--set", "freeze_weights=true")
    fs = _state(frozen)
    for k, v in fs["model"].items():
        if k in parent_ema and k != "puzzle_emb.weight":
            assert torch.equal(v, parent_ema[k]), k
    assert not torch.equal(fs["model"]["puzzle_emb.weight"], table)

    # submit with the fine-tuned run: the challenges' task ids are the new dataset's
    out = tmp_path / "submission.json"
    capsys.readouterr()
    assert main(["submit", "--checkpoint", str(frozen), "--challenges", str(challenges), "--out", str(out),
                 "--device", "cpu"]) == 0
    check_submission_format(json.loads(out.read_text()), json.loads(challenges.read_text()))
    # ... and the pretrained run does not know them: a clear error that says to fine-tune
    assert main(["submit", "--checkpoint", str(parent), "--challenges", str(challenges), "--out",
                 str(tmp_path / "no.json"), "--device", "cpu"]) == 2
    assert "fine-tune" in capsys.readouterr().err and not (tmp_path / "no.json").exists()


@needs_arc
def test_init_from_another_architecture_or_nothing_is_refused(pretrained, tmp_path, capsys) -> None:  # noqa: F811
    root, data, parent, _ = pretrained
    for extra, expected in ((["--set", "hidden=32"], "model.hidden"),
                            ([], "--init-from")):
        source = str(parent) if extra else str(tmp_path / "nothing")
        capsys.readouterr()
        sets = ["--set", f"data_path={data}", "--set", "generate=none", "--set", "device=cpu",
                "--set", "steps=1", "--set", "puzzle_emb_ndim=16", "--set", "puzzle_emb_len=1",
                "--set", "heads=2", "--set", "layers=1", "--set", "expansion=2"]
        code = main(["train", "--out", str(tmp_path / "bad"), "--no-tracking", "--init-from", source, *sets, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and "error:" in err[-1] and expected in err[-1], err
