"""Maze-Hard: offline generator, HRM's CSV loader, dihedral augmentation, dataset build.

A maze is a 30x30 grid of HRM's characters: '#' wall, ' ' open, 'S' start,
'G' goal, and in the answer 'o' on the open cells of the shortest S->G path.
Tokens as HRM's maze dataset: pad 0, then the charset "# SGo" -> 1..5: vocab 6,
seq_len 900; every cell is labelled (no pad inside a full 30x30 grid).

The paper's Maze-Hard keeps mazes whose shortest path is longer than 110
moves. The generator carves a random depth-first maze on a 15x15 cell lattice
(cells at even coordinates, passages between them; row/column 29 are walls),
knocks out a few extra walls so that it is not a perfect tree, and picks S and
G with a BFS: G is any cell more than `min_path` moves from S that is reached
by exactly one shortest path, so the target answer is unambiguous.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from trm.data.arc import dihedral, inverse_dihedral
from trm.data.dataset import DatasetError, DatasetWriter, hrm_csv_rows
from trm.data.selection import DEFAULT_FRACTION as SELECTION_FRACTION
from trm.data.selection import DEFAULT_SEED as SELECTION_SEED
from trm.progress import Progress

log = logging.getLogger(__name__)

SIZE = 30
CHARSET = "# SGo"
VOCAB_SIZE, SEQ_LEN = len(CHARSET) + 1, SIZE * SIZE
PAD, WALL, OPEN, START, GOAL, PATH = 0, 1, 2, 3, 4, 5
MIN_PATH = 110  # paper: shortest path longer than 110
CELLS = 15  # lattice of the carved maze: cells at (2i, 2j)
MAX_DIHEDRAL_COPIES = 7  # the 7 non-identity dihedral transforms
_CHAR_TO_TOKEN = np.zeros(256, np.uint8)
_CHAR_TO_TOKEN[np.frombuffer(CHARSET.encode(), np.uint8)] = np.arange(1, len(CHARSET) + 1)
_TOKEN_TO_CHAR = np.frombuffer((" " + CHARSET).encode(), np.uint8)  # pad shown as ' ' (never stored)


# ---------------------------------------------------------------- BFS on grids
def bfs(passable: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breadth-first search from the `start` cells over `passable` cells, on grids [..., H, W]
    (a batch of mazes at once). Returns (moves from start, -1 if unreachable; number of distinct
    shortest paths, capped at 2)."""
    passable = np.asarray(passable, bool)
    frontier = np.asarray(start, bool) & passable
    dist = np.where(frontier, 0, -1).astype(np.int32)
    paths = frontier.astype(np.uint8)
    d = 0
    while frontier.any():
        d += 1
        carried = np.where(frontier, paths, 0).astype(np.uint8)
        total = np.zeros_like(carried)
        total[..., 1:, :] += carried[..., :-1, :]
        total[..., :-1, :] += carried[..., 1:, :]
        total[..., :, 1:] += carried[..., :, :-1]
        total[..., :, :-1] += carried[..., :, 1:]
        frontier = (total > 0) & passable & (dist < 0)
        dist[frontier] = d
        paths = np.where(frontier, np.minimum(total, 2), paths).astype(np.uint8)
    return dist, paths


def shortest_length(question: np.ndarray) -> int:
    """Moves of the shortest S->G path in a question grid of tokens (-1: none)."""
    q = np.asarray(question).reshape(SIZE, SIZE)
    dist, _ = bfs(q != WALL, q == START)
    return int(dist[q == GOAL][0]) if (q == GOAL).sum() == 1 else -1


def check_paths(questions: np.ndarray, answers: np.ndarray) -> list[str | None]:
    """For each (question, answer) token grid: None if the answer marks a shortest S->G path
    (walls, S and G unchanged; 'o' only on open cells; the marked cells plus S and G form a
    route of exactly the shortest length), else the reason it does not."""
    q = np.asarray(questions).reshape(-1, SIZE, SIZE)
    a = np.asarray(answers).reshape(-1, SIZE, SIZE)
    changed = (a != q) & ~((a == PATH) & (q == OPEN))
    s, g = q == START, q == GOAL
    shortest, _ = bfs(q != WALL, s)
    route = (a == PATH) | s | g
    along, _ = bfs(route, s)
    out: list[str | None] = []
    for i in range(len(q)):
        if s[i].sum() != 1 or g[i].sum() != 1:
            out.append(f"question has {s[i].sum()} 'S' and {g[i].sum()} 'G' cells, expected one of each")
            continue
        if changed[i].any():
            r, c = np.argwhere(changed[i])[0]
            out.append(
                f"cell ({r}, {c}) is {CHARSET[a[i, r, c] - 1] if 1 <= a[i, r, c] <= 5 else a[i, r, c]!r} "
                f"but the question has {CHARSET[q[i, r, c] - 1]!r} there"
            )
            continue
        best = int(shortest[i][g[i]][0])
        got = int(along[i][g[i]][0])
        cells = int(route[i].sum())
        if best < 0:
            out.append("question has no path from S to G")
        elif got < 0:
            out.append("marked path does not connect S to G")
        elif got != best:
            out.append(f"marked path takes {got} moves, the shortest takes {best}")
        elif cells != best + 1:
            out.append(f"{cells - best - 1} marked cell(s) lie off the S->G route")
        else:
            out.append(None)
    return out


