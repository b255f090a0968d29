"""Maze-Hard: generator (long unique shortest paths), HRM CSV loader and its errors,
dihedral augmentation, the dataset build, and the valid-shortest-path evaluation."""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import pytest

from trm.config import DataConfig
from trm.data import maze
from trm.data.dataset import DatasetError, PuzzleDataset, read_meta
from trm.evaluate.maze import score_mazes


@pytest.fixture(scope="module")
def mazes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return maze.generate(24, seed=3)


# ---------------------------------------------------------------- generator
def test_generator_long_unique_shortest_paths(mazes) -> None:
    q, a, lengths = mazes
    assert q.shape == a.shape == (24, 30, 30) and q.dtype == np.uint8
    assert (lengths > maze.MIN_PATH).all()
    assert maze.check_paths(q, a) == [None] * 24  # the target marks a valid shortest path
    for i in range(24):
        assert maze.shortest_length(q[i]) == lengths[i]
        assert (q[i] == maze.START).sum() == 1 and (q[i] == maze.GOAL).sum() == 1
        assert (a[i] == maze.PATH).sum() == lengths[i] - 1  # cells strictly between S and G
        assert set(np.unique(q[i])) <= {maze.WALL, maze.OPEN, maze.START, maze.GOAL}
        _, paths = maze.bfs(q[i] != maze.WALL, q[i] == maze.START)
        assert paths[q[i] == maze.GOAL][0] == 1  # unique, so the target is unambiguous
    again = maze.generate(24, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(mazes, again))  # deterministic from the seed
    assert not np.array_equal(maze.generate(2, seed=4)[0], q[:2])


def test_generator_is_fast_and_threshold_is_a_parameter() -> None:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    lengths = [maze.generate_maze(rng, min_path=150)[2] for _ in range(10)]
    per_maze = (time.perf_counter() - t0) / 10
    assert min(lengths) > 150
    assert per_maze < 0.5, f"{per_maze * 1000:.0f} ms per maze"  # typically ~10 ms; generous for loaded CI
    with pytest.raises(DatasetError, match="min_path=2000"):
        maze.generate_maze(rng, min_path=2000, max_tries=3)


