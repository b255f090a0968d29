"""Sudoku: solver, offline generator, Sudoku-Extreme CSV loader, and the paper's
validity-preserving augmentation.

Grids are int8 [9, 9] arrays of digits 1..9, 0 for a blank. Tokens for the
model are digit + 1 (1 = blank, 2..10 = digits, 0 = pad): vocab 11, seq 81.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trm.data.dataset import DatasetError, DatasetWriter, hrm_csv_rows
from trm.data.selection import DEFAULT_FRACTION as SELECTION_FRACTION
from trm.data.selection import DEFAULT_SEED as SELECTION_SEED
from trm.progress import Progress

log = logging.getLogger(__name__)
VOCAB_SIZE, SEQ_LEN = 11, 81
_ALL = 0x3FE  # bits 1..9

# peers[c]: the 20 cells sharing a row, column or box with cell c
_PEERS = [
    sorted(
        (
            {c // 9 * 9 + j for j in range(9)}
            | {i * 9 + c % 9 for i in range(9)}
            | {(c // 27) * 27 + (c % 9 // 3) * 3 + i * 9 + j for i in range(3) for j in range(3)}
        )
        - {c}
    )
    for c in range(81)
]


def is_valid_solution(grid: np.ndarray) -> bool:
    g = np.asarray(grid).reshape(9, 9)
    want = set(range(1, 10))
    return (
        all(set(g[i]) == want for i in range(9))
        and all(set(g[:, j]) == want for j in range(9))
        and all(set(g[r : r + 3, c : c + 3].ravel()) == want for r in (0, 3, 6) for c in (0, 3, 6))
    )


def givens_consistent(puzzle: np.ndarray) -> bool:
    """No digit repeats in a row, column or box."""
    g = np.asarray(puzzle).ravel()
    return all(g[c] == 0 or all(g[p] != g[c] for p in _PEERS[c]) for c in range(81))


def solve(puzzle: np.ndarray, limit: int = 2) -> tuple[list[np.ndarray], int]:
    """Up to `limit` solutions and the number of search guesses (the difficulty rating).

    Bitmask candidates, naked singles propagated, then branching on the cell
    with fewest candidates. Guesses = 0 means solvable by singles alone.
    """
    g = [int(v) for v in np.asarray(puzzle).ravel()]
    if not givens_consistent(np.array(g)):
        return [], 0
    solutions: list[np.ndarray] = []
    guesses = 0

    def place(g, cand, c, d):
        stack = [(c, d)]
        while stack:
            c, d = stack.pop()
            if g[c]:
                if g[c] != d:
                    return False
                continue
            g[c] = d
            bit = 1 << d
            for p in _PEERS[c]:
                if g[p] == 0 and cand[p] & bit:
                    cand[p] &= ~bit
                    if cand[p] == 0:
                        return False
                    if cand[p] & (cand[p] - 1) == 0:
                        stack.append((p, cand[p].bit_length() - 1))
                elif g[p] == d:
                    return False
        return True

    def search(g, cand):
        nonlocal guesses
        best, best_n = -1, 10
        for c in range(81):
            if g[c] == 0:
                k = bin(cand[c]).count("1")
                if k < best_n:
                    best, best_n = c, k
                    if k <= 1:
                        break
        if best < 0:
            solutions.append(np.array(g, dtype=np.int8).reshape(9, 9))
            return
        if best_n == 0:
            return
        bits = cand[best]
        while bits and len(solutions) < limit:
            d = (bits & -bits).bit_length() - 1
            bits &= bits - 1
            if best_n > 1:
                guesses += 1
            g2, c2 = g[:], cand[:]
            if place(g2, c2, best, d):
                search(g2, c2)

    # place the givens on an empty grid, propagating singles as we go
    g0, c0 = [0] * 81, [_ALL] * 81
    ok = True
    for c in range(81):
        if g[c] and not place(g0, c0, c, g[c]):
            ok = False
            break
    if ok:
        search(g0, c0)
    return solutions, guesses


def random_solution(rng: np.random.Generator) -> np.ndarray:
    """A random complete grid: the canonical pattern under random symmetries."""
    base = np.array([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)], dtype=np.int8)
    return augment(base[None], rng)[0][0]


def make_puzzle(rng: np.random.Generator, min_givens: int, max_givens: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove cells from a random solution while the solution stays unique.

    Returns (puzzle, solution, rating) where rating is the solver's guess count.
    """
    solution = random_solution(rng)
    target = int(rng.integers(min_givens, max_givens + 1))
    puzzle = solution.copy().ravel()
    for c in rng.permutation(81):
        if np.count_nonzero(puzzle) <= target:
            break
        d = puzzle[c]
        puzzle[c] = 0
        # unique iff no other digit at c still admits a solution
        alternatives = False
        for other in range(1, 10):
            if other != d:
                puzzle[c] = other
                sols, _ = solve(puzzle, limit=1)
                if sols:
                    alternatives = True
                    break
        puzzle[c] = d if alternatives else 0
    _, rating = solve(puzzle, limit=2)
    return puzzle.reshape(9, 9).astype(np.int8), solution, rating