def path_error(question: np.ndarray, answer: np.ndarray) -> str | None:
    return check_paths(question, answer)[0]


# ---------------------------------------------------------------- generator
def _carve(rng: np.random.Generator, extra_openings: int) -> np.ndarray:
    """Open-cell mask of a randomized depth-first maze on the CELLS x CELLS lattice."""
    open_ = np.zeros((SIZE, SIZE), bool)
    visited = np.zeros((CELLS, CELLS), bool)
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    coins = rng.random(4 * CELLS * CELLS)  # pre-drawn: one Generator call instead of ~450
    k = 0
    r, c = (int(x) for x in rng.integers(0, CELLS, 2))
    visited[r, c] = open_[2 * r, 2 * c] = True
    stack = [(r, c)]
    while stack:
        r, c = stack[-1]
        nbrs = [
            (r + dr, c + dc)
            for dr, dc in steps
            if 0 <= r + dr < CELLS and 0 <= c + dc < CELLS and not visited[r + dr, c + dc]
        ]
        if not nbrs:
            stack.pop()
            continue
        nr, nc = nbrs[int(coins[k % len(coins)] * len(nbrs))]
        k += 1
        visited[nr, nc] = True
        open_[r + nr, c + nc] = open_[2 * nr, 2 * nc] = True  # (r+nr, c+nc) is the wall between
        stack.append((nr, nc))
    if extra_openings:
        rr, cc = np.indices((SIZE - 1, SIZE - 1))
        walls = np.argwhere(((rr + cc) % 2 == 1) & ~open_[:-1, :-1])  # between two lattice cells
        pick = walls[rng.choice(len(walls), size=min(extra_openings, len(walls)), replace=False)]
        open_[pick[:, 0], pick[:, 1]] = True
    return open_


def generate_maze(
    rng: np.random.Generator, min_path: int = MIN_PATH, extra_openings: int = 8, max_tries: int = 200
) -> tuple[np.ndarray, np.ndarray, int]:
    """One maze whose unique shortest S->G path is longer than `min_path` moves.

    Returns (question, answer) token grids [30, 30] and the path length."""
    for _ in range(max_tries):
        open_ = _carve(rng, extra_openings)
        lattice = np.zeros((SIZE, SIZE), bool)
        lattice[0 : 2 * CELLS : 2, 0 : 2 * CELLS : 2] = True
        start = tuple(np.argwhere(lattice)[rng.integers(CELLS * CELLS)])
        smask = np.zeros((SIZE, SIZE), bool)
        smask[start] = True
        dist, paths = bfs(open_, smask)
        goals = np.argwhere(lattice & (dist > min_path) & (paths == 1))
        if len(goals) == 0:
            continue
        goal = tuple(goals[rng.integers(len(goals))])
        q = np.where(open_, OPEN, WALL).astype(np.uint8)
        q[start], q[goal] = START, GOAL
        a = q.copy()
        r, c = goal  # walk back down the distances; the path is unique, so this is the path
        for _ in range(int(dist[goal]) - 1):
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                nr, nc = r + dr, c + dc
                if 0 <= nr < SIZE and 0 <= nc < SIZE and dist[nr, nc] == dist[r, c] - 1:
                    r, c = nr, nc
                    break
            a[r, c] = PATH
        d = int(rng.integers(8))  # the carving leaves row/column 29 as wall: spread that over sides
        return np.ascontiguousarray(dihedral(q, d)), np.ascontiguousarray(dihedral(a, d)), int(dist[goal])
    raise DatasetError(
        f"min_path={min_path}: no maze with a unique shortest path that long in {max_tries} "
        f"tries (a 30x30 maze allows about 200); lower it or extra_openings"
    )


