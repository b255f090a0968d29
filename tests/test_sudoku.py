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