# ---------------------------------------------------------------- CSV
def _write_csv(path: Path, rows: list[list[str]], header=("source", "question", "answer", "rating")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_round_trip(mazes, tmp_path: Path) -> None:
    q, a, _ = mazes
    rows = [["gen", maze.to_text(q[i]), maze.to_text(a[i]), str(i)] for i in range(5)]
    assert set(rows[0][2]) == set("# SGo")
    qq, aa, ratings = maze.load_csv(_write_csv(tmp_path / "m.csv", rows))
    assert np.array_equal(qq, q[:5]) and np.array_equal(aa, a[:5]) and ratings.tolist() == [0, 1, 2, 3, 4]


def _mutate(s: str, i: int, ch: str) -> str:
    return s[:i] + ch + s[i + 1:]


def test_csv_bad_rows_name_the_line(mazes, tmp_path: Path) -> None:
    q, a, _ = mazes
    qs, ans = maze.to_text(q[0]), maze.to_text(a[0])
    path_cell = ans.index("o")
    wall_cell = qs.index("#")
    cases = {
        "short": (["x", qs[:-1], ans, "1"], "question has 899 characters, expected 900"),
        "badchar": (["x", _mutate(qs, wall_cell, "X"), ans, "1"], "characters ['X']"),
        "two S": (["x", _mutate(qs, qs.index(" "), "S"), ans, "1"], "2 'S'"),
        "pathq": (["x", _mutate(qs, qs.index(" "), "o"), ans, "1"], "already marks path"),
        "gap": (["x", qs, _mutate(ans, path_cell, " "), "1"], "not a shortest path: marked path does not connect"),
        "wall": (["x", qs, _mutate(ans, wall_cell, " "), "1"], "not a shortest path: cell"),
        "rating": (["x", qs, ans, "hard"], "rating 'hard' is not a number"),
        "columns": (["x", qs], "expected at least 3 columns"),
    }
    for name, (row, expected) in cases.items():
        path = _write_csv(tmp_path / f"{name.replace(' ', '_')}.csv", [["ok", qs, ans, "0"], row])
        with pytest.raises(DatasetError) as e:
            maze.load_csv(path)
        assert f"{path}: line 3" in str(e.value) and expected in str(e.value), (name, str(e.value))
    with pytest.raises(DatasetError, match="line 1: expected header"):
        maze.load_csv(_write_csv(tmp_path / "h.csv", [], header=("a", "b", "c")))
    with pytest.raises(DatasetError, match="no mazes"):
        maze.load_csv(_write_csv(tmp_path / "e.csv", []))
    with pytest.raises(DatasetError, match="no such file"):
        maze.load_csv(tmp_path / "missing.csv")


# ---------------------------------------------------------------- augmentation
def test_dihedral_inverse_and_paths_survive(mazes) -> None:
    q, a, lengths = mazes
    for d in range(8):
        tq, ta = maze.dihedral(q, d), maze.dihedral(a, d)
        assert np.array_equal(maze.inverse_dihedral(tq, d), q) and np.array_equal(maze.inverse_dihedral(ta, d), a)
        assert maze.check_paths(tq, ta) == [None] * len(q)
        assert maze.shortest_length(tq[0]) == lengths[0]


# ---------------------------------------------------------------- evaluation
def test_eval_flags_invalid_paths(mazes) -> None:
    q, a, _ = mazes
    q, a = q[:4], a[:4]
    pred = a.copy()
    gap = tuple(np.argwhere(pred[1] == maze.PATH)[3])
    pred[1][gap] = maze.OPEN  # a hole in the path
    wall = tuple(np.argwhere((pred[2] == maze.WALL))[40])
    pred[2][wall] = maze.PATH  # a path through a wall
    spare = tuple(np.argwhere(pred[3] == maze.OPEN)[0])
    pred[3][spare] = maze.PATH  # a stray path cell off the route
    r = score_mazes(q.reshape(4, -1), pred.reshape(4, -1), a.reshape(4, -1))
    assert r.valid.tolist() == [True, False, False, False] and r.exact.tolist() == [True, False, False, False]
    assert "does not connect" in r.errors[1] and "cell" in r.errors[2] and "off the S->G route" in r.errors[3]
    assert r.metrics["eval/maze_valid_path_accuracy"] == 0.25 and r.metrics["eval/maze_exact_accuracy"] == 0.25
    assert r.table()["valid_path"] == [True, False, False, False]


def test_eval_accepts_an_equally_short_route_and_rejects_a_longer_one() -> None:
    # an open 3x4 room: S top-left, G bottom-right, several shortest routes
    g = np.full((30, 30), maze.WALL, np.uint8)
    g[1:4, 1:5] = maze.OPEN
    g[1, 1], g[3, 4] = maze.START, maze.GOAL
    target, other, longer = g.copy(), g.copy(), g.copy()
    for r, c in ((1, 2), (1, 3), (1, 4), (2, 4)):
        target[r, c] = maze.PATH  # along the top, then down
    for r, c in ((2, 1), (3, 1), (3, 2), (3, 3)):
        other[r, c] = maze.PATH  # down, then along the bottom
    for r, c in ((1, 2), (2, 2), (2, 3), (1, 3), (1, 4), (2, 4)):
        longer[r, c] = maze.PATH  # a detour
    r = score_mazes(np.stack([g] * 3).reshape(3, -1), np.stack([target, other, longer]).reshape(3, -1),
                    np.stack([target] * 3).reshape(3, -1))
    assert r.exact.tolist() == [True, False, False] and r.valid.tolist() == [True, True, False]
    assert "takes" in r.errors[2] or "off the" in r.errors[2]


# ---------------------------------------------------------------- dataset
def test_build_from_config_caps_dihedral_copies(tmp_path: Path) -> None:
    d = DataConfig(path=str(tmp_path / "maze"), generate="maze", num_train=3, num_test=2, augmentations=1000,
                   gen_seed=5)
    out = maze.build_from_config(d, d.path)
    meta = read_meta(out)
    assert (meta["name"], meta["vocab_size"], meta["seq_len"], meta["num_puzzle_ids"]) == ("maze", 6, 900, 1)
    assert meta["augmentations"] == 7 and meta["splits"] == {"train": 24, "test": 2}
    train, test = PuzzleDataset(out, "train"), PuzzleDataset(out, "test")
    x, y, dd = (np.asarray(train.arrays[k]) for k in ("inputs", "labels", "dihedral"))
    assert dd.reshape(3, 8).tolist() == [list(range(8))] * 3  # identity + all 7 per maze
    originals = x.reshape(3, 8, 30, 30)[:, 0]
    for i in range(24):  # every copy inverts to its maze and still holds a valid shortest path
        assert np.array_equal(maze.inverse_dihedral(x[i].reshape(30, 30), int(dd[i])), originals[i // 8])
    assert maze.check_paths(x, y) == [None] * 24
    assert (np.asarray(test.arrays["dihedral"]) == 0).all() and y.dtype == np.int8
    # fewer copies: a random distinct subset per maze
    few = maze.build_dataset(tmp_path / "few", (originals, y.reshape(3, 8, 900)[:, 0].reshape(3, 30, 30)),
                             (originals[:1], originals[:1]), augmentations=2, seed=0)
    dd = np.asarray(PuzzleDataset(few, "train").arrays["dihedral"]).reshape(3, 3)
    assert (dd[:, 0] == 0).all() and all(len(set(r)) == 3 for r in dd.tolist())
    # groups: a maze and its copies (the sampler's unit); every test maze alone
    g, a = (np.asarray(train.arrays[k]) for k in ("group_ids", "aug_ids"))
    assert np.array_equal(g, np.repeat(np.arange(3), 8)) and np.array_equal(a, np.tile(np.arange(8), 3))
    assert meta["groups"]["train"] == {"total_groups": 3, "total_puzzles": 24, "mean_puzzle_examples": 1.0,
                                       "epoch_samples": 3.0}
    assert np.array_equal(np.asarray(test.arrays["group_ids"]), np.arange(2))


def test_cli_generate_and_csv(mazes, tmp_path: Path) -> None:
    parser = maze.add_args(argparse.ArgumentParser())
    out = maze.run(parser.parse_args(["--out", str(tmp_path / "gen"), "--num-train", "2", "--num-test", "1",
                                      "--min-path", "120", "--augmentations", "3"]))
    assert read_meta(out)["splits"] == {"train": 8, "test": 1} and read_meta(out)["min_path"] == 120
    q, a, _ = mazes
    folder = tmp_path / "hrm"
    folder.mkdir()
    for name, sl in (("train", slice(0, 4)), ("test", slice(4, 7))):
        _write_csv(folder / f"{name}.csv", [["g", maze.to_text(x), maze.to_text(y), "0"] for x, y in zip(q[sl], a[sl])])
    out = maze.run(parser.parse_args(["--out", str(tmp_path / "csv"), "--csv", str(folder), "--num-test", "2"]))
    meta = read_meta(out)
    assert meta["splits"] == {"train": 32, "test": 2} and meta["source"] == str(folder.resolve())
    assert meta["groups"]["train"]["total_groups"] == 4  # CSV mazes are grouped with their copies too
    assert np.array_equal(np.asarray(PuzzleDataset(out, "test").arrays["inputs"]), q[4:6].reshape(2, -1))


def test_evaluate_maze_runs_the_model(tmp_path: Path) -> None:
    import torch

    from trm.config import ModelConfig
    from trm.model import TRM

    d = DataConfig(path=str(tmp_path / "m"), generate="maze", num_train=2, num_test=3, augmentations=0)
    out = maze.build_from_config(d, d.path)
    torch.manual_seed(0)
    model = TRM(ModelConfig(hidden=16, heads=2, layers=1, n=1, T=1, N_sup=1, puzzle_emb_ndim=0), 6, 900, 1)
    from trm.evaluate.task import evaluate_task

    r = evaluate_task(model, PuzzleDataset(out, "test"), 4, "cpu")
    assert r.metric == "eval/maze_valid_path_accuracy" and r.maze is not None
    assert r.metrics["eval/num_mazes"] == 3 and r.metrics["eval/maze_valid_path_accuracy"] == 0.0
    assert all(e for e in r.maze.errors)  # an untrained model's answer is flagged, with a reason