def generate(
    num: int, seed: int, min_path: int = MIN_PATH, extra_openings: int = 8, progress_every: float = 5.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`num` mazes: questions [N,30,30], answers [N,30,30] (tokens), path lengths [N]."""
    rng = np.random.default_rng(seed)
    qs, ans, lengths = [], [], []
    with Progress("maze: generating", num, unit="mazes", every=progress_every) as progress:
        for _ in range(num):
            q, a, n = generate_maze(rng, min_path, extra_openings)
            qs.append(q)
            ans.append(a)
            lengths.append(n)
            progress.update(1)
    return np.stack(qs), np.stack(ans), np.array(lengths, dtype=np.int32)


# ---------------------------------------------------------------- text <-> tokens
def from_text(s: str) -> np.ndarray:
    """A 900-character maze string -> tokens [30, 30]."""
    return _CHAR_TO_TOKEN[np.frombuffer(s.encode("latin-1"), np.uint8)].reshape(SIZE, SIZE)


def to_text(grid: np.ndarray) -> str:
    return _TOKEN_TO_CHAR[np.asarray(grid).ravel()].tobytes().decode()


def load_csv(path: str | Path, verify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read HRM's maze CSV (`source,question,answer,rating`, 900-char strings of '# SGo').

    Each row is checked: sizes, characters, one S and one G, and (verify=True) that the
    answer marks a shortest S->G path. Raises DatasetError naming the line.
    Returns questions [N,30,30], answers [N,30,30] (tokens) and ratings [N]."""
    qs, ans, ratings, lines = [], [], [], []
    allowed = set(CHARSET)
    for where, q, a, rating in hrm_csv_rows(path):  # no strip: ' ' is an open cell
        for name, s in (("question", q), ("answer", a)):
            if len(s) != SEQ_LEN:
                raise DatasetError(f"{where}: {name} has {len(s)} characters, expected {SEQ_LEN} (30x30)")
            bad = set(s) - allowed
            if bad:
                raise DatasetError(f"{where}: {name} has characters {sorted(bad)}; expected only {CHARSET!r}")
        if "o" in q:
            raise DatasetError(f"{where}: question already marks path cells 'o'")
        if q.count("S") != 1 or q.count("G") != 1:
            raise DatasetError(f"{where}: question has {q.count('S')} 'S' and {q.count('G')} 'G', expected one of each")
        qs.append(from_text(q))
        ans.append(from_text(a))
        ratings.append(rating)
        lines.append(where)
    if not qs:
        raise DatasetError(f"{path}: no mazes")
    questions, answers = np.stack(qs), np.stack(ans)
    if verify:
        for where, err in zip(lines, check_paths(questions, answers), strict=True):
            if err is not None:
                raise DatasetError(f"{where}: answer is not a shortest path: {err}")
    return questions, answers, np.array(ratings, dtype=np.float32)


# ---------------------------------------------------------------- dataset
def dihedral_copies(rng: np.random.Generator, n: int, copies: int) -> np.ndarray:
    """[n, copies] distinct non-identity dihedral ids per maze (all 7 when copies == 7)."""
    copies = min(copies, MAX_DIHEDRAL_COPIES)
    if copies == 0:
        return np.zeros((n, 0), np.int8)
    perms = rng.permuted(np.tile(np.arange(1, 8, dtype=np.int8), (n, 1)), axis=1)
    return np.sort(perms[:, :copies], axis=1)


def build_dataset(
    out: str | Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    augmentations: int,
    seed: int,
    overwrite: bool = False,
    source: str = "generated",
    chunk: int = 65536,
    extra_meta: dict | None = None,
) -> Path:
    """Write train (each maze + min(augmentations, 7) dihedral copies) and test (as is).

    A maze and its copies form one group (group_ids = the maze's index, aug_ids = the copy,
    0 = the maze as given); every test maze is a group of its own."""
    copies = min(max(augmentations, 0), MAX_DIHEDRAL_COPIES)
    meta = {
        "name": "maze",
        "vocab_size": VOCAB_SIZE,
        "seq_len": SEQ_LEN,
        "num_puzzle_ids": 1,
        "charset": CHARSET,
        "pad_token": PAD,
        "source": source,
        "augmentations": copies,
        "seed": seed,
        "selection": {"fraction": SELECTION_FRACTION, "seed": SELECTION_SEED},  # filled in on close
        **(extra_meta or {}),
    }
    rng = np.random.default_rng((seed, 2))
    with DatasetWriter(out, meta, overwrite=overwrite) as w:
        for split, (q, a) in (("train", train), ("test", test)):
            ids = dihedral_copies(rng, len(q), copies if split == "train" else 0)
            ids = np.concatenate([np.zeros((len(q), 1), np.int8), ids], axis=1)  # identity first
            per = max(1, chunk // ids.shape[1])
            for s in range(0, len(q), per):
                qq, aa, dd = q[s : s + per], a[s : s + per], ids[s : s + per]
                xi = []
                for d in range(8):  # one vectorised transform per dihedral id
                    rows, cols = np.nonzero(dd == d)
                    if len(rows):
                        xi.append((rows * dd.shape[1] + cols, dihedral(qq[rows], d), dihedral(aa[rows], d)))
                order = np.argsort(np.concatenate([o for o, _, _ in xi]))
                x = np.concatenate([t for _, t, _ in xi])[order].reshape(-1, SEQ_LEN)
                y = np.concatenate([t for _, _, t in xi])[order].reshape(-1, SEQ_LEN)
                w.append(
                    split,
                    inputs=x.astype(np.uint8),
                    labels=y.astype(np.int8),
                    puzzle_ids=np.zeros(len(x), np.int32),
                    dihedral=dd.reshape(-1).astype(np.int8),
                    group_ids=np.repeat(np.arange(s, s + len(qq), dtype=np.int32), dd.shape[1]),
                    aug_ids=np.tile(np.arange(dd.shape[1], dtype=np.int32), len(qq)),
                )
    return Path(out)


def build_from_config(d, path: str | Path) -> Path:
    """`ensure_dataset` hook (data.generate == "maze"): d.num_train / d.num_test generated mazes
    from d.gen_seed, min(d.augmentations, 7) dihedral copies per training maze."""
    min_path = int(getattr(d, "min_path", MIN_PATH))
    train = generate(d.num_train, d.gen_seed, min_path)
    test = generate(d.num_test, d.gen_seed + 1_000_003, min_path)
    return build_dataset(path, train[:2], test[:2], d.augmentations, d.gen_seed, extra_meta={"min_path": min_path})


# ---------------------------------------------------------------- CLI: trm data maze
def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument(
        "--num-train",
        type=int,
        default=None,
        metavar="N",
        help="training mazes (default 1000 generated; with --csv: all rows)",
    )
    parser.add_argument(
        "--num-test",
        type=int,
        default=None,
        metavar="M",
        help="test mazes (default 1000 generated; with --csv: all rows)",
    )
    parser.add_argument(
        "--min-path",
        type=int,
        default=MIN_PATH,
        help="generated mazes: shortest path longer than this many moves (paper: 110)",
    )
    parser.add_argument(
        "--extra-openings", type=int, default=8, help="generated mazes: walls knocked out after carving (loops)"
    )
    parser.add_argument(
        "--csv", metavar="DIR", help="read HRM's maze CSVs (DIR/train.csv and DIR/test.csv) instead of generating"
    )
    parser.add_argument(
        "--augmentations",
        type=int,
        default=MAX_DIHEDRAL_COPIES,
        help="dihedral copies per training maze, at most 7 (paper: all 7)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    return parser


def _questions_answers(
    mazes: tuple[np.ndarray, np.ndarray, np.ndarray], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(questions, answers) of `mazes`, the first `limit` of each when given (the third array is dropped)."""
    questions, answers, _ = mazes
    return (questions[:limit], answers[:limit]) if limit else (questions, answers)


def run(args: argparse.Namespace) -> Path:
    for name in ("num_train", "num_test"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise DatasetError(f"--{name.replace('_', '-')}={v}: expected >= 1")
    if args.csv:
        folder = Path(args.csv)
        train = _questions_answers(load_csv(folder / "train.csv"), args.num_train)
        test = _questions_answers(load_csv(folder / "test.csv"), args.num_test)
        source = str(folder.resolve())
    else:
        train = _questions_answers(generate(args.num_train or 1000, args.seed, args.min_path, args.extra_openings))
        test = _questions_answers(
            generate(args.num_test or 1000, args.seed + 1_000_003, args.min_path, args.extra_openings)
        )
        source = "generated"
    log.info("maze: %d train, %d test mazes (%s)", len(train[0]), len(test[0]), source)
    out = build_dataset(
        args.out,
        train,
        test,
        args.augmentations,
        args.seed,
        overwrite=args.overwrite,
        source=source,
        extra_meta={"min_path": args.min_path} if not args.csv else None,
    )
    print(json.dumps(json.loads((out / "meta.json").read_text()), indent=2))
    return out


__all__ = [
    "CHARSET",
    "MIN_PATH",
    "SEQ_LEN",
    "VOCAB_SIZE",
    "add_args",
    "bfs",
    "build_dataset",
    "build_from_config",
    "check_paths",
    "dihedral",
    "from_text",
    "generate",
    "generate_maze",
    "inverse_dihedral",
    "load_csv",
    "path_error",
    "run",
    "shortest_length",
    "to_text",
]
