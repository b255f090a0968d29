import json

import numpy as np
import pytest

from trm.data import sudoku
from trm.data.dataset import DatasetError, PuzzleDataset


def test_generated_puzzles_have_one_solution(rng):
    puzzles, solutions, ratings = sudoku.generate(8, seed=3, min_givens=24, max_givens=30)
    for p, s in zip(puzzles, solutions):
        assert sudoku.is_valid_solution(s)
        assert 24 <= np.count_nonzero(p) <= 30
        sols, _ = sudoku.solve(p, limit=2)
        assert len(sols) == 1 and (sols[0] == s).all()


def test_difficulty_knob_is_solver_measured():
    _, _, hard = sudoku.generate(4, seed=5, min_givens=20, max_givens=24, min_rating=5)
    assert (hard >= 5).all()


def test_augmentations_keep_validity_and_invert(rng):
    puzzles, solutions, _ = sudoku.generate(4, seed=4, min_givens=30, max_givens=35)
    for _ in range(50):
        t = sudoku.random_transform(rng)
        for p, s in zip(puzzles, solutions):
            ts, tp = sudoku.apply_transform(s, t), sudoku.apply_transform(p, t)
            assert sudoku.is_valid_solution(ts)
            assert ((tp == 0) == (sudoku.apply_transform(p, t) == 0)).all()
            assert ((tp == ts) | (tp == 0)).all()  # givens still agree with the solution
            assert (sudoku.invert_transform(ts, t) == s).all() and (sudoku.invert_transform(tp, t) == p).all()


def test_dataset_on_disk(sudoku_data):
    train, test = PuzzleDataset(sudoku_data, "train"), PuzzleDataset(sudoku_data, "test")
    assert len(train) == 40 * 5 and len(test) == 16
    assert train.meta["vocab_size"] == 11 and train.meta["seq_len"] == 81
    b = train.batch(np.arange(10))
    for inp, lab in zip(b["inputs"], b["labels"]):
        grid = lab.reshape(9, 9) - 1
        assert sudoku.is_valid_solution(grid)
        given = inp != 1
        assert (inp[given] == lab[given]).all()


CSV_HEADER = "source,question,answer,rating\n"


def _csv(tmp_path, rows):
    f = tmp_path / "s.csv"
    f.write_text(CSV_HEADER + "".join(r + "\n" for r in rows))
    return f


def _valid_pair():
    p, s, _ = sudoku.make_puzzle(np.random.default_rng(9), 30, 32)
    q = "".join("." if v == 0 else str(v) for v in p.ravel())
    return q, "".join(str(v) for v in s.ravel())


def test_csv_loads(tmp_path):
    q, a = _valid_pair()
    puzzles, solutions, ratings = sudoku.load_csv(_csv(tmp_path, [f"x,{q},{a},3", f"y,{q.replace('.', '0')},{a},"]))
    assert puzzles.shape == (2, 9, 9) and (puzzles[0] == puzzles[1]).all() and ratings.tolist() == [3, 0]


