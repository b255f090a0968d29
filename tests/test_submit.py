"""`trm submit`: the ARC Prize submission format, checked by a checker written here from the
published format (arc-prize `sample_submission.json`), and its bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from trm.cli import main
from trm.evaluate.submit import SubmitError, build_submission, read_challenges

ARC_DIR = Path(os.environ.get("TRM_ARC_DIR", Path(__file__).resolve().parents[2] / "shared/data/arc-agi-1"))
needs_arc = pytest.mark.skipif(not (ARC_DIR / "evaluation").is_dir(), reason=f"no ARC-AGI-1 tasks at {ARC_DIR}")
TRAIN_IDS = ["007bbfb7", "00d62c1b", "017c7c7b"]
EVAL_IDS = ["00576224", "009d5c81", "00dbd492"]


# ---------------------------------------------------------------- the published format, checked independently
def check_submission_format(sub: object, challenges: dict) -> None:
    """ARC Prize 2024/2025: {task_id: [{"attempt_1": grid, "attempt_2": grid} per test input, in order]},
    every task id of the challenges file, grids lists of rows of ints 0..9 (1..30 x 1..30, rectangular)."""
    assert isinstance(sub, dict), "top level must be an object keyed by task id"
    assert set(sub) == set(challenges), f"task ids differ: {set(sub) ^ set(challenges)}"
    for tid, task in challenges.items():
        entries = sub[tid]
        assert isinstance(entries, list) and len(entries) == len(task["test"]), tid
        for e in entries:
            assert isinstance(e, dict) and set(e) == {"attempt_1", "attempt_2"}, (tid, e)
            for g in e.values():
                assert isinstance(g, list) and 1 <= len(g) <= 30, tid
                assert all(isinstance(r, list) and len(r) == len(g[0]) and 1 <= len(r) <= 30 for r in g), tid
                assert all(type(v) is int and 0 <= v <= 9 for r in g for v in r), tid


# ---------------------------------------------------------------- shared fixtures (also used by test_finetune)
def write_kaggle(folder: Path, subset: str, ids: list[str], split: str, solutions: bool) -> Path:
    """Real ARC-AGI-1 tasks as a Kaggle combined challenges file (and solutions when asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    ch, so = {}, {}
    for tid in ids:
        task = json.loads((ARC_DIR / split / f"{tid}.json").read_text())
        ch[tid] = {"train": task["train"], "test": [{"input": t["input"]} for t in task["test"]]}
        so[tid] = [t["output"] for t in task["test"]]
    path = folder / f"arc-agi_{subset}_challenges.json"
    path.write_text(json.dumps(ch))
    if solutions:
        (folder / f"arc-agi_{subset}_solutions.json").write_text(json.dumps(so))
    return path


def build(src: Path, out: Path, augmentations: int = 2, test_set: str = "evaluation") -> Path:
    assert main(["data", "arc", "--src", str(src), "--out", str(out), "--augmentations", str(augmentations),
                 "--test-set", test_set]) == 0
    return out


TINY_ARC = {"hidden": 16, "heads": 2, "expansion": 2, "layers": 1, "n": 1, "T": 1, "N_sup": 2,
            "puzzle_emb_ndim": 16, "puzzle_emb_len": 1, "batch_size": 8, "lr": 3e-3, "lr_warmup_steps": 2,
            "weight_decay": 0.1, "ema": 0.9, "eval_samples": 0, "device": "cpu", "generate": "none"}


def train(data: Path, out: Path, steps: int = 4, *extra: str, tracking: str | None = None) -> Path:
    sets = {**TINY_ARC, "data_path": str(data), "steps": steps, "eval_every": steps, "checkpoint_every": steps,
            "log_every": steps}
    argv = ["train", "--out", str(out), *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")], *extra]
    argv += ["--tracking-uri", tracking] if tracking else ["--no-tracking"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    if not (ARC_DIR / "evaluation").is_dir():
        pytest.skip(f"no ARC-AGI-1 tasks at {ARC_DIR}")
    root = tmp_path_factory.mktemp("submit")
    write_kaggle(root / "src", "training", TRAIN_IDS, "training", solutions=True)
    challenges = write_kaggle(root / "src", "evaluation", EVAL_IDS, "evaluation", solutions=False)
    data = build(root / "src", root / "data")
    run = train(data, root / "run")
    return root, data, run, challenges


# ---------------------------------------------------------------- tests
@needs_arc
def test_submit_writes_the_published_format(pretrained, capsys) -> None:
    root, data, run, challenges = pretrained
    out = root / "sub" / "submission.json"
    capsys.readouterr()
    assert main(["submit", "--checkpoint", str(run), "--challenges", str(challenges), "--out", str(out),
                 "--device", "cpu", "--batch-size", "16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    raw = json.loads(challenges.read_text())
    check_submission_format(json.loads(out.read_text()), raw)
    assert summary["tasks"] == 3 and summary["test_inputs"] == sum(len(t["test"]) for t in raw.values())
    assert summary["augmented_inputs"] == 3 * summary["test_inputs"]  # identity + 2 augmentations each
    assert not [p for p in out.parent.iterdir() if p.name != "submission.json"]  # no temporary file left
    # --N-sup and --halt change the compute, never the format
    assert main(["submit", "--checkpoint", str(run), "--challenges", str(challenges), "--out", str(out),
                 "--device", "cpu", "--N-sup", "1", "--halt"]) == 0
    check_submission_format(json.loads(out.read_text()), raw)


@needs_arc
def test_submit_bad_input_is_one_error_line_and_nothing_written(pretrained, tmp_path, capsys) -> None:
    root, data, run, challenges = pretrained
    out = tmp_path / "submission.json"
    cases = []
    not_kaggle = tmp_path / "list.json"
    not_kaggle.write_text(json.dumps([{"input": [[1]]}]))
    cases.append((["--challenges", str(not_kaggle)], "Kaggle challenges format"))
    no_test = tmp_path / "notest.json"
    no_test.write_text(json.dumps({"abc": {"train": []}}))
    cases.append((["--challenges", str(no_test)], "task 'abc'"))
    unknown = write_kaggle(tmp_path / "other", "evaluation", ["0a1d4ef5"], "evaluation", solutions=False)
    cases.append((["--challenges", str(unknown)], "fine-tune"))
    cases.append((["--challenges", str(tmp_path / "missing.json")], "no such file"))
    cases.append((["--challenges", str(challenges), "--checkpoint", str(tmp_path)], "--checkpoint"))
    for argv, expected in cases:
        capsys.readouterr()
        full = ["submit", "--checkpoint", str(run), "--out", str(out), "--device", "cpu", *argv]
        assert main(full) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and expected in err[0], err
        assert not out.exists()
    with pytest.raises(SystemExit) as e:  # argparse: exit 2 naming the flag
        main(["submit", "--checkpoint", str(run), "--challenges", str(challenges), "--N-sup", "0"])
    assert e.value.code == 2 and "--N-sup" in capsys.readouterr().err
    assert not out.exists()


def test_fallback_fills_every_attempt_with_a_valid_grid(tmp_path) -> None:
    from trm.evaluate.vote import Candidate, TestVote, VoteResult

    raw = {"t1": {"train": [], "test": [{"input": [[1, 2], [3, 4]]}, {"input": [[5]]}]}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    ch = read_challenges(path)
    one = Candidate(np.array([[7, 7]]), 3, 0.5)
    tests = [TestVote("t1", 0, 0, None, None, [one], 3, 0, 1), TestVote("t1", 0, 1, None, None, [], 3, 3, 0)]
    sub = build_submission(ch, VoteResult({}, tests), {"t1": 0})
    check_submission_format(sub, raw)
    assert sub["t1"][0] == {"attempt_1": [[7, 7]], "attempt_2": [[1, 2], [3, 4]]}
    assert sub["t1"][1] == {"attempt_1": [[5]], "attempt_2": [[5]]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"t1": {"train": [], "test": [{"input": [[1, 2], [3]]}]}}))
    with pytest.raises(SubmitError, match="test input 0 is not a grid"):
        read_challenges(bad)
