"""Noisy multi-trajectory inference (PTRM, 2026; `trm.evaluate.Trajectories`): K runs of the recursion
with Gaussian noise on z after each latent update, the answer the halting head is the most confident
of; on ARC every run's answer enters the vote. K=1 without noise is plain inference, bit for bit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trm.config import load_config
from trm.data.dataset import PuzzleDataset, read_meta
from trm.errors import TrmError
from trm.evaluate import Rows, Trajectories, concat_predictions, predict, row_chunks
from trm.evaluate.task import evaluate_task
from trm.model import RecursiveModel
from trm.variants import build_model

CPU = torch.device("cpu")
SMALL = {"hidden": 16, "heads": 2, "expansion": 2, "layers": 1, "N_sup": 3, "puzzle_emb_ndim": 16,
         "puzzle_emb_len": 1}
RECURSIONS = {"n": 2, "T": 2}  # every variant but the transformer (one pass: n = T = 1)
VARIANTS = ("trm", "singlez", "multiz", "hrm", "transformer")


def _model(meta: dict, variant: str = "trm", seed: int = 0) -> RecursiveModel:
    """A small random model whose halting head says something (the reference's init reads -5 everywhere,
    and every trajectory would tie)."""
    extra = {} if variant == "transformer" else RECURSIONS
    cfg = load_config(None, {**SMALL, **extra, "variant": variant}).model
    torch.manual_seed(seed)
    model = build_model(cfg, meta["vocab_size"], meta["seq_len"], meta["num_puzzle_ids"])
    with torch.no_grad():
        model.q_head.weight.normal_(0, 1.0)
        model.q_head.bias.zero_()
    return model.eval()


def _plain(model: RecursiveModel, ds: PuzzleDataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain inference written out: N_sup supervision steps from the initial carry, the last step's
    argmax and sigmoid(q_halt); nothing from trm.evaluate."""
    tokens, confidence = [], []
    with torch.no_grad():
        for a in range(0, len(ds), batch_size):
            b = ds.batch(np.arange(a, min(a + batch_size, len(ds))))
            x, pids = torch.as_tensor(b["inputs"]).long(), torch.as_tensor(b["puzzle_ids"]).long()
            carry = model.initial_carry(len(x), CPU)
            for _ in range(model.cfg.N_sup):
                carry, out = model(carry, x, pids)
            tokens.append(out.logits.argmax(-1).numpy())
            confidence.append(torch.sigmoid(out.q_halt.float()).numpy())
    return np.concatenate(tokens), np.concatenate(confidence)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_trajectory_without_noise_is_plain_inference(sudoku_data: str, variant: str) -> None:
    ds = PuzzleDataset(sudoku_data, "test")
    model = _model(read_meta(sudoku_data), variant)
    tokens, confidence = _plain(model, ds, 8)
    p = predict(model, ds, 8, CPU, trajectories=Trajectories(1, 0.0, seed=3))
    assert np.array_equal(p.tokens, tokens) and np.array_equal(p.confidence, confidence)  # exactly, not close
    assert model.noise is None
    if variant == "trm":  # and the evaluation: every metric but its time
        plain = evaluate_task(model, ds, 8, "cpu").metrics
        one = evaluate_task(model, ds, 8, "cpu", trajectories=Trajectories(1, 0.0)).metrics
        assert {k: v for k, v in plain.items() if k != "eval/seconds"} == {
            k: v for k, v in one.items() if k != "eval/seconds"}


@pytest.mark.parametrize("variant", ("trm", "singlez", "multiz", "hrm"))
def test_noise_moves_the_answer_and_is_seeded(sudoku_data: str, variant: str) -> None:
    ds = PuzzleDataset(sudoku_data, "test")
    model = _model(read_meta(sudoku_data), variant)
    plain = predict(model, ds, 8, CPU)
    noisy = predict(model, ds, 8, CPU, trajectories=Trajectories(1, 0.5, seed=1))
    assert not np.array_equal(noisy.confidence, plain.confidence)  # z was perturbed
    assert model.noise is None  # set for the evaluation only
    again = predict(model, ds, 8, CPU, trajectories=Trajectories(1, 0.5, seed=1))
    assert np.array_equal(again.tokens, noisy.tokens) and np.array_equal(again.confidence, noisy.confidence)
    other = predict(model, ds, 8, CPU, trajectories=Trajectories(1, 0.5, seed=2))
    assert not np.array_equal(other.confidence, noisy.confidence)
    # after a noisy evaluation the model is the plain one again
    assert np.array_equal(predict(model, ds, 8, CPU).confidence, plain.confidence)