@pytest.mark.parametrize("mutate,needle", [
    (lambda q, a: f"x,{q}", "line 3: expected at least 3 columns"),
    (lambda q, a: f"x,{q[:80]},{a},0", "line 3: question has 80 cells, expected 81"),
    (lambda q, a: f"x,{'x' + q[1:]},{a},0", "question has characters ['x']"),
    (lambda q, a: f"x,{q},{'0' + a[1:]},0", "answer must be digits 1-9"),
    (lambda q, a: f"x,{q},{a[1] + a[0] + a[2:]},0", "answer is not a valid sudoku solution"),
    (lambda q, a: f"x,{q},{a},hard", "rating 'hard' is not a number"),
])
def test_csv_errors_name_the_line(tmp_path, mutate, needle):
    q, a = _valid_pair()
    with pytest.raises(DatasetError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        sudoku.load_csv(_csv(tmp_path, [f"ok,{q},{a},0", mutate(q, a)]))


def test_csv_contradiction_and_non_unique(tmp_path):
    q, a = _valid_pair()
    given = next(i for i, ch in enumerate(q) if ch != ".")
    wrong = q[:given] + str(int(q[given]) % 9 + 1) + q[given + 1:]
    with pytest.raises(DatasetError, match="line 2: answer contradicts the question's givens"):
        sudoku.load_csv(_csv(tmp_path, [f"x,{wrong},{a},0"]))
    empty = "." * 81  # many solutions
    with pytest.raises(DatasetError, match="line 2: question has more than one solution"):
        sudoku.load_csv(_csv(tmp_path, [f"x,{empty},{a},0"]), verify="unique")


def test_failed_build_leaves_nothing(tmp_path):
    p, s, _ = sudoku.generate(2, seed=1, min_givens=40, max_givens=45)
    bad = (p, s[:1])  # lengths differ -> the writer refuses
    with pytest.raises(DatasetError):
        sudoku.build_dataset(tmp_path / "ds", (p, s), bad, augmentations=1, seed=0)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- Sudoku-Extreme-1K: filter + seeded subsample
@pytest.fixture
def rated_csv(tmp_path):
    """30 distinct valid rows (shuffles of one puzzle), rated 0..9 three times over."""
    p, s, _ = sudoku.make_puzzle(np.random.default_rng(9), 30, 32)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(30):
        t = sudoku.random_transform(rng)
        q, a = sudoku.apply_transform(p, t), sudoku.apply_transform(s, t)
        rows.append(f"src,{''.join('.' if v == 0 else str(v) for v in q.ravel())},"
                    f"{''.join(str(v) for v in a.ravel())},{i % 10}")
    return _csv(tmp_path, rows)


def _cli(tmp_path, *argv):
    import argparse
    return sudoku.run(sudoku.add_args(argparse.ArgumentParser()).parse_args(list(argv)))


def test_subsample_is_seeded_filtered_and_reproducible(rated_csv):
    all_p, _, all_r = sudoku.load_csv(rated_csv)
    key = {p.tobytes(): r for p, r in zip(all_p, all_r)}
    assert len(key) == 30
    a = sudoku.load_csv(rated_csv, min_rating=4, subsample=10, seed=3)
    b = sudoku.load_csv(rated_csv, min_rating=4, subsample=10, seed=3)
    c = sudoku.load_csv(rated_csv, min_rating=4, subsample=10, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert {p.tobytes() for p in a[0]} != {p.tobytes() for p in c[0]}
    for puzzles, _, ratings in (a, c):
        assert len(puzzles) == 10 and (ratings >= 4).all()
        assert [key[p.tobytes()] for p in puzzles] == ratings.tolist()  # rows kept whole
    # the draw is the reference's: choice without replacement among the rows rated >= 4, in drawn order
    rated = all_p[all_r >= 4]
    pick = np.random.default_rng(3).choice(len(rated), size=10, replace=False)
    assert np.array_equal(a[0], rated[pick])
    # all of them: file order; the filter alone keeps file order too
    assert np.array_equal(sudoku.load_csv(rated_csv, min_rating=4, subsample=18)[0], rated)
    assert np.array_equal(sudoku.load_csv(rated_csv, min_rating=4)[0], rated)


def test_cli_sudoku_extreme_1k_build(rated_csv, tmp_path):
    out = _cli(tmp_path, "--out", str(tmp_path / "ds"), "--csv-train", str(rated_csv), "--csv-test", str(rated_csv),
               "--subsample", "5", "--min-rating", "7", "--seed", "2", "--augmentations", "3")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"] == {"train": 5 * 4, "test": 9}  # test: every row rated >= 7, not subsampled
    assert meta["subsample"] == 5 and meta["min_rating"] == 7 and meta["source"] == "csv"
    assert meta["groups"]["train"]["total_groups"] == 5 and meta["groups"]["train"]["epoch_samples"] == 5
    again = _cli(tmp_path, "--out", str(tmp_path / "again"), "--csv-train", str(rated_csv), "--csv-test",
                 str(rated_csv), "--subsample", "5", "--min-rating", "7", "--seed", "2", "--augmentations", "3")
    for split in ("train", "test"):
        for f in (out / split).glob("*.npy"):
            assert f.read_bytes() == (again / split / f.name).read_bytes(), f.name


@pytest.mark.parametrize("argv, needle", [
    (["--subsample", "10", "--min-rating", "7"], "--subsample=10: more than the 9 puzzles rated >= 7 in"),
    (["--subsample", "31"], "--subsample=31: more than the 30 puzzles in"),
    (["--subsample", "0"], "--subsample=0: expected >= 1"),
    (["--min-rating", "-1"], "--min-rating=-1: expected >= 0"),
])
def test_cli_bad_subsample_names_the_flag_and_writes_nothing(rated_csv, tmp_path, argv, needle):
    out = tmp_path / "built"
    out.mkdir()
    with pytest.raises(DatasetError) as e:
        _cli(out, "--out", str(out / "ds"), "--csv-train", str(rated_csv), *argv)
    assert needle in str(e.value), str(e.value)
    assert list(out.iterdir()) == []
    with pytest.raises(DatasetError, match="--subsample=5: needs --csv-train"):
        _cli(out, "--out", str(out / "ds"), "--subsample", "5")
    assert list(out.iterdir()) == []


def test_csv_chunked_checks_name_the_first_bad_line(tmp_path, monkeypatch):
    """Rows are checked in chunks; the error is still the first one reading row by row meets,
    even when the CSV reader's own error (a short row) comes while a bad row waits in a chunk."""
    monkeypatch.setattr(sudoku, "_CHUNK", 2)
    q, a = _valid_pair()
    swapped = a[1] + a[0] + a[2:]
    # lines 2-3 fill a chunk; line 4 waits in the next one when the reader fails on line 5
    rows = [f"ok,{q},{a},0"] * 2 + [f"x,{q},{swapped},0", f"z,{q}"]
    with pytest.raises(DatasetError, match="line 4: answer is not a valid sudoku solution"):
        sudoku.load_csv(_csv(tmp_path, rows))
    with pytest.raises(DatasetError, match="line 4: question has 80 cells"):
        sudoku.load_csv(_csv(tmp_path, rows[:2] + [f"y,{q[:80]},{a},0", f"x,{q},{swapped},0"]))
    puzzles, _, _ = sudoku.load_csv(_csv(tmp_path, rows[:2] * 2 + rows[:1]))
    assert puzzles.shape == (5, 9, 9)  # chunks of 2, 2 and 1