# ---------------------------------------------------------------- augmentation
@dataclass
class SudokuTransform:
    """digits: new digit of each old digit (index 0 = blank stays 0); rows/cols: source index
    of each output row/column; transpose applied first."""

    digits: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    transpose: bool


def random_transform(rng: np.random.Generator) -> SudokuTransform:
    def line_perm():  # shuffle bands (stacks), then lines within each
        bands = rng.permutation(3)
        return np.concatenate([b * 3 + rng.permutation(3) for b in bands])

    digits = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.int8)
    return SudokuTransform(digits, line_perm(), line_perm(), bool(rng.integers(2)))


def apply_transform(grid: np.ndarray, t: SudokuTransform) -> np.ndarray:
    g = grid.T if t.transpose else grid
    return t.digits[g[t.rows][:, t.cols]]


def invert_transform(grid: np.ndarray, t: SudokuTransform) -> np.ndarray:
    inv_digits = np.argsort(t.digits).astype(np.int8)  # digits is a permutation of 0..9
    g = inv_digits[grid]
    out = np.empty_like(g)
    out[np.ix_(t.rows, t.cols)] = g
    return out.T if t.transpose else out


def augment(grids: np.ndarray, rng: np.random.Generator, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Apply one random transform per sample to grids [N, 9, 9] (and the same one to `others`)."""
    outs = [np.empty_like(grids)] + [np.empty_like(o) for o in others]
    for i in range(len(grids)):
        t = random_transform(rng)
        for src, dst in zip((grids, *others), outs, strict=True):
            dst[i] = apply_transform(src[i], t)
    return tuple(outs)


# ---------------------------------------------------------------- files
_CHUNK = 65_536  # CSV rows checked together: numpy's speed, without holding a 3.8M-row file as strings


def _valid_solutions(solutions: np.ndarray) -> np.ndarray:
    """[N] bool: each [N, 81] grid holds 1..9 once per row, column and box (`is_valid_solution`, batched)."""
    bits = np.left_shift(1, np.clip(solutions, 0, 9).astype(np.int32)).reshape(-1, 9, 9)
    rows = (np.bitwise_or.reduce(bits, axis=2) == _ALL).all(1)
    cols = (np.bitwise_or.reduce(bits, axis=1) == _ALL).all(1)
    boxes = (np.bitwise_or.reduce(bits.reshape(-1, 3, 3, 3, 3), axis=(2, 4)) == _ALL).all((1, 2))
    return rows & cols & boxes


def _codes(strings: list[str]) -> np.ndarray:
    """[N, 81] uint32 code points of N 81-character strings."""
    return np.array(strings, dtype="<U81").view(np.uint32).reshape(len(strings), 81)


def _parse_rows(qs: list[str], answers: list[str]) -> tuple[np.ndarray, np.ndarray, int | None, str]:
    """Puzzles and solutions [N, 9, 9] int8 of stripped CSV grids, and the first bad row with what is
    wrong with it (None, "" when all are good). A row's checks run in this order, the first failing
    one named: sizes, characters, the answer's validity, the answer against the givens."""
    n = len(qs)
    q_len = np.fromiter(map(len, qs), np.int64, n)
    a_len = np.fromiter(map(len, answers), np.int64, n)
    sized = (q_len == 81) & (a_len == 81)
    if sized.all():
        q, a = _codes(qs), _codes(answers)
    else:  # rows of another size are refused by their size; zeros stand in for them below
        q, a = np.zeros((n, 81), np.uint32), np.zeros((n, 81), np.uint32)
        keep = np.flatnonzero(sized)
        q[keep], a[keep] = _codes([qs[i] for i in keep]), _codes([answers[i] for i in keep])
    blank = q == ord(".")
    puzzles = np.where(blank, 0, q.astype(np.int64) - ord("0")).astype(np.int8)
    solutions = (a.astype(np.int64) - ord("0")).astype(np.int8)
    q_bad = ~(blank | ((q >= ord("0")) & (q <= ord("9")))).all(1)
    a_bad = ~((a >= ord("1")) & (a <= ord("9"))).all(1)
    digits = set("123456789")
    checks = [
        (q_len != 81, lambda i: f"question has {q_len[i]} cells, expected 81 (a 9x9 grid)"),
        (a_len != 81, lambda i: f"answer has {a_len[i]} cells, expected 81 (a 9x9 grid)"),
        (
            q_bad,
            lambda i: (
                f"question has characters {sorted(set(qs[i]) - set('.0123456789'))}; expected digits 1-9, '.' or '0'"
            ),
        ),
        (a_bad, lambda i: f"answer must be digits 1-9, got {sorted(set(answers[i]) - digits)}"),
        (~_valid_solutions(solutions), lambda i: "answer is not a valid sudoku solution"),
        (((puzzles > 0) & (puzzles != solutions)).any(1), lambda i: "answer contradicts the question's givens"),
    ]
    bad = np.logical_or.reduce([mask for mask, _ in checks])
    grids = puzzles.reshape(n, 9, 9), solutions.reshape(n, 9, 9)
    if not bad.any():
        return *grids, None, ""
    first = int(np.argmax(bad))
    return *grids, first, next(message(first) for mask, message in checks if mask[first])


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))


