"""ARC-AGI: loader and its errors, encoding, augmentation inverses, dataset build, the
augmentation vote (on planted predictions), and, marked slow, a tiny end-to-end run:
train -> vote (locally and as a Ray job) -> MLflow -> read back with a plain client.

Most tests run on the real ARC-AGI-1 tasks (800), from $TRM_ARC_DIR or ../shared/data/arc-agi-1,
and are skipped without them; the loader's error tests and the layout test need no task files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trm.data import arc
from trm.data.dataset import IGNORE, PuzzleDataset, read_meta
from trm.evaluate.task import evaluate_task
from trm.evaluate.vote import Vote, VoteResult, VoteSamples

ARC_DIR = Path(os.environ.get("TRM_ARC_DIR", Path(__file__).resolve().parents[2] / "shared/data/arc-agi-1"))
needs_arc = pytest.mark.skipif(not (ARC_DIR / "evaluation").is_dir(), reason=f"no ARC-AGI-1 tasks at {ARC_DIR}")


@pytest.fixture(scope="module")
def corpus() -> arc.ArcCorpus:
    if not (ARC_DIR / "evaluation").is_dir():
        pytest.skip(f"no ARC-AGI-1 tasks at {ARC_DIR}")
    return arc.load_tasks([ARC_DIR])


def _pick(corpus: arc.ArcCorpus, held_out: bool, n: int, tests: int = 1, min_augs: int = 0,
          seed: int = 7) -> list[arc.ArcTask]:
    """The first n tasks with `tests` test inputs (and min_augs distinct augmentations at `seed`)."""
    out = []
    for t in corpus.tasks:
        if t.held_out == held_out and len(t.test) == tests:
            plan = arc.plan_augmentations(t, min_augs, arc._task_rng(seed, t.task_id))[0] if min_augs else None
            if min_augs and len(plan) < min_augs + 1:
                continue
            out.append(t)
            if len(out) == n:
                return out
    raise AssertionError(f"fewer than {n} tasks with {tests} test inputs")


# ---------------------------------------------------------------- loading
def test_loads_all_800_tasks(corpus: arc.ArcCorpus) -> None:
    assert len(corpus.tasks) == 800 and not corpus.skipped
    assert sum(t.held_out for t in corpus.tasks) == 400  # the evaluation folder
    assert len({t.task_id for t in corpus.tasks}) == 800
    grids = [g for t in corpus.tasks for g in t.grids()]
    assert all(g.dtype == np.uint8 and g.ndim == 2 and max(g.shape) <= 30 and g.max() <= 9 for g in grids)
    assert sum(len(t.test) for t in corpus.tasks) == 835


@needs_arc
def test_sources_can_be_mixed_and_ids_are_qualified_on_collision(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "evaluation", tmp_path / "b" / "deep" / "nested"
    a.mkdir(parents=True), b.mkdir(parents=True)
    src = ARC_DIR / "evaluation" / "00576224.json"
    shutil.copy(src, a / "x.json"), shutil.copy(src, b / "x.json"), shutil.copy(src, b / "y.json")
    c = arc.load_tasks([tmp_path / "a", tmp_path / "b"])
    assert sorted(t.task_id for t in c.tasks) == ["a/evaluation/x", "b/deep/nested/x", "y"]
    assert [t.held_out for t in c.tasks] == [True, False, False]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4]]}], "test": [{"input": [[0]], "output": [[1, 1]]}]}


@pytest.mark.parametrize("name, content, expected", [
    ("notjson.json", "{'train': [}", "not valid JSON"),
    ("notask.json", "[1, 2, 3]", "expected a JSON object"),
    ("notrain.json", json.dumps({"test": GOOD["test"]}), "missing 'train'"),
    ("notest.json", json.dumps({"train": GOOD["train"]}), "missing 'test'"),
    ("emptytest.json", json.dumps({**GOOD, "test": []}), "'test' list is empty"),
    ("ragged.json", json.dumps({**GOOD, "train": [{"input": [[1, 2], [3]], "output": [[1]]}]}),
     "train[0].input: row 1 has 1 cells, row 0 has 2 (ragged grid)"),
    ("colour10.json", json.dumps({**GOOD, "test": [{"input": [[0]], "output": [[10]]}]}),
     "test[0].output: colour 10 outside 0-9"),
    ("negative.json", json.dumps({**GOOD, "test": [{"input": [[-1]], "output": [[1]]}]}), "colour -1 outside 0-9"),
    ("float.json", json.dumps({**GOOD, "test": [{"input": [[1.5]], "output": [[1]]}]}), "1.5 is not an integer"),
    ("big.json", json.dumps({**GOOD, "train": [{"input": [[0] * 31] * 2, "output": [[1]]}]}),
     "grid is 2x31, larger than 30x30"),
    ("tall.json", json.dumps({**GOOD, "train": [{"input": [[0]] * 31, "output": [[1]]}]}), "31x1, larger"),
    ("nooutput.json", json.dumps({**GOOD, "test": [{"input": [[0]]}]}), "test[0] has no 'output' grid"),
    ("emptygrid.json", json.dumps({**GOOD, "test": [{"input": [], "output": [[1]]}]}), "non-empty list of rows"),
])
def test_bad_input_names_file_and_problem(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(arc.ArcError) as e:
        arc.load_tasks([tmp_path])
    assert str(path) in str(e.value) and expected in str(e.value), str(e.value)


def test_skip_invalid_warns_and_counts(tmp_path: Path) -> None:
    _write(tmp_path, "good.json", json.dumps(GOOD))
    _write(tmp_path, "bad1.json", "nope")
    _write(tmp_path, "bad2.json", json.dumps({**GOOD, "test": []}))
    with pytest.warns(arc.ArcWarning) as w:
        c = arc.load_tasks([tmp_path], skip_invalid=True)
    assert [t.task_id for t in c.tasks] == ["good"]
    assert len(c.skipped) == 2 and len(w) == 2
    assert {Path(f).name for f, _ in c.skipped} == {"bad1.json", "bad2.json"}
    with pytest.raises(arc.ArcError, match="no such file or folder"):
        arc.load_tasks([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(arc.ArcError, match="no \\*.json task files"):
        arc.load_tasks([tmp_path / "empty"])


# ---------------------------------------------------------------- transforms and encoding
def test_every_transform_inverts_exactly_on_every_grid(corpus: arc.ArcCorpus) -> None:
    rng = np.random.default_rng(0)
    asym = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert len({arc.dihedral(asym, d).tobytes() + bytes(arc.dihedral(asym, d).shape) for d in range(8)}) == 8
    n = 0
    for task in corpus.tasks:
        D, C = arc.plan_augmentations(task, 8, rng)
        augs = [arc.Augmentation(int(d), c) for d, c in zip(D, C)]
        for g in task.grids():
            for d in range(8):
                assert np.array_equal(arc.inverse_dihedral(arc.dihedral(g, d), d), g)
            for a in augs:  # the task's own augmentations: dihedral + colour permutation
                assert np.array_equal(a.invert(a.apply(g)), g)
                n += 1
    assert n > 50_000


def test_augmentation_plan(corpus: arc.ArcCorpus) -> None:
    task = next(t for t in corpus.tasks if t.task_id == "007bbfb7")
    D, C = arc.plan_augmentations(task, 50, arc._task_rng(3, task.task_id))
    D2, C2 = arc.plan_augmentations(task, 50, arc._task_rng(3, task.task_id))
    assert np.array_equal(D, D2) and np.array_equal(C, C2)  # deterministic from the seed
    assert D[0] == 0 and np.array_equal(C[0], np.arange(10))  # identity first
    assert (C[:, 0] == 0).all() and all(sorted(c) == list(range(10)) for c in C)  # background kept, permutations
    augmented = {b"".join(arc.Augmentation(int(d), c).apply(g).tobytes() for g in task.grids()) for d, c in zip(D, C)}
    assert len(augmented) == len(D) == 51  # all distinct
    # a task using one colour has at most 8 * 9 = 72 distinct augmentations
    one = next(t for t in corpus.tasks if len(set(np.concatenate([g.ravel() for g in t.grids()])) - {0}) == 1)
    assert 1 < len(arc.plan_augmentations(one, 1000, np.random.default_rng(0))[0]) <= 72


def test_encode_decode_identity_on_every_grid(corpus: arc.ArcCorpus) -> None:
    rng = np.random.default_rng(1)
    grids = [g for t in corpus.tasks for g in t.grids()]
    for g in grids:
        tok = arc.encode(g)
        assert tok.shape == (1, 900) and tok.dtype == np.uint8
        assert np.array_equal(arc.decode(tok[0]), g)
        h, w = g.shape
        off = np.array([[rng.integers(0, 31 - h), rng.integers(0, 31 - w)]])
        assert np.array_equal(arc.decode(arc.encode(g, off)[0], tuple(off[0])), g)
        lab = arc.to_labels(tok[0])
        assert np.array_equal(arc.decode(lab), g)  # labels decode too (pad is IGNORE)
    decoded = arc.decode_batch(np.concatenate([arc.encode(g) for g in grids[:500]]))
    assert all(np.array_equal(d, g) for d, g in zip(decoded, grids[:500]))


def test_reference_layout_and_invalid_predictions() -> None:
    g = np.array([[0, 1, 2], [3, 4, 5]], np.uint8)
    c = arc.encode(g)[0].reshape(30, 30)
    assert (c[:2, :3] == g + 2).all() and (c[2, :3] == 1).all() and (c[:2, 3] == 1).all()
    assert c[2, 3] == 0 and (c[3:] == 0).all() and (c[:, 4:] == 0).all()  # corner and beyond: pad
    lab = arc.to_labels(c.ravel())
    assert lab.dtype == np.int8 and (lab[c.ravel() == 0] == IGNORE).all() and (lab[c.ravel() != 0] >= 1).all()
    full = arc.encode(np.zeros((30, 30), np.uint8))[0]
    assert (full == 2).all() and arc.decode(full).shape == (30, 30)  # no room for eos markers: none needed
    bad = {"all pad": np.zeros(900, np.uint8),
           "eos at origin": np.ones(900, np.uint8)}
    broken = c.copy()
    broken[1, 2] = 0  # a hole in the grid
    bad["hole"] = broken.ravel()
    broken = c.copy()
    broken[2, 1] = 5  # a colour where the bottom eos marker belongs
    bad["no bottom eos"] = broken.ravel()
    broken = c.copy()
    broken[1, 3] = 0  # right eos marker missing
    bad["no right eos"] = broken.ravel()
    for name, tokens in bad.items():
        assert arc.decode(tokens) is None, name
        assert arc.decode_batch(tokens[None])[0] is None, name
    noisy = c.copy()
    noisy[10:, 10:] = 7  # tokens in the (unscored) pad area do not matter
    assert np.array_equal(arc.decode(noisy.ravel()), g)


# ---------------------------------------------------------------- dataset build
@pytest.fixture(scope="module")
def small(corpus: arc.ArcCorpus, tmp_path_factory) -> tuple[Path, list[arc.ArcTask]]:
    tasks = _pick(corpus, False, 2) + _pick(corpus, True, 4, min_augs=9) + _pick(corpus, True, 2, tests=2, min_augs=9)
    out = tmp_path_factory.mktemp("arc") / "small"
    arc.build_dataset(out, tasks, 9, seed=7)
    return out, tasks


def test_build_layout_and_puzzle_ids(small) -> None:
    path, tasks = small
    meta = read_meta(path)
    assert (meta["name"], meta["vocab_size"], meta["seq_len"]) == ("arc", 12, 900)
    assert meta["task_ids"] == [t.task_id for t in tasks] and meta["task_num_augmentations"] == [10] * len(tasks)
    assert meta["num_puzzle_ids"] == 1 + 10 * len(tasks)  # id 0 is the blank
    train, test = PuzzleDataset(path, "train"), PuzzleDataset(path, "test")
    n_train = sum(10 * (len(t.train) + (0 if t.held_out else len(t.test))) for t in tasks)
    assert len(train) == n_train and len(test) == 10 * sum(len(t.test) for t in tasks if t.held_out)
    pid_train = np.asarray(train.arrays["puzzle_ids"])
    assert pid_train.min() == 1 and pid_train.max() == meta["num_puzzle_ids"] - 1
    # every test sample's puzzle id belongs to its task and augmentation, as in training
    first = np.array(meta["task_first_puzzle_id"])
    a = {k: np.asarray(v) for k, v in test.arrays.items()}
    assert np.array_equal(a["puzzle_ids"], first[a["task_index"]] + a["aug_index"])
    assert set(a["puzzle_ids"]) <= set(pid_train)
    # test rows invert exactly to the task's test pairs
    samples = VoteSamples.from_dataset(test)
    for row in range(len(test)):
        task = tasks[a["task_index"][row]]
        inp, out = task.test[a["test_index"][row]]
        assert np.array_equal(samples.invert(row, arc.decode(a["inputs"][row])), inp)
        assert np.array_equal(samples.invert(row, arc.decode(a["labels"][row])), out)
    # training rows: translated, still well-formed; labels ignore pad only
    x, y = np.asarray(train.arrays["inputs"]), np.asarray(train.arrays["labels"])
    assert ((y == IGNORE) | ((y >= 1) & (y <= 11))).all() and (x <= 11).all()
    shifted = 0
    for row in range(len(train)):
        nz = np.argwhere(x[row].reshape(30, 30) >= 2)
        r0, c0 = nz.min(0)
        shifted += (r0, c0) != (0, 0)
        assert arc.decode(x[row], (r0, c0)) is not None and arc.decode(y[row], (r0, c0)) is not None
    assert shifted > len(train) // 2


def test_build_is_deterministic_and_streams(small, tmp_path: Path) -> None:
    path, tasks = small
    again = arc.build_dataset(tmp_path / "again", tasks, 9, seed=7, chunk=7)  # tiny chunks: many appends
    other = arc.build_dataset(tmp_path / "other", tasks, 9, seed=8)
    for split in ("train", "test"):
        for f in (path / split).glob("*.npy"):
            assert f.read_bytes() == (again / split / f.name).read_bytes(), f.name
    assert (path / "train/inputs.npy").read_bytes() != (other / "train/inputs.npy").read_bytes()
    with pytest.raises(arc.DatasetError, match="already exists"):
        arc.build_dataset(tmp_path / "again", tasks, 1)
    with pytest.raises(arc.ArcError, match="no held-out tasks"):
        arc.build_dataset(tmp_path / "none", [t for t in tasks if not t.held_out], 1)


@needs_arc
def test_cli_run(tmp_path: Path) -> None:
    for folder, names in (("training", ["007bbfb7", "00d62c1b"]), ("evaluation", ["00576224", "009d5c81"])):
        (tmp_path / "src" / folder).mkdir(parents=True)
        for n in names:
            shutil.copy(ARC_DIR / folder / f"{n}.json", tmp_path / "src" / folder)
    (tmp_path / "src" / "training" / "broken.json").write_text("{")
    parser = arc.add_args(argparse.ArgumentParser())
    args = parser.parse_args(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--augmentations", "3"])
    with pytest.raises(arc.ArcError, match="broken.json: not valid JSON"):
        arc.run(args)
    src = tmp_path / "src"
    args = parser.parse_args(["--src", str(src / "training"), "--src", str(src / "evaluation"),
                              "--out", str(tmp_path / "ds"), "--augmentations", "3", "--seed", "1", "--skip-invalid"])
    with pytest.warns(arc.ArcWarning, match="broken.json"):
        out = arc.run(args)
    meta = read_meta(out)
    assert meta["task_ids"] == ["007bbfb7", "00d62c1b", "00576224", "009d5c81"]
    assert meta["task_held_out"] == [False, False, True, True] and len(meta["skipped_files"]) == 1
    assert meta["augmentations"] == 3 and meta["seed"] == 1
    with pytest.raises(arc.DatasetError, match="already exists"):  # checked before reading any task
        arc.run(args)
    args.overwrite, args.skip_invalid = True, False
    args.src = [str(tmp_path / "src" / "evaluation")]  # tasks held out by the source's own name
    assert read_meta(arc.run(args))["task_held_out"] == [True, True]


# ---------------------------------------------------------------- the vote
def _correct_tokens(ds: PuzzleDataset) -> np.ndarray:
    labels = np.asarray(ds.arrays["labels"])
    return np.where(labels == IGNORE, 0, labels).astype(np.uint8)


def _aug_tokens(samples: VoteSamples, row: int, grid: np.ndarray) -> np.ndarray:
    """`grid` (original frame) as the model would answer it on augmented copy `row`."""
    return arc.encode(arc.Augmentation(int(samples.dihedral[row]), samples.colors[row]).apply(grid))[0]


def _wrong(target: np.ndarray, k: int) -> np.ndarray:
    w = target.copy()
    w.flat[k % w.size] = (w.flat[k % w.size] + 1 + k // w.size) % 10
    return w


def vote(tokens: np.ndarray, confidence: np.ndarray, samples: VoteSamples, rows: np.ndarray) -> VoteResult:
    """Planted predictions for `rows`, voted as evaluate_task votes on each chunk."""
    v = Vote(samples)
    v.add(rows, tokens, confidence)
    return v.result()


def test_vote_picks_majority_and_pass_at_2_counts_second(small) -> None:
    path, _ = small
    ds = PuzzleDataset(path, "test")
    s = VoteSamples.from_dataset(ds)
    rows = np.flatnonzero((s.task_index == s.task_index[0]) & (s.test_index == 0))  # one test input, 10 copies
    target = s.targets[(int(s.task_index[0]), 0)]
    wrong = _wrong(target, 0)
    tokens = np.stack([_aug_tokens(s, r, wrong if i < 6 else target) for i, r in enumerate(rows)])
    r = vote(tokens, np.full(len(rows), 0.5), s, rows)
    (t,) = r.tests
    assert [c.votes for c in t.candidates] == [6, 4] and np.array_equal(t.candidates[0].grid, wrong)
    assert not t.correct_at(1) and t.correct_at(2)
    assert r.metrics["eval/pass_at_1"] == 0 and r.metrics["eval/pass_at_2"] == 1
    # equal votes: the halting head's mean confidence breaks the tie
    tokens = np.stack([_aug_tokens(s, r_, wrong if i < 5 else target) for i, r_ in enumerate(rows)])
    conf = np.where(np.arange(len(rows)) < 5, 0.2, 0.9)
    assert vote(tokens, conf, s, rows).tests[0].correct_at(1)
    assert not vote(tokens, 1 - conf, s, rows).tests[0].correct_at(1)
    # rows may arrive in any order and in pieces
    v = Vote(s)
    perm = np.random.default_rng(0).permutation(len(rows))
    v.add(rows[perm[:3]], tokens[perm[:3]], conf[perm[:3]])
    v.add(rows[perm[3:]], tokens[perm[3:]], conf[perm[3:]])
    assert v.result().tests[0].correct_at(1)


def planted_model(samples: VoteSamples, plan: dict[tuple[int, int], tuple[float, float]], seed: int = 0):
    """A fake predictor: on each test input, answers correctly on a `correct` fraction of the
    augmented copies, gives one shared wrong answer on a `wrong` fraction, and otherwise
    noise: distinct wrong grids (one vote each) or no valid grid at all. The halting head is
    planted too: 0.5 on right and shared-wrong answers, 0.7 on noise, so a lone right answer
    ranks below the noise (confidence breaks ties in votes)."""
    rng = np.random.default_rng(seed)

    def predict_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.zeros((len(rows), 900), np.uint8)
        conf = np.full(len(rows), 0.5)
        for key, (fc, fw) in plan.items():
            mine = rows[(samples.task_index[rows] == key[0]) & (samples.test_index[rows] == key[1])]
            mine = mine[np.argsort(samples.aug_index[mine])]
            nc, nw = round(fc * len(mine)), round(fw * len(mine))
            target = samples.targets[key]
            for i, row in enumerate(mine):
                at = np.flatnonzero(rows == row)[0]
                if i < nc:
                    tokens[at] = _aug_tokens(samples, row, target)
                elif i < nc + nw:
                    tokens[at] = _aug_tokens(samples, row, _wrong(target, 0))
                elif i % 2:
                    tokens[at] = _aug_tokens(samples, row, _wrong(target, 1 + i))  # distinct noise
                    conf[at] = 0.7
                else:
                    tokens[at] = rng.integers(0, 12, 900) * (rng.random(900) < 0.5)
                    tokens[at].reshape(30, 30)[0, 0] = 0  # garbage that cannot decode
        return tokens, conf

    return predict_rows


def test_planted_model_scores_exactly(small) -> None:
    path, tasks = small
    ds = PuzzleDataset(path, "test")
    s = VoteSamples.from_dataset(ds)
    keys = sorted(s.targets)
    # (correct fraction, shared-wrong fraction) -> (pass@1, pass@2) with 10 copies per input
    patterns = [((0.6, 0.2), (True, True)), ((0.3, 0.5), (False, True)), ((0.0, 0.4), (False, False)),
                ((0.2, 0.0), (True, True)), ((0.0, 0.0), (False, False)), ((0.3, 0.2), (True, True)),
                ((0.1, 0.0), (False, False)), ((1.0, 0.0), (True, True))]
    plan = {k: patterns[i % len(patterns)][0] for i, k in enumerate(keys)}
    expect = {k: patterns[i % len(patterns)][1] for i, k in enumerate(keys)}
    model = planted_model(s, plan)
    rows = np.arange(len(ds))
    tokens, conf = model(rows)
    r = vote(tokens, conf, s, rows)

    assert len(r.tests) == len(keys) == 8
    got = {(t.task_index, t.test_index): (t.correct_at(1), t.correct_at(2)) for t in r.tests}
    assert got == expect
    per_task: dict[int, list] = {}
    for k, v in expect.items():
        per_task.setdefault(k[0], []).append(v)
    want = {"eval/pass_at_1": np.mean([v[0] for v in expect.values()]),
            "eval/pass_at_2": np.mean([v[1] for v in expect.values()]),
            "eval/task_pass_at_1": np.mean([all(v[0] for v in vs) for vs in per_task.values()]),
            "eval/task_pass_at_2": np.mean([all(v[1] for v in vs) for vs in per_task.values()]),
            "eval/arc_score": np.mean([np.mean([v[1] for v in vs]) for vs in per_task.values()]),
            "eval/num_augmentations": 10.0, "eval/num_test_inputs": 8.0, "eval/num_tasks": 6.0}
    for k, v in want.items():
        assert r.metrics[k] == pytest.approx(v), k
    assert want["eval/task_pass_at_2"] < want["eval/pass_at_2"]  # a 2-input task with one miss does not count
    table = r.table()
    assert len(table["task_id"]) == 8 and set(table["task_id"]) == {t.task_id for t in tasks if t.held_out}
    i = table["task_id"].index(s.task_ids[keys[0][0]])
    assert table["winner_votes"][i] == 6 and table["second_votes"][i] == 2 and table["top1_correct"][i]
    assert 0 < r.metrics["eval/valid_fraction"] < 1


def test_evaluate_arc_runs_the_model(small) -> None:
    import torch

    from trm.config import ModelConfig
    from trm.model import TRM

    path, _ = small
    meta = read_meta(path)
    torch.manual_seed(0)
    model = TRM(ModelConfig(hidden=16, heads=2, layers=1, n=1, T=1, N_sup=1, puzzle_emb_ndim=16, puzzle_emb_len=1),
                meta["vocab_size"], meta["seq_len"], meta["num_puzzle_ids"])
    r = evaluate_task(model, PuzzleDataset(path, "test"), 32, "cpu", limit=25, keep_predictions=True).vote
    assert r.predictions is not None and len(r.predictions.index) == 25
    assert sum(t.predictions for t in r.tests) == 25
    assert r.metrics["eval/pass_at_2"] == 0.0  # an untrained model solves nothing
    wrong = TRM(ModelConfig(hidden=16, heads=2, layers=1, n=1, T=1, N_sup=1, puzzle_emb_ndim=16, puzzle_emb_len=1),
                12, 900, 5)
    with pytest.raises(arc.DatasetError, match="num_puzzle_ids"):
        evaluate_task(wrong, PuzzleDataset(path, "test"), 32, "cpu")


# ---------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_tiny_arc_run_end_to_end(corpus: arc.ArcCorpus, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from trm.config import Config
    from trm.tracking import Tracker
    from trm.tracking.arc import FIGURE_FILE, TABLE_FILE, log_vote_result
    from trm.train.loop import Trainer
    from trm.train.session import LocalSession

    tasks = _pick(corpus, False, 2) + _pick(corpus, True, 2)
    data = arc.build_dataset(tmp_path / "arc", tasks, 3, seed=0)
    cfg = Config()
    m, t, d = cfg.model, cfg.train, cfg.data
    m.hidden, m.heads, m.layers, m.n, m.T, m.N_sup = 32, 2, 1, 1, 1, 2
    m.puzzle_emb_ndim, m.puzzle_emb_len = 32, 1
    t.steps, t.batch_size, t.lr, t.lr_warmup_steps, t.weight_decay = 24, 4, 1e-3, 5, 0.1
    t.eval_every = t.checkpoint_every = 24
    t.log_every, t.eval_samples, t.device, t.ema = 10, 0, "cpu", 0.9
    d.path, d.generate = str(data), "none"
    cfg.validate()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("arc-e2e", artifact_location=str(tmp_path / "artifacts"))
    tracker = Tracker.create(uri, "arc-e2e", run_name="tiny")
    session = LocalSession(tmp_path / "run", tracker=tracker)
    trainer = Trainer(cfg, session)
    metrics = trainer.fit()
    assert trainer.step == 24 and np.isfinite(metrics["train/loss"])

    result = evaluate_task(trainer.eval_model, PuzzleDataset(data, "test"), 16, "cpu", keep_predictions=True).vote
    assert result.metrics["eval/num_augmentations"] == 4.0 and result.metrics["eval/num_tasks"] == 2.0
    log_vote_result(tracker, result, data, step=trainer.step)
    tracker.end()

    # read back with a plain client
    run = MlflowClient(uri).get_run(tracker.run_id)
    for k in ("eval/pass_at_1", "eval/pass_at_2", "eval/task_pass_at_1", "eval/task_pass_at_2",
              "eval/num_augmentations"):
        assert run.data.metrics[k] == pytest.approx(result.metrics[k]), k
    assert "val/exact_accuracy" in run.data.metrics and "train/loss" in run.data.metrics
    table_file = MlflowClient(uri).download_artifacts(tracker.run_id, TABLE_FILE, str(tmp_path / "dl"))
    table = json.loads(Path(table_file).read_text())  # pandas "split" layout: columns + rows
    df = {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}
    assert sorted(df["task_id"]) == sorted(t.task_id for t in tasks if t.held_out)
    assert df["step"] == [24] * len(df["task_id"])
    for col in ("top1_correct", "top2_correct", "winner_votes", "second_votes", "predictions"):
        assert df[col] == result.table()[col], col
    names = {a.path for a in MlflowClient(uri).list_artifacts(tracker.run_id, "eval")}
    assert {TABLE_FILE, FIGURE_FILE} <= names
    png = Path(MlflowClient(uri).download_artifacts(tracker.run_id, FIGURE_FILE, str(tmp_path / "dl")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- Kaggle-style combined files (no task files needed)
def _rand_task(rng: np.random.Generator, n_train: int = 2, n_test: int = 1) -> dict:
    def grid():
        h, w = rng.integers(1, 6, size=2)
        return rng.integers(0, 10, size=(h, w)).tolist()
    return {"train": [{"input": grid(), "output": grid()} for _ in range(n_train)],
            "test": [{"input": grid(), "output": grid()} for _ in range(n_test)]}


def _subsets(seed: int = 0) -> dict[str, dict[str, dict]]:
    rng = np.random.default_rng(seed)
    return {"training": {"b1": _rand_task(rng), "a0": _rand_task(rng, 3, 2)},
            "evaluation": {"e2": _rand_task(rng, 2, 2), "e1": _rand_task(rng, 1)}}


def _write_combined(folder: Path, subsets: dict, prefix: str = "arc-agi", solutions: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, tasks in subsets.items():
        challenges = {i: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]}
                      for i, t in tasks.items()}
        (folder / f"{prefix}_{name}_challenges.json").write_text(json.dumps(challenges))
        if solutions:
            (folder / f"{prefix}_{name}_solutions.json").write_text(
                json.dumps({i: [p["output"] for p in t["test"]] for i, t in tasks.items()}))


def _write_per_task(folder: Path, subsets: dict) -> None:
    for name, tasks in subsets.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, t in tasks.items():
            (folder / name / f"{i}.json").write_text(json.dumps(t))


def _arc_cli(*argv: str) -> Path:
    return arc.run(arc.add_args(argparse.ArgumentParser()).parse_args(
        [*argv, "--augmentations", "4", "--seed", "3"]))


def _same_dataset(a: Path, b: Path) -> None:
    ma, mb = read_meta(a), read_meta(b)
    for k in ("task_ids", "task_held_out", "task_subsets", "num_puzzle_ids", "splits", "groups",
              "task_first_puzzle_id", "task_num_augmentations", "unlabelled_tasks"):
        assert ma[k] == mb[k], k
    for split in ("train", "test"):
        names = sorted(f.name for f in (a / split).glob("*.npy"))
        assert names == sorted(f.name for f in (b / split).glob("*.npy"))
        for n in names:
            assert (a / split / n).read_bytes() == (b / split / n).read_bytes(), f"{split}/{n}"


def test_combined_files_build_the_same_dataset_as_per_task_files(tmp_path: Path) -> None:
    subsets = _subsets()
    _write_per_task(tmp_path / "tasks", subsets)
    _write_combined(tmp_path / "kaggle" / "combined", subsets)
    k = tmp_path / "kaggle" / "combined"
    per_task = _arc_cli("--src", str(tmp_path / "tasks" / "training"), "--src", str(tmp_path / "tasks" / "evaluation"),
                        "--out", str(tmp_path / "per_task"))
    files = _arc_cli("--src", str(k / "arc-agi_training_challenges.json"),
                     "--src", str(k / "arc-agi_evaluation_challenges.json"), "--out", str(tmp_path / "files"))
    folder = _arc_cli("--src", str(k), "--out", str(tmp_path / "folder"))  # was: "missing 'train' list"
    meta = read_meta(per_task)
    assert meta["task_ids"] == ["a0", "b1", "e1", "e2"] and meta["task_held_out"] == [False, False, True, True]
    assert meta["task_subsets"] == ["training", "training", "evaluation", "evaluation"]
    _same_dataset(per_task, files)
    # one folder of each kind: both list evaluation before training (sorted paths)
    tree = _arc_cli("--src", str(tmp_path / "tasks"), "--out", str(tmp_path / "tree"))
    assert read_meta(tree)["task_ids"] == ["e1", "e2", "a0", "b1"]
    _same_dataset(tree, folder)
    # groups: one per task; a puzzle = (task, augmentation) with all its training pairs
    tr = PuzzleDataset(per_task, "train")
    pairs = [5, 3, 1, 2]  # a0: 3 demos + 2 tests trained on, b1: 2 + 1; held-out e1, e2: their demos only
    assert meta["groups"]["train"]["total_groups"] == 4
    assert meta["groups"]["train"]["epoch_samples"] == sum(pairs)
    g, a = np.asarray(tr.arrays["group_ids"]), np.asarray(tr.arrays["aug_ids"])
    for t, n in enumerate(pairs):
        counts = np.bincount(a[g == t])
        assert (counts == n).all() and len(counts) == meta["task_num_augmentations"][t]
    te = PuzzleDataset(per_task, "test")
    assert np.array_equal(np.asarray(te.arrays["group_ids"]), np.asarray(te.arrays["task_index"]))
    assert np.asarray(te.arrays["labelled"]).all()
    # a per-task folder and a challenges file mix
    mixed = _arc_cli("--src", str(tmp_path / "tasks" / "training"),
                     "--src", str(k / "arc-agi_evaluation_challenges.json"), "--out", str(tmp_path / "mixed"))
    _same_dataset(per_task, mixed)


def test_missing_solutions_training_split_error_test_split_unlabelled(tmp_path: Path) -> None:
    subsets = _subsets()
    _write_combined(tmp_path / "k", subsets, solutions=False)
    with pytest.raises(arc.ArcError) as e:
        _arc_cli("--src", str(tmp_path / "k"), "--out", str(tmp_path / "ds"))
    msg = str(e.value)
    assert str(tmp_path / "k" / "arc-agi_training_challenges.json") in msg and "task a0" in msg, msg
    assert "arc-agi_training_solutions.json" in msg and not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # nothing half-written
    # only the held-out subset: its test outputs are unknown, its rows unlabelled
    out = _arc_cli("--src", str(tmp_path / "k" / "arc-agi_evaluation_challenges.json"), "--out", str(tmp_path / "ds"))
    meta = read_meta(out)
    assert meta["unlabelled_tasks"] == ["e1", "e2"] and meta["task_held_out"] == [True, True]
    te = PuzzleDataset(out, "test")
    assert len(te) == 5 * 3 and not np.asarray(te.arrays["labelled"]).any()
    assert (np.asarray(te.arrays["labels"]) == IGNORE).all()
    assert arc.decode(np.asarray(te.arrays["inputs"][0])) is not None
    assert len(PuzzleDataset(out, "train")) == 5 * 3  # demonstrations are still trained on


def test_bad_solutions_name_file_and_task(tmp_path: Path) -> None:
    _write_combined(tmp_path, _subsets())
    sol = tmp_path / "arc-agi_training_solutions.json"
    good = json.loads(sol.read_text())
    for bad, needle in (({**good, "a0": [good["a0"][0]]}, "task a0: expected a list of 2 output grid(s), one per "
                                                         "test input, got 1 entries"),
                        ({"b1": good["b1"]}, "no solutions for task a0"),
                        ({**good, "b1": [[[1, 12]]]}, "task b1: solution 0: colour 12 outside 0-9"),
                        ([], "expected a JSON object")):
        sol.write_text(json.dumps(bad))
        with pytest.raises(arc.ArcError) as e:
            arc.load_tasks([tmp_path / "arc-agi_training_challenges.json"])
        assert str(sol) in str(e.value) and needle in str(e.value), str(e.value)
    (tmp_path / "arc-agi_training_challenges.json").unlink()
    with pytest.raises(arc.ArcError, match="a solutions file without its challenges file"):
        arc.load_tasks([tmp_path])


def test_subset_names_and_test_sets_as_the_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arc2 = {"training2": {"t2": _rand_task(rng)}, "evaluation2": {"v2": _rand_task(rng)},
            "concept": {"c1": _rand_task(rng)}}
    _write_combined(tmp_path / "k", {**_subsets(), **arc2})
    with pytest.raises(arc.ArcError, match="both ARC-AGI-1 .* and ARC-AGI-2 .*--subsets"):
        arc.load_tasks([tmp_path / "k"])
    c = arc.load_tasks([tmp_path / "k"], subsets=["training", "evaluation", "concept"])
    assert {t.task_id: t.held_out for t in c.tasks} == {"c1": False, "e1": True, "e2": True, "a0": False, "b1": False}
    c = arc.load_tasks([tmp_path / "k"], subsets=["training2", "evaluation2", "concept"])  # default test sets
    assert {t.task_id: t.held_out for t in c.tasks} == {"c1": False, "v2": True, "t2": False}
    c = arc.load_tasks([tmp_path / "k"], test_set=["concept"], subsets=["training2", "concept"])
    assert {t.task_id: t.held_out for t in c.tasks} == {"c1": True, "t2": False}
    with pytest.raises(arc.ArcError, match="--subsets evaluation3: no"):
        arc.load_tasks([tmp_path / "k"], subsets=["training", "evaluation3"])
    out = _arc_cli("--src", str(tmp_path / "k"), "--subsets", "training2", "concept", "--test-set", "concept",
                   "--out", str(tmp_path / "ds"))
    assert read_meta(out)["test_sets"] == ["concept"] and read_meta(out)["subsets"] == ["concept", "training2"]


# ---------------------------------------------------------------- vote during training, best kept, inference compute
def test_unlabelled_rows_are_voted_not_scored(tmp_path: Path) -> None:
    """Held-out tasks whose test outputs are unknown (a challenges file without solutions): the vote
    still ranks their candidates (what `trm submit` needs), scores leave them out, and plain accuracy
    does not count their all-IGNORE rows as exact."""
    from trm.evaluate import Predictions, score

    subsets = _subsets()
    _write_combined(tmp_path / "k", subsets, solutions=True)
    (tmp_path / "k" / "arc-agi_evaluation_solutions.json").unlink()
    out = _arc_cli("--src", str(tmp_path / "k"), "--out", str(tmp_path / "ds"), "--test-set", "evaluation",
                   "--test-set", "training")
    # held out: training (labelled) and evaluation (no solutions file: unlabelled)
    ds = PuzzleDataset(out, "test")
    s = VoteSamples.from_dataset(ds)
    assert {s.task_ids[k[0]] for k in s.unlabelled} == {"e1", "e2"} and len(s.targets) == 3
    rows = np.arange(len(ds))
    tokens = np.stack([_aug_tokens(s, r, s.targets.get((int(s.task_index[r]), int(s.test_index[r])),
                                                       s.inputs[(int(s.task_index[r]), int(s.test_index[r]))]))
                       for r in rows])
    r = vote(tokens, np.full(len(rows), 0.5), s, rows)
    assert len(r.tests) == 6 and all(t.candidates for t in r.tests)  # every input voted on
    assert r.metrics["eval/num_tasks"] == 2 and r.metrics["eval/task_pass_at_2"] == 1.0  # only a0, b1 scored
    sums = score(Predictions(rows, tokens, np.ones(len(rows), int), np.ones(len(rows))), ds)
    assert sums["samples"] == float(np.asarray(ds.arrays["labelled"]).sum()) == sums["exact"]


def test_objective_by_dataset_kind() -> None:
    from trm.evaluate.objective import objective_for

    def metric_of(meta):
        return objective_for(meta, select=False).name  # as reported; what ranks is its select/ twin

    assert objective_for({"name": "arc"}).name == "select/eval/task_pass_at_2"
    assert metric_of({"name": "arc"}) == "eval/task_pass_at_2"
    assert metric_of({"name": "maze"}) == "eval/maze_valid_path_accuracy"
    assert metric_of({"name": "sudoku"}) == metric_of(None) == "val/exact_accuracy"


def test_trainer_votes_and_eval_matches_training(small, tmp_path: Path, capsys) -> None:
    """A tiny ARC run: every evaluation is the vote over all test inputs x augmentations, logged as
    eval/* with the time it took; `trm eval` on the checkpoint prints the same numbers; --N-sup,
    --halt and --curve change the compute as asked."""
    from trm.cli import main
    from trm.config import load_config
    from trm.train.loop import Trainer
    from trm.train.session import LocalSession

    path, _ = small
    cfg = load_config(None, {"hidden": 16, "heads": 2, "expansion": 2, "layers": 1, "n": 1, "T": 1, "N_sup": 3,
                             "puzzle_emb_ndim": 16, "puzzle_emb_len": 1, "batch_size": 8, "steps": 4,
                             "eval_every": 2, "checkpoint_every": 2, "log_every": 2, "eval_samples": 16,
                             "ema": 0.9, "device": "cpu", "data_path": str(path), "generate": "none"})
    reports = []
    trainer = Trainer(cfg, LocalSession(tmp_path / "run", on_report=lambda m, s: reports.append(dict(m))))
    trainer.fit()
    last = reports[-1]
    assert last["eval/num_augmentations"] == 10.0  # all rows, not 16: the reported ones and the selection's
    assert last["eval/num_test_inputs"] + last["select/eval/num_test_inputs"] == 8
    assert last["score"] == last["select/eval/task_pass_at_2"] and last["eval/seconds"] > 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--latest", "--batch-size", "8", "--device",
                 "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for k in ("eval/pass_at_1", "eval/pass_at_2", "eval/task_pass_at_2", "eval/valid_fraction",
              "val/exact_accuracy", "val/cell_accuracy", "val/mean_halt_steps"):
        assert printed[k] == pytest.approx(last[k]), k
        assert printed["select/" + k] == pytest.approx(last["select/" + k]), k
    assert printed["step"] == 4 and printed["metric"] == "select/eval/task_pass_at_2"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--batch-size", "8", "--device", "cpu",
                 "--N-sup", "5", "--curve", "--halt"]) == 0
    curved = json.loads(capsys.readouterr().out)
    assert curved["eval/supervision_steps"] == 5 and list(curved["curve"]) == ["1", "2", "3", "4", "5"]
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", str(tmp_path / "run"), "--N-sup", "0"])
    assert e.value.code == 2 and "--N-sup" in capsys.readouterr().err


def test_halt_freezes_the_answer_at_the_halting_step(small) -> None:
    """--halt: a sample's answer is the one of the first step whose halting logit is > 0; curve: the
    answer after each step, whose last equals the plain prediction."""
    import torch

    from trm.config import ModelConfig
    from trm.evaluate import predict
    from trm.model import TRM

    path, _ = small
    ds = PuzzleDataset(path, "test")
    meta = ds.meta
    torch.manual_seed(0)
    model = TRM(ModelConfig(hidden=16, heads=2, layers=1, n=1, T=1, N_sup=4, puzzle_emb_ndim=16, puzzle_emb_len=1),
                meta["vocab_size"], meta["seq_len"], meta["num_puzzle_ids"])
    with torch.no_grad():
        model.q_head.bias.fill_(0.0)
        model.q_head.weight.normal_(0, 1.0)  # some samples halt early, some do not
    plain = predict(model, ds, 16, torch.device("cpu"), limit=32, curve=True)
    halted = predict(model, ds, 16, torch.device("cpu"), limit=32, halt=True, curve=True)
    assert np.array_equal(plain.step_tokens[-1], plain.tokens)
    assert 1 <= halted.halt_steps.min() and halted.halt_steps.max() <= 4 and (halted.halt_steps < 4).any()
    for i, h in enumerate(halted.halt_steps):
        assert np.array_equal(halted.tokens[i], plain.step_tokens[h - 1][i])
    more = predict(model, ds, 16, torch.device("cpu"), limit=32, n_sup=6, curve=True)
    assert more.step_tokens.shape[0] == 6 and np.array_equal(more.step_tokens[3], plain.tokens)


def test_best_checkpoint_kept_when_later_ones_score_lower(tiny_config, tmp_path: Path, monkeypatch) -> None:
    """A synthetic metric stream (0.2, 0.9, 0.4, 0.1, 0.3): with keep_checkpoints=1 the session keeps
    the latest (for resume) and the best (0.9); MLflow tags it; `trm eval` defaults to it."""
    from mlflow.tracking import MlflowClient

    from trm.tracking import TAG_BEST_CKPT, TAG_BEST_SCORE, Tracker
    from trm.train import checkpoint as ckpt
    from trm.train.loop import Trainer
    from trm.train.session import LocalSession

    stream = iter([0.2, 0.9, 0.4, 0.1, 0.3])
    monkeypatch.setattr(Trainer, "evaluate", lambda self, final=False: {"val/exact_accuracy": next(stream),
                                                           "val/cell_accuracy": 0.0, "val/mean_halt_steps": 1.0})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.create(uri, "best", run_name="synthetic")
    cfg = tiny_config(steps=10, eval_every=2, checkpoint_every=2, log_every=2, keep_checkpoints=1,
                      select_on="test")  # the synthetic stream is the reported metric: rank on it
    session = LocalSession(tmp_path / "run", keep=1, tracker=tracker)
    trainer = Trainer(cfg, session)
    trainer.fit()
    root = tmp_path / "run" / "checkpoints"
    kept = sorted(p.name for p in root.glob("step_*"))
    assert kept == [ckpt.step_dir_name(4), ckpt.step_dir_name(10)]
    assert ckpt.best_local(root).name == ckpt.step_dir_name(4) == ckpt.resolve(tmp_path / "run").name
    assert ckpt.latest_local(root).name == ckpt.step_dir_name(10)  # what a resume uses
    assert trainer.best == {"metric": "val/exact_accuracy", "value": 0.9, "step": 4}
    tags = MlflowClient(uri).get_run(tracker.run_id).data.tags
    assert float(tags[TAG_BEST_SCORE]) == 0.9 and tags[TAG_BEST_CKPT].endswith(ckpt.step_dir_name(4))
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "best/score")
    assert [m.value for m in history] == [0.2, 0.9, 0.9, 0.9, 0.9]


def _ddp_eval(rank: int, world: int, port: int, path: str, state: dict, out: str) -> None:
    import torch
    import torch.distributed as dist

    from trm.config import ModelConfig
    from trm.evaluate.task import evaluate_task
    from trm.model import TRM

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ds = PuzzleDataset(path, "test")
        model = TRM(ModelConfig(**state["cfg"]), 12, 900, ds.meta["num_puzzle_ids"])
        model.load_state_dict(state["weights"])
        r = evaluate_task(model, ds, 7, "cpu", rank=rank, world_size=world)
        Path(out, f"rank{rank}.json").write_text(json.dumps(r.metrics))
    finally:
        dist.destroy_process_group()


def test_vote_spread_over_ddp_ranks_equals_one_process(small, tmp_path: Path) -> None:
    """Two gloo ranks each predict half of every chunk; the gathered vote on every rank is the
    single process's (the loop's "best" decision must agree across ranks)."""
    import socket

    import torch
    import torch.multiprocessing as mp

    from trm.config import ModelConfig
    from trm.evaluate.task import evaluate_task
    from trm.model import TRM

    path, _ = small
    ds = PuzzleDataset(path, "test")
    cfg = dict(hidden=16, heads=2, layers=1, n=1, T=1, N_sup=2, puzzle_emb_ndim=16, puzzle_emb_len=1)
    torch.manual_seed(1)
    model = TRM(ModelConfig(**cfg), 12, 900, ds.meta["num_puzzle_ids"])
    with torch.no_grad():
        model.puzzle_emb.weight.normal_()
    one = evaluate_task(model, ds, 7, "cpu").metrics
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_eval, args=(2, port, str(path), {"cfg": cfg, "weights": model.state_dict()}, str(tmp_path)),
             nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for k, v in one.items():
            if k != "eval/seconds":
                assert got[k] == pytest.approx(v), (rank, k)


@pytest.mark.slow
@needs_arc
def test_arc_run_logs_the_vote_keeps_best_and_submits(tmp_path: Path, capsys) -> None:
    """End to end on shared ARC-AGI-1 tasks: `trm train` with MLflow; the training-time eval/* read back
    through MlflowClient equal `trm eval`'s on the best checkpoint (the default); best tagged; the
    curve of `trm eval --curve` logged as a metric history; `trm submit` from the run validates."""
    from mlflow.tracking import MlflowClient

    from tests.test_submit import EVAL_IDS, TRAIN_IDS, build, check_submission_format, train, write_kaggle
    from trm.cli import main
    from trm.tracking import TAG_BEST_CKPT, TAG_BEST_SCORE, checkpoint_path

    write_kaggle(tmp_path / "src", "training", TRAIN_IDS, "training", solutions=True)
    challenges = write_kaggle(tmp_path / "src", "evaluation", EVAL_IDS, "evaluation", solutions=True)
    data = build(tmp_path / "src", tmp_path / "data", augmentations=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = train(data, tmp_path / "run", 6, "--set", "eval_every=3", "--set", "checkpoint_every=3",
                tracking=uri)
    client = MlflowClient(uri)
    (r,) = client.search_runs(client.get_experiment_by_name("trm-train").experiment_id)
    best_dir = Path(checkpoint_path(r.data.tags[TAG_BEST_CKPT]))
    step = int(best_dir.name.split("_")[1])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--batch-size", "8", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["checkpoint"]).resolve() == best_dir and printed["step"] == step
    assert float(r.data.tags[TAG_BEST_SCORE]) == pytest.approx(printed["eval/task_pass_at_2"])
    for k in ("eval/task_pass_at_2", "eval/pass_at_2", "eval/task_pass_at_1", "eval/valid_fraction",
              "eval/num_augmentations", "val/exact_accuracy"):
        logged = {m.step: m.value for m in client.get_metric_history(r.info.run_id, k)}
        assert logged[step] == pytest.approx(printed[k]), k
    # the reported side of the selection split: 3 held-out tasks less the one that selects (10 %, rounded up)
    assert printed["eval/num_tasks"] == 2 and printed["eval/num_augmentations"] == 4.0
    assert client.get_metric_history(r.info.run_id, "eval/seconds")

    assert main(["eval", "--checkpoint", str(run), "--batch-size", "8", "--device", "cpu", "--curve", "--N-sup",
                 "3", "--tracking-uri", uri]) == 0
    curved = json.loads(capsys.readouterr().out)
    hist = client.get_metric_history(curved["mlflow_run_id"], "eval/curve/eval/task_pass_at_2")
    assert [m.step for m in hist] == [1, 2, 3] and [m.value for m in hist] == list(curved["curve"].values())

    out = tmp_path / "submission.json"
    assert main(["submit", "--checkpoint", str(run), "--challenges", str(challenges), "--out", str(out),
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    check_submission_format(json.loads(out.read_text()), json.loads(challenges.read_text()))
    assert summary["eval/task_pass_at_2"] == pytest.approx(printed["eval/task_pass_at_2"])