def test_the_most_confident_trajectory_is_kept(sudoku_data: str) -> None:
    ds = PuzzleDataset(sudoku_data, "test")
    model = _model(read_meta(sudoku_data))
    p = predict(model, ds, 8, CPU, trajectories=Trajectories(4, 0.5, seed=0), keep_trajectories=True, curve=True)
    assert p.run_tokens is not None and p.run_confidence is not None and p.step_tokens is not None
    assert p.run_tokens.shape == (4, len(ds), ds.meta["seq_len"]) and p.run_confidence.shape == (4, len(ds))
    assert len({r.tobytes() for r in p.run_confidence}) == 4  # four different runs
    best = p.run_confidence.argmax(0)
    rows = np.arange(len(ds))
    assert np.array_equal(p.confidence, p.run_confidence[best, rows])
    assert np.array_equal(p.tokens, p.run_tokens[best, rows])
    assert np.array_equal(p.step_tokens[-1], p.tokens)  # the curve follows the chosen run
    # the same runs without keeping them: the same choice
    q = predict(model, ds, 8, CPU, trajectories=Trajectories(4, 0.5, seed=0))
    assert np.array_equal(q.tokens, p.tokens) and q.run_tokens is None


def test_the_noise_does_not_depend_on_the_chunking(sudoku_data: str) -> None:
    ds = PuzzleDataset(sudoku_data, "test")
    model = _model(read_meta(sudoku_data))
    runs = Trajectories(3, 0.5, seed=7)
    whole = predict(model, ds, 4, CPU, trajectories=runs)
    rows = np.arange(len(ds))
    parts = [predict(model, Rows(ds, part), 4, CPU, trajectories=runs) for part in row_chunks(rows, 8)]
    chunked = concat_predictions([type(p)(rows[i * 8:][p.index], p.tokens, p.halt_steps, p.confidence)
                                  for i, p in enumerate(parts)], ds.meta["seq_len"])
    assert np.array_equal(chunked.tokens, whole.tokens) and np.array_equal(chunked.confidence, whole.confidence)


def test_a_model_without_z_and_bad_values_are_refused(sudoku_data: str) -> None:
    ds = PuzzleDataset(sudoku_data, "test")
    with pytest.raises(TrmError, match="--noise 0.1: model.variant=transformer has no latent z"):
        predict(_model(read_meta(sudoku_data), "transformer"), ds, 8, CPU, trajectories=Trajectories(2, 0.1))
    with pytest.raises(TrmError, match="--trajectories 0"):
        Trajectories(0, 0.1)
    with pytest.raises(TrmError, match="--noise -0.1"):
        Trajectories(2, -0.1)


def test_every_trajectory_enters_the_arc_vote(tmp_path: Path) -> None:
    from tests.test_arc import _arc_cli, _subsets, _write_combined

    _write_combined(tmp_path / "k", _subsets())
    path = _arc_cli("--src", str(tmp_path / "k"), "--out", str(tmp_path / "ds"), "--test-set", "evaluation")
    ds = PuzzleDataset(path, "test")
    model = _model(read_meta(path))
    plain = evaluate_task(model, ds, 16, "cpu")
    noisy = evaluate_task(model, ds, 16, "cpu", trajectories=Trajectories(3, 0.5, seed=0))
    assert plain.vote is not None and noisy.vote is not None
    assert noisy.metrics["eval/num_augmentations"] == 3 * plain.metrics["eval/num_augmentations"]
    assert [t.predictions for t in noisy.vote.tests] == [3 * t.predictions for t in plain.vote.tests]
    assert noisy.metrics["eval/trajectories"] == 3 and noisy.metrics["eval/noise"] == 0.5
    assert noisy.params == {"trajectories": 3, "noise": 0.5, "noise_seed": 0}
    assert "eval/trajectories" not in plain.metrics  # a plain evaluation keeps its metric set


@pytest.mark.parametrize("command", ("eval", "submit"))
@pytest.mark.parametrize("flag,value", [("--trajectories", "0"), ("--trajectories", "-2"), ("--noise", "-0.5"),
                                        ("--noise", "nan")])
def test_cli_refuses_bad_trajectories_and_noise(tmp_path: Path, capsys, monkeypatch, command: str, flag: str,
                                                 value: str) -> None:
    from trm.cli import main

    monkeypatch.chdir(tmp_path)
    extra = ["--challenges", "c.json", "--out", "s.json"] if command == "submit" else []
    with pytest.raises(SystemExit) as e:
        main([command, "--checkpoint", "run", *extra, flag, value])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert e.value.code == 2 and len(errors) == 1 and flag in errors[0] and value in errors[0], errors
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_eval_logs_trajectories_and_noise(tiny_config, tmp_path: Path, capsys) -> None:
    """`trm eval --trajectories K --noise S --seed N` on a trained checkpoint: the printed metrics say
    how it ran, and the MLflow run holds K, S and the seed as params (the axes of a sweep over them)."""
    import json

    from mlflow.tracking import MlflowClient

    from trm.cli import main
    from trm.train.loop import Trainer
    from trm.train.session import LocalSession

    Trainer(tiny_config(steps=2, eval_every=2, checkpoint_every=2), LocalSession(tmp_path / "run")).fit()
    capsys.readouterr()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--batch-size", "8", "--device", "cpu",
                 "--trajectories", "2", "--noise", "0.25", "--seed", "5", "--tracking-uri", uri]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["eval/trajectories"] == 2 and out["eval/noise"] == 0.25
    params = MlflowClient(uri).get_run(out["mlflow_run_id"]).data.params
    assert params == {"trajectories": "2", "noise": "0.25", "noise_seed": "5"}