@dataclass
class _Pending:
    """Kept CSV rows not yet checked: where (for errors), stripped grids, rating, output position."""

    where: list[str] = field(default_factory=list)
    q: list[str] = field(default_factory=list)
    a: list[str] = field(default_factory=list)
    rating: list[float] = field(default_factory=list)
    order: list[int] = field(default_factory=list)

    def take(self) -> _Pending:
        taken = _Pending(self.where, self.q, self.a, self.rating, self.order)
        self.where, self.q, self.a, self.rating, self.order = [], [], [], [], []
        return taken


def load_csv(
    path: str | Path,
    verify: str = "answer",
    min_rating: float | None = None,
    subsample: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the HRM Sudoku-Extreme CSV (`source,question,answer,rating`; `.` or `0` for blanks).

    As the reference builder: rows rated below `min_rating` are dropped, then, when `subsample`
    is given, that many of the remaining rows are drawn without replacement (by
    `np.random.default_rng(seed)`, in the order drawn; all of them, in file order, when it equals
    their count). Only kept rows are parsed and checked, so a 1000-row subsample of the 3.8M-row
    file is quick:
    verify="answer": the answer is a valid grid that agrees with every given.
    verify="unique": also solve each question and require exactly one solution (slower).
    Rows are checked in chunks with numpy; the error is the one row-by-row reading would meet
    first. Returns puzzles [N,9,9], solutions [N,9,9], ratings [N]. Raises DatasetError naming the row.
    """

    def rated(rating: float) -> bool:
        return min_rating is None or rating >= min_rating

    rated_text = f" rated >= {min_rating:g}" if min_rating is not None else ""
    slot: dict[int, int] | None = None  # kept row (index among rated rows) -> output position
    if subsample is not None:
        if subsample < 1:
            raise DatasetError(f"--subsample={subsample}: expected >= 1")
        n = sum(1 for *_, rating in hrm_csv_rows(path) if rated(rating))
        if subsample > n:
            raise DatasetError(f"--subsample={subsample}: more than the {n} puzzles{rated_text} in {path}")
        if subsample < n:
            pick = np.random.default_rng(seed).choice(n, size=subsample, replace=False)
            slot = {int(r): k for k, r in enumerate(pick)}
    puzzles, solutions, ratings, order = [], [], [], []
    pending = _Pending()

    def check() -> None:
        rows = pending.take()
        if not rows.q:
            return
        p, s, bad, problem = _parse_rows(rows.q, rows.a)
        if verify == "unique":
            for i in range(len(rows.q) if bad is None else bad):
                sols, _ = solve(p[i], limit=2)
                if len(sols) != 1:
                    raise DatasetError(
                        f"{rows.where[i]}: question has {'no' if not sols else 'more than one'} solution"
                    )
        if bad is not None:
            raise DatasetError(f"{rows.where[bad]}: {problem}")
        puzzles.append(p)
        solutions.append(s)
        ratings.extend(rows.rating)
        order.extend(rows.order)

    total = _count_lines(Path(path)) - 1 if Path(path).is_file() else 0
    with Progress(f"sudoku: reading {Path(path).name}", total, unit="rows") as progress:
        j = -1
        try:
            for line, (where, q, a, rating) in enumerate(hrm_csv_rows(path), start=1):
                if line % _CHUNK == 0:
                    progress.update(_CHUNK)
                if not rated(rating):
                    continue
                j += 1
                if slot is not None and j not in slot:
                    continue
                pending.where.append(where)
                pending.q.append(q.strip())
                pending.a.append(a.strip())
                pending.rating.append(rating)
                pending.order.append(j if slot is None else slot[j])
                if len(pending.q) == _CHUNK:
                    check()
        except DatasetError:  # the reader's: a bad grid on an earlier line is reported first, as row by row
            check()
            raise
        check()
        progress.update(progress.total - progress.done)
    if not puzzles:
        raise DatasetError(f"{path}: no puzzles{rated_text}")
    idx = np.argsort(order, kind="stable")
    return np.concatenate(puzzles)[idx], np.concatenate(solutions)[idx], np.array(ratings, dtype=np.float32)[idx]


def generate(num: int, seed: int, min_givens: int, max_givens: int, min_rating: int = 0, progress_every: float = 5.0):
    """`num` unique-solution puzzles with givens in [min_givens, max_givens] and a solver
    rating (search guesses) of at least `min_rating`. Returns puzzles, solutions, ratings."""
    rng = np.random.default_rng(seed)
    puzzles: list[np.ndarray] = []
    solutions: list[np.ndarray] = []
    ratings: list[int] = []
    tries = 0
    with Progress("sudoku: generating", num, unit="puzzles", every=progress_every) as progress:
        while len(puzzles) < num:
            p, s, r = make_puzzle(rng, min_givens, max_givens)
            tries += 1
            if r < min_rating:
                if tries >= 1000 and len(puzzles) * 1000 < tries:
                    raise DatasetError(
                        f"min_rating={min_rating}: fewer than 1 in 1000 generated puzzles is that "
                        f"hard with givens in [{min_givens}, {max_givens}]; lower it or the givens"
                    )
                continue
            puzzles.append(p)
            solutions.append(s)
            ratings.append(r)
            progress.update(1)
    return np.stack(puzzles), np.stack(solutions), np.array(ratings, dtype=np.float32)


def to_tokens(grids: np.ndarray) -> np.ndarray:
    return (grids.reshape(len(grids), 81) + 1).astype(np.uint8)


def build_dataset(
    out: str | Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    augmentations: int,
    seed: int,
    overwrite: bool = False,
    source: str = "generated",
    chunk: int = 100_000,
    extra_meta: dict | None = None,
) -> Path:
    """Write train (each puzzle + `augmentations` shuffled copies) and test (as is).

    Each training puzzle and its copies form one group (group_ids = the puzzle's index,
    aug_ids = the copy, 0 = the original); every test puzzle is a group of its own."""
    meta = {
        "name": "sudoku",
        "vocab_size": VOCAB_SIZE,
        "seq_len": SEQ_LEN,
        "num_puzzle_ids": 1,
        "source": source,
        "augmentations": augmentations,
        "seed": seed,
        "blank_token": 1,
        "selection": {"fraction": SELECTION_FRACTION, "seed": SELECTION_SEED},  # filled in on close
        **(extra_meta or {}),
    }
    for split, (p, s) in (("train", train), ("test", test)):
        if len(p) != len(s) or p.shape[1:] != (9, 9) or s.shape[1:] != (9, 9):
            raise DatasetError(
                f"{split}: expected puzzles and solutions of equal count and shape [N, 9, 9], "
                f"got {p.shape} and {s.shape}"
            )
    rng = np.random.default_rng((seed, 1))
    total = len(train[0]) * (augmentations + 1) + len(test[0])
    with (
        DatasetWriter(out, meta, overwrite=overwrite) as w,
        Progress(f"sudoku: writing {Path(out).name}", total, unit="rows") as progress,
    ):
        for split, (p, s) in (("train", train), ("test", test)):
            copies = augmentations + 1 if split == "train" else 1
            reps = np.repeat(np.arange(len(p)), copies)
            for start in range(0, len(reps), chunk):
                sel = reps[start : start + chunk]
                copy = (start + np.arange(len(sel))) % copies
                pp, ss = p[sel], s[sel]
                if split == "train":  # copy 0 of each puzzle stays as is, the others are shuffled
                    shuffled = copy != 0
                    if shuffled.any():
                        pp[shuffled], ss[shuffled] = augment(pp[shuffled], rng, ss[shuffled])
                w.append(
                    split,
                    inputs=to_tokens(pp),
                    labels=to_tokens(ss).astype(np.int16),
                    puzzle_ids=np.zeros(len(sel), dtype=np.int32),
                    group_ids=sel.astype(np.int32),
                    aug_ids=copy.astype(np.int32),
                )
                progress.update(len(sel))
    return Path(out)


# ---------------------------------------------------------------- CLI: trm data sudoku
def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create")
    parser.add_argument(
        "--csv-train", metavar="FILE", help="Sudoku-Extreme CSV (source,question,answer,rating) for training"
    )
    parser.add_argument("--csv-test", metavar="FILE", help="Sudoku-Extreme CSV for testing (all of it)")
    parser.add_argument(
        "--subsample",
        type=int,
        metavar="N",
        help="with --csv-train: train on N puzzles drawn at random (by --seed) from those "
        "rated >= --min-rating (Sudoku-Extreme-1K: 1000)",
    )
    parser.add_argument(
        "--verify",
        choices=["answer", "unique"],
        default="answer",
        help="CSV check: answer valid and consistent (fast), or also a unique solution (slow)",
    )
    parser.add_argument("--num-train", type=int, default=1000, help="generated training puzzles")
    parser.add_argument("--num-test", type=int, default=1000, help="generated test puzzles")
    parser.add_argument("--augmentations", type=int, default=1000, help="shuffled copies per training puzzle")
    parser.add_argument("--min-givens", type=int, default=17, help="generated puzzles: fewest givens")
    parser.add_argument("--max-givens", type=int, default=30, help="generated puzzles: most givens")
    parser.add_argument(
        "--min-rating",
        type=int,
        default=0,
        help="minimum difficulty: CSV rows rated below it are dropped (train and test, as the "
        "reference's min_difficulty); generated puzzles need this many solver guesses",
    )
    parser.add_argument("--seed", type=int, default=0, help="subsample, shuffles and generator seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    return parser


def run(args: argparse.Namespace) -> Path:
    """`trm data sudoku`: checks every flag before reading anything, writes nothing on error."""
    for name, lo in (("num_train", 1), ("num_test", 1), ("augmentations", 0), ("min_rating", 0)):
        if getattr(args, name) < lo:
            raise DatasetError(f"--{name.replace('_', '-')}={getattr(args, name)}: expected >= {lo}")
    if not 17 <= args.min_givens <= args.max_givens <= 81:
        raise DatasetError(
            f"--min-givens={args.min_givens} --max-givens={args.max_givens}: expected 17 <= min <= max <= 81"
        )
    if args.subsample is not None and not args.csv_train:
        raise DatasetError(f"--subsample={args.subsample}: needs --csv-train (generated puzzles: --num-train)")
    if args.subsample is not None and args.subsample < 1:
        raise DatasetError(f"--subsample={args.subsample}: expected >= 1")
    for flag, f in (("--csv-train", args.csv_train), ("--csv-test", args.csv_test)):
        if f and not Path(f).is_file():
            raise DatasetError(f"{flag} {f}: no such file")
    if args.csv_test and not args.csv_train:
        raise DatasetError("--csv-test: needs --csv-train too")
    if Path(args.out).exists() and not args.overwrite:
        raise DatasetError(f"--out {args.out}: already exists (pass --overwrite to replace it)")
    min_rating = args.min_rating if args.min_rating > 0 else None
    extra = {"min_rating": args.min_rating}
    if args.csv_train:
        train = load_csv(args.csv_train, args.verify, min_rating, args.subsample, args.seed)[:2]
        extra.update(csv_train=str(Path(args.csv_train).resolve()), subsample=args.subsample)
        log.info("sudoku: %d training puzzles from %s", len(train[0]), args.csv_train)
    else:
        train = generate(args.num_train, args.seed, args.min_givens, args.max_givens, args.min_rating)[:2]
    if args.csv_test:
        test = load_csv(args.csv_test, args.verify, min_rating)[:2]
        extra["csv_test"] = str(Path(args.csv_test).resolve())
    else:
        test = generate(args.num_test, args.seed + 1_000_003, args.min_givens, args.max_givens, args.min_rating)[:2]
    source = "csv" if args.csv_train else "generated"
    out = build_dataset(
        args.out, train, test, args.augmentations, args.seed, overwrite=args.overwrite, source=source, extra_meta=extra
    )
    print(json.dumps(json.loads((out / "meta.json").read_text()), indent=2))
    return out
