"""ARC-AGI: task loader, the reference encoding, augmentation with exact inverses,
and the streamed dataset build.

Sources (mixable): per-task JSON files `{"train": [{"input", "output"}...], "test": [...]}`
(ARC-AGI-1/2 folders; ConceptARC-style trees are searched recursively), and the Kaggle-style
combined files the reference builder reads, `PREFIX_<subset>_challenges.json`
(`{task_id: {"train", "test": [{"input"}...]}}`) with `PREFIX_<subset>_solutions.json` beside
it (`{task_id: [output grid per test input]}`). Colours 0..9, grids up to 30x30.

Split, as the reference: every task's demonstrations are trained on; the test pairs of a
task in a held-out subset (`--test-set`, default evaluation and evaluation2) form the test
split, those of every other task are trained on too. Held-out tasks whose test outputs are
unknown (a challenges file without solutions) give test rows marked unlabelled.

Encoding (reference `np_grid_to_seq_translational_augment`): the grid sits in a
30x30 canvas at an offset (0, 0 unless translated), colour c -> token c + 2,
token 1 ("eos") marks the row just below and the column just right of the grid,
everything else is pad 0: vocab 12, seq_len 900.

Augmentation of a task = one of the 8 dihedral transforms + a permutation of
colours 1..9 (0, the background, stays), applied to every grid of the task;
each (task, augmentation) is its own puzzle identifier (0 = blank). Training
pairs are also translated (input and output by the same offset).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trm.data.dataset import IGNORE, DatasetError, DatasetWriter
from trm.data.selection import DEFAULT_FRACTION as SELECTION_FRACTION
from trm.data.selection import DEFAULT_SEED as SELECTION_SEED
from trm.progress import Progress

log = logging.getLogger(__name__)

MAX_SIZE = 30
VOCAB_SIZE, SEQ_LEN = 12, MAX_SIZE * MAX_SIZE
PAD, EOS, COLOR_OFFSET = 0, 1, 2
NUM_COLORS = 10
BLANK_PUZZLE_ID = 0
RETRIES_FACTOR = 5  # candidate draws per wanted augmentation before giving up (reference value)
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
_TRANSPOSING = np.array([False, True, False, True, False, False, True, True])  # swaps height and width


class ArcError(DatasetError):
    """A task file is unusable. The message names the file and the problem."""


class ArcWarning(UserWarning):
    """A task file was skipped (skip_invalid=True)."""


# ---------------------------------------------------------------- the 8 dihedral transforms
def dihedral(grid: np.ndarray, d: int) -> np.ndarray:
    """Transform `d` (reference numbering) of the last two axes, so stacks [..., h, w] work too."""
    if d == 0:
        return grid
    if d in (1, 2, 3):
        return np.rot90(grid, d, axes=(-2, -1))
    if d == 4:
        return grid[..., ::-1]  # flip left-right
    if d == 5:
        return grid[..., ::-1, :]  # flip up-down
    if d == 6:
        return np.swapaxes(grid, -1, -2)  # transpose
    if d == 7:
        return np.rot90(grid, 1, axes=(-2, -1))[..., ::-1]  # anti-transpose
    raise ValueError(f"dihedral transform {d}: expected 0..7")


def inverse_dihedral(grid: np.ndarray, d: int) -> np.ndarray:
    return dihedral(grid, DIHEDRAL_INVERSE[d])


@dataclass(frozen=True)
class Augmentation:
    """grid -> dihedral(colors[grid], d). colors[c] is the new colour of c; colors[0] == 0."""

    dihedral: int
    colors: np.ndarray  # [10] uint8, a permutation

    @classmethod
    def identity(cls) -> Augmentation:
        return cls(0, np.arange(NUM_COLORS, dtype=np.uint8))

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(dihedral(self.colors[grid], self.dihedral))

    def invert(self, grid: np.ndarray) -> np.ndarray:
        inv = np.argsort(self.colors).astype(np.uint8)
        return np.ascontiguousarray(inv[inverse_dihedral(grid, self.dihedral)])


# ---------------------------------------------------------------- tasks and their validation
Grid = np.ndarray  # [h, w] uint8, colours 0..9


@dataclass
class ArcTask:
    task_id: str
    path: str  # file it was read from
    train: list[tuple[Grid, Grid]]  # demonstrations
    test: list[tuple[Grid, Grid | None]]  # output None: unknown (held-out tasks only)
    held_out: bool = False  # its test pairs form the test split (else they are trained on)
    subset: str = ""  # reference subset name (training, evaluation, concept, training2, ...) when known

    def grids(self) -> list[Grid]:
        return [g for pair in self.train + self.test for g in pair if g is not None]

    @property
    def labelled(self) -> bool:
        return all(out is not None for _, out in self.test)


@dataclass
class ArcCorpus:
    tasks: list[ArcTask]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) with skip_invalid


def _grid(obj, where: str) -> Grid:
    if not isinstance(obj, list) or not obj:
        raise ArcError(
            f"{where}: expected a non-empty list of rows, got {type(obj).__name__}"
            + (" (empty)" if isinstance(obj, list) else "")
        )
    width = None
    for r, row in enumerate(obj):
        if not isinstance(row, list):
            raise ArcError(f"{where}: row {r} is a {type(row).__name__}, expected a list of colours")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ArcError(f"{where}: row {r} has {len(row)} cells, row 0 has {width} (ragged grid)")
    assert width is not None  # obj is a non-empty list of lists, so row 0 set it
    if width == 0:
        raise ArcError(f"{where}: rows are empty (a grid is at least 1x1)")
    if len(obj) > MAX_SIZE or width > MAX_SIZE:
        raise ArcError(f"{where}: grid is {len(obj)}x{width}, larger than {MAX_SIZE}x{MAX_SIZE}")
    if any(type(v) is not int for row in obj for v in row):  # bool and float are not colours
        bad = next(v for row in obj for v in row if type(v) is not int)
        raise ArcError(f"{where}: cell value {bad!r} is not an integer colour 0-9")
    arr = np.array(obj, dtype=np.int64)
    if arr.min() < 0 or arr.max() > 9:
        bad = arr[(arr < 0) | (arr > 9)][0]
        raise ArcError(f"{where}: colour {bad} outside 0-9")
    return arr.astype(np.uint8)


def parse_task(obj, where: str, task_id: str, held_out: bool = False, subset: str = "") -> ArcTask:
    """Validate one decoded task; errors name `where` (the file) and the field. A held-out
    task's test pairs may lack their output (unknown: the test split marks them unlabelled)."""
    if not isinstance(obj, dict):
        raise ArcError(f"{where}: expected a JSON object with 'train' and 'test', got {type(obj).__name__}")
    pairs: dict[str, list] = {}
    for part in ("train", "test"):
        if part not in obj:
            raise ArcError(f"{where}: missing {part!r} list")
        if not isinstance(obj[part], list):
            raise ArcError(f"{where}: {part!r} must be a list of {{'input', 'output'}} pairs")
        if not obj[part]:
            raise ArcError(f"{where}: {part!r} list is empty")
        pairs[part] = []
        for i, pair in enumerate(obj[part]):
            if not isinstance(pair, dict):
                raise ArcError(f"{where}: {part}[{i}] must be an object with 'input' and 'output'")
            for key in ("input", "output"):
                if key not in pair and not (key == "output" and part == "test" and held_out):
                    raise ArcError(f"{where}: {part}[{i}] has no {key!r} grid")
            out = pair.get("output")
            pairs[part].append(
                (
                    _grid(pair["input"], f"{where}: {part}[{i}].input"),
                    None if out is None and part == "test" and held_out else _grid(out, f"{where}: {part}[{i}].output"),
                )
            )
    return ArcTask(task_id, where, pairs["train"], pairs["test"], held_out, subset)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise ArcError(f"{path}: not a text file ({e})") from None
    except json.JSONDecodeError as e:
        raise ArcError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def load_task(path: str | Path, task_id: str | None = None, held_out: bool = False, subset: str = "") -> ArcTask:
    path = Path(path)
    return parse_task(_read_json(path), str(path), task_id or path.stem, held_out, subset)


# ---------------------------------------------------------------- Kaggle-style combined files
CHALLENGES_SUFFIX, SOLUTIONS_SUFFIX = "_challenges.json", "_solutions.json"
DEFAULT_TEST_SETS = ("evaluation", "evaluation2")  # the reference's test_set_name and test_set_name2


def is_challenges_file(path: Path) -> bool:
    return path.name.endswith(CHALLENGES_SUFFIX)


def combined_subset(path: Path) -> str:
    """`PREFIX_<subset>_challenges.json` -> subset (the reference's `{prefix}_{subset}_challenges.json`)."""
    return path.name[: -len(CHALLENGES_SUFFIX)].rsplit("_", 1)[-1]


def solutions_file(path: Path) -> Path:
    return path.with_name(path.name[: -len(CHALLENGES_SUFFIX)] + SOLUTIONS_SUFFIX)


def _combined_entries(path: Path, held_out: bool) -> list[tuple[str, str, Callable[[str], ArcTask]]]:
    """(task id, qualified id, loader) for each task of a challenges file {task_id: {"train", "test"}},
    its test outputs taken from the solutions file beside it ({task_id: [grid per test input]}).

    Without a solutions file, the tasks of a held-out subset get unknown (unlabelled) test
    outputs, as for Kaggle's hidden test set; a training-split task needs its test outputs
    (they are trained on): its loader raises naming the file and the task."""
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise ArcError(
            f"{path}: expected a JSON object {{task_id: {{'train', 'test'}}}} (a challenges file), "
            f"got {type(obj).__name__}"
        )
    subset = combined_subset(path)
    sol_path = solutions_file(path)
    sols = None
    if sol_path.is_file():
        sols = _read_json(sol_path)
        if not isinstance(sols, dict):
            raise ArcError(
                f"{sol_path}: expected a JSON object {{task_id: [output grid per test input]}}, "
                f"got {type(sols).__name__}"
            )
        stray = sorted(set(sols) - set(obj))
        if stray:
            log.warning(
                "arc: %s has solutions for %d task(s) not in %s (ignored), e.g. %s",
                sol_path,
                len(stray),
                path.name,
                stray[0],
            )

    def loader(raw_id: str) -> Callable[[str], ArcTask]:
        def load(task_id: str) -> ArcTask:
            where = f"{path}: task {raw_id}"
            task = obj[raw_id]
            tests = task.get("test") if isinstance(task, dict) else None
            if isinstance(tests, list):
                if sols is not None:
                    if raw_id not in sols:
                        raise ArcError(f"{sol_path}: no solutions for task {raw_id} (it is in {path.name})")
                    outs = sols[raw_id]
                    if not isinstance(outs, list) or len(outs) != len(tests):
                        got = f"{len(outs)} entries" if isinstance(outs, list) else type(outs).__name__
                        raise ArcError(
                            f"{sol_path}: task {raw_id}: expected a list of {len(tests)} output grid(s), "
                            f"one per test input, got {got}"
                        )
                    for i, g in enumerate(outs):
                        _grid(g, f"{sol_path}: task {raw_id}: solution {i}")
                    tests = [{**t, "output": o} if isinstance(t, dict) else t for t, o in zip(tests, outs, strict=True)]
                elif not held_out and any(isinstance(t, dict) and "output" not in t for t in tests):
                    raise ArcError(
                        f"{where}: no test outputs and no solutions file {sol_path.name} beside it; "
                        f"subset {subset!r} is not a test set (--test-set), so its test pairs are "
                        f"trained on and need their outputs"
                    )
                task = {**task, "test": tests}
            return parse_task(task, where, task_id, held_out, subset)

        return load

    return [(raw_id, f"{subset}/{raw_id}", loader(raw_id)) for raw_id in sorted(obj)]


def load_tasks(
    sources: Sequence[str | Path],
    test_set: str | Sequence[str] = DEFAULT_TEST_SETS,
    skip_invalid: bool = False,
    subsets: Sequence[str] | None = None,
) -> ArcCorpus:
    """Every task under each source, in order: a folder is searched recursively for per-task
    `*.json` files and Kaggle-style `*_challenges.json` files (with `*_solutions.json` beside
    them); a source may also be one such file.

    A task is held out (its test pairs become the test split, its demonstrations are still
    trained on) when its subset is one of `test_set`: a challenges file's subset is its name's
    last part (`arc-agi_evaluation_challenges.json` -> evaluation), a per-task file's is the
    source's own name or any folder between it and the file. `subsets` (the reference's
    --subsets) keeps only the challenges files of those subsets found in folders. Task ids are
    the file stems / the challenges file's keys, qualified by source and sub-folder (per-task)
    or subset (challenges) when two tasks share an id.
    """
    if not sources:
        raise ArcError("no ARC sources given (--src DIR or --src FILE_challenges.json)")
    test_sets = (test_set,) if isinstance(test_set, str) else tuple(test_set)
    wanted = set(subsets) if subsets else None
    # (file, what it is) per source, in order; per-task files and challenges files
    files: list[tuple[Path, Path, str]] = []  # (file, source root, "task" | "challenges" | "orphan")
    for src in map(Path, sources):
        if src.is_file():
            files.append((src, src.parent, "challenges" if is_challenges_file(src) else "task"))
            continue
        if not src.is_dir():
            raise ArcError(f"--src {src}: no such file or folder")
        found = sorted(src.rglob("*.json"))
        if not found:
            raise ArcError(f"--src {src}: no *.json task files found (searched sub-folders too)")
        challenges = {f for f in found if is_challenges_file(f)}
        paired = {solutions_file(f) for f in challenges}
        for f in found:
            if f in challenges:
                if wanted is None or combined_subset(f) in wanted:
                    files.append((f, src, "challenges"))
            elif f.name.endswith(SOLUTIONS_SUFFIX):
                if f not in paired:
                    files.append((f, src, "orphan"))
            else:
                files.append((f, src, "task"))
    if wanted is not None:
        have = {combined_subset(f) for f, _, kind in files if kind == "challenges"}
        if wanted - have:
            raise ArcError(
                f"--subsets {' '.join(sorted(wanted - have))}: no *_<subset>_challenges.json file for "
                f"{'it' if len(wanted - have) == 1 else 'them'} in {[str(s) for s in sources]}"
            )
    else:
        names = {combined_subset(f) for f, _, kind in files if kind == "challenges"}
        if names & {"training", "evaluation"} and names & {"training2", "evaluation2"}:
            raise ArcError(
                f"{[str(s) for s in sources]}: holds both ARC-AGI-1 (training, evaluation) and ARC-AGI-2 "
                f"(training2, evaluation2) challenges files; ARC-AGI-2's training set contains "
                f"ARC-AGI-1's evaluation tasks. Pick with --subsets (reference: training evaluation "
                f"concept, or training2 evaluation2 concept)"
            )

    entries: list[tuple[str, str, str, Callable[[str], ArcTask]]] = []  # (id, qualified id, file, loader)
    corpus = ArcCorpus([])

    def skip(f: Path, e: ArcError) -> None:
        if not skip_invalid:
            raise e
        corpus.skipped.append((str(f), str(e)))
        warnings.warn(f"skipping invalid ARC task: {e}", ArcWarning, stacklevel=3)

    for f, root, kind in files:
        if kind == "orphan":
            skip(
                f,
                ArcError(
                    f"{f}: a solutions file without its challenges file "
                    f"{f.name[: -len(SOLUTIONS_SUFFIX)] + CHALLENGES_SUFFIX} beside it"
                ),
            )
        elif kind == "challenges":
            try:
                held = combined_subset(f) in test_sets
                entries += [(i, q, str(f), ld) for i, q, ld in _combined_entries(f, held)]
            except ArcError as e:
                skip(f, e)
        else:
            rel = f.relative_to(root)
            parts = (root.name, *rel.parent.parts)
            held = bool(test_sets) and any(t in parts for t in test_sets)
            sub = rel.parts[0] if len(rel.parts) > 1 else root.name
            entries.append(
                (
                    f.stem,
                    f"{root.name}/{rel.with_suffix('').as_posix()}",
                    str(f),
                    functools.partial(load_task, f, held_out=held, subset=sub),
                )
            )
    counts: dict[str, int] = {}
    for raw, _, _, _ in entries:
        counts[raw] = counts.get(raw, 0) + 1
    for raw, qualified, file, load in entries:
        try:
            corpus.tasks.append(load(raw if counts[raw] == 1 else qualified))
        except ArcError as e:
            skip(Path(file), e)
    ids = [t.task_id for t in corpus.tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ArcError(f"task ids collide after qualification: {dup[:5]}; give each source a distinct folder name")
    if corpus.skipped:
        log.warning("arc: skipped %d invalid task file(s)/task(s)", len(corpus.skipped))
    if not corpus.tasks:
        raise ArcError(f"no valid tasks in {[str(s) for s in sources]}")
    return corpus


# ---------------------------------------------------------------- encoding
def encode(grids: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Grids [n, h, w] (or one [h, w]) of colours -> tokens [n, 900] uint8.

    offsets [n, 2]: top-left corner of each grid in the canvas (translation)."""
    grids = np.asarray(grids)
    if grids.ndim == 2:
        grids = grids[None]
    n, h, w = grids.shape
    canvas = np.zeros((n, MAX_SIZE, MAX_SIZE), np.uint8)
    if offsets is None or not np.any(offsets):
        canvas[:, :h, :w] = grids + COLOR_OFFSET
        if h < MAX_SIZE:
            canvas[:, h, :w] = EOS
        if w < MAX_SIZE:
            canvas[:, :h, w] = EOS
        return canvas.reshape(n, SEQ_LEN)
    offsets = np.asarray(offsets, dtype=np.int64)
    r0, c0, i = offsets[:, 0], offsets[:, 1], np.arange(n)
    if (r0 < 0).any() or (c0 < 0).any() or (r0 + h > MAX_SIZE).any() or (c0 + w > MAX_SIZE).any():
        raise ValueError(f"offsets place a {h}x{w} grid outside the {MAX_SIZE}x{MAX_SIZE} canvas")
    rows, cols = r0[:, None] + np.arange(h), c0[:, None] + np.arange(w)
    canvas[i[:, None, None], rows[:, :, None], cols[:, None, :]] = grids + COLOR_OFFSET
    # eos as in the reference: the row just below (grid columns only) and the column just right
    m = r0 + h < MAX_SIZE
    canvas[i[m, None], (r0 + h)[m, None], cols[m]] = EOS
    m = c0 + w < MAX_SIZE
    canvas[i[m, None], rows[m], (c0 + w)[m, None]] = EOS
    return canvas.reshape(n, SEQ_LEN)


def to_labels(tokens: np.ndarray) -> np.ndarray:
    """Output tokens -> labels. Pad positions are IGNORE (not trained, not scored), as in the
    reference, whose metadata declares `ignore_label_id=0` so its loader maps pad labels to
    -100: the loss is spent on the grid and its eos boundary (which fixes the output shape),
    not on ~800 pad cells, and exact accuracy means "right shape and right colours"."""
    labels = tokens.astype(np.int8)
    labels[tokens == PAD] = IGNORE
    return labels


def _decode_canvas(g: np.ndarray) -> list[Grid | None]:
    """g [n, H, W] tokens with the grid's top-left at (0, 0) -> grid or None per sample.

    Valid = a leading block of colour tokens whose extent is given by row 0 and
    column 0, closed by eos markers where the canvas leaves room for them (exactly the
    positions the labels score). Tokens elsewhere (pad area) are not looked at:
    the model is never trained on them."""
    n, H, W = g.shape
    colour = (g >= COLOR_OFFSET) & (g < COLOR_OFFSET + NUM_COLORS)
    w = np.where(colour[:, 0, :].all(1), W, (~colour[:, 0, :]).argmax(1))
    h = np.where(colour[:, :, 0].all(1), H, (~colour[:, :, 0]).argmax(1))
    r = np.arange(H)[None, :, None]
    c = np.arange(W)[None, None, :]
    hh, ww = h[:, None, None], w[:, None, None]
    inside = (r < hh) & (c < ww)
    eos_at = ((r == hh) & (c < ww)) | ((c == ww) & (r < hh))
    ok = (colour | ~inside).all((1, 2)) & ((g == EOS) | ~eos_at).all((1, 2)) & (h > 0) & (w > 0)
    return [(g[k, : h[k], : w[k]] - COLOR_OFFSET).astype(np.uint8) if ok[k] else None for k in range(n)]


def decode(tokens: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Grid | None:
    """Tokens [900] -> the grid, or None when they do not encode a well-formed grid."""
    g = np.asarray(tokens).reshape(MAX_SIZE, MAX_SIZE)
    return _decode_canvas(g[None, offset[0] :, offset[1] :])[0]


def decode_batch(tokens: np.ndarray, chunk: int = 4096) -> list[Grid | None]:
    """Tokens [N, 900] (untranslated) -> grid or None per row, vectorised in chunks."""
    tokens = np.asarray(tokens)
    out: list[Grid | None] = []
    for s in range(0, len(tokens), chunk):
        out += _decode_canvas(tokens[s : s + chunk].reshape(-1, MAX_SIZE, MAX_SIZE))
    return out


# ---------------------------------------------------------------- augmentation plans
def _task_rng(seed: int, task_id: str) -> np.random.Generator:
    # per task, so a task's augmentations do not depend on which other tasks are built
    return np.random.default_rng([seed, zlib.crc32(task_id.encode())])


def _augmented_rows(grids: list[Grid], dihedrals: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """One row per augmentation: the transformed task flattened (shapes included), for exact dedup."""
    n = len(dihedrals)
    parts = []
    for g in grids:
        h, w = g.shape
        shape = np.where(_TRANSPOSING[dihedrals], w * 32 + h, h * 32 + w).astype(np.uint16)
        parts.append(shape.view(np.uint8).reshape(n, 2))
        size = g.size
        block = np.empty((n, size), np.uint8)
        for d in np.unique(dihedrals):
            sel = dihedrals == d
            block[sel] = colors[sel][:, np.ascontiguousarray(dihedral(g, int(d))).ravel()]
        parts.append(block)
    return np.concatenate(parts, axis=1)


def _first_unique(rows: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row, in order (identity stays first)."""
    return np.sort(np.unique(rows, axis=0, return_index=True)[1])


def plan_augmentations(task: ArcTask, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Identity + up to `count` distinct augmentations of the task: (dihedrals [K], colors [K, 10]).

    Candidates are drawn at random (RETRIES_FACTOR * count of them, as the reference),
    deduplicated first by what they do to the colours the task uses, then by the exact
    augmented task (a symmetric task maps to itself under some transforms). A task with few
    colours can have fewer than `count` distinct augmentations; it gets what exists."""
    ident_d, ident_c = np.zeros(1, np.int8), np.arange(NUM_COLORS, dtype=np.uint8)[None]
    if count <= 0:
        return ident_d, ident_c
    m = RETRIES_FACTOR * count
    d = rng.integers(0, 8, size=m).astype(np.int8)
    c = np.zeros((m, NUM_COLORS), np.uint8)
    c[:, 1:] = rng.permuted(np.tile(np.arange(1, NUM_COLORS, dtype=np.uint8), (m, 1)), axis=1)
    d, c = np.concatenate([ident_d, d]), np.concatenate([ident_c, c])
    used = np.unique(np.concatenate([g.ravel() for g in task.grids()]))
    used = used[used > 0]
    order = _first_unique(np.concatenate([d[:, None].astype(np.uint8), c[:, used]], axis=1))
    d, c = d[order], c[order]
    grids = task.grids()
    keep_d, keep_c = d[:0], c[:0]
    rows = np.zeros((0, 0), np.uint8)
    pos = 0
    while len(keep_d) < count + 1 and pos < len(d):
        take = slice(pos, pos + count + 1 - len(keep_d))
        pos = take.stop
        cand_d, cand_c = np.concatenate([keep_d, d[take]]), np.concatenate([keep_c, c[take]])
        new_rows = _augmented_rows(grids, d[take], c[take])
        rows = new_rows if len(keep_d) == 0 else np.concatenate([rows, new_rows])
        first = _first_unique(rows)
        keep_d, keep_c, rows = cand_d[first], cand_c[first], rows[first]
    return keep_d, keep_c


def encode_augmented(
    grid: Grid, dihedrals: np.ndarray, colors: np.ndarray, offsets: np.ndarray | None = None
) -> np.ndarray:
    """Tokens [K, 900] of one grid under K augmentations (and optional offsets [K, 2]).

    Augmentations are grouped by the shape they give the grid (at most two: transposed or
    not), so `encode` runs once or twice per grid rather than once per dihedral id."""
    out = np.empty((len(dihedrals), SEQ_LEN), np.uint8)
    h, w = grid.shape
    groups = [np.ones(len(dihedrals), bool)] if h == w else [~_TRANSPOSING[dihedrals], _TRANSPOSING[dihedrals]]
    for sel in groups:
        if not sel.any():
            continue
        d_sel, c_sel = dihedrals[sel], colors[sel]
        shape = (w, h) if _TRANSPOSING[d_sel[0]] else (h, w)
        stack = np.empty((len(d_sel), *shape), np.uint8)
        for d in np.unique(d_sel):
            m = d_sel == d
            stack[m] = c_sel[m][:, dihedral(grid, int(d))]
        out[sel] = encode(stack, None if offsets is None else offsets[sel])
    return out


def _pair_offsets(pair: tuple[Grid, Grid], dihedrals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random top-left offsets [K, 2] that fit both grids of the pair after each dihedral."""
    (hi, wi), (ho, wo) = pair[0].shape, pair[1].shape
    t = _TRANSPOSING[dihedrals]
    rows = np.maximum(np.where(t, wi, hi), np.where(t, wo, ho))
    cols = np.maximum(np.where(t, hi, wi), np.where(t, ho, wo))
    return np.stack([rng.integers(0, MAX_SIZE - rows + 1), rng.integers(0, MAX_SIZE - cols + 1)], axis=1)


# ---------------------------------------------------------------- dataset build
@dataclass
class _Buffer:
    """Rows accumulated per split and flushed to the writer in chunks (bounded memory)."""

    writer: DatasetWriter
    chunk: int
    parts: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, split: str, **arrays: np.ndarray) -> None:
        p = self.parts.setdefault(split, {})
        for k, a in arrays.items():
            p.setdefault(k, []).append(a)
        self.rows[split] = self.rows.get(split, 0) + len(next(iter(arrays.values())))
        if self.rows[split] >= self.chunk:
            self.flush(split)

    def flush(self, split: str | None = None) -> None:
        for s in [split] if split else list(self.parts):
            if self.rows.get(s):
                self.writer.append(s, **{k: np.concatenate(v) for k, v in self.parts[s].items()})
            self.parts[s], self.rows[s] = {}, 0


def build_dataset(
    out: str | Path,
    tasks: Sequence[ArcTask],
    augmentations: int,
    seed: int = 0,
    translate: bool = True,
    overwrite: bool = False,
    chunk: int = 16384,
    progress_every: float = 10.0,
    extra_meta: dict | None = None,
) -> Path:
    """Stream the ARC dataset to `out` task by task.

    train: for every task and each of its augmentations (identity first), every
           demonstration pair, plus the test pairs of tasks not held out; each
           pair translated by a random offset except one pair per (task,
           augmentation), as the reference.
    test:  for every held-out task, each test input under each augmentation,
           untranslated, with task_index, test_index, aug_index, dihedral and
           colors per sample so the vote can invert and group predictions, and
           labelled (0 where the test output is unknown: labels all IGNORE).
    The puzzle id of (task, aug k) is task_first_puzzle_id[task] + k in both splits,
    so a test input is answered with the embedding learned on its demonstrations.
    Groups (the sampler's unit) are tasks: group_ids = task index, aug_ids = k.
    """
    tasks = list(tasks)
    if not any(t.held_out for t in tasks):
        raise ArcError(
            "no held-out tasks: no task is in a test-set subset (--test-set, default evaluation and "
            "evaluation2: a folder of that name above a task file, or PREFIX_<subset>_challenges.json), "
            "so there would be no test split"
        )
    meta = {
        "name": "arc",
        "vocab_size": VOCAB_SIZE,
        "seq_len": SEQ_LEN,
        "num_puzzle_ids": 1,
        "pad_token": PAD,
        "eos_token": EOS,
        "color_offset": COLOR_OFFSET,
        "label_pad": "ignore",
        "blank_puzzle_id": BLANK_PUZZLE_ID,
        "augmentations": augmentations,
        "seed": seed,
        "translate": translate,
        "dihedral_inverse": list(DIHEDRAL_INVERSE),
        "task_ids": [t.task_id for t in tasks],
        "task_held_out": [t.held_out for t in tasks],
        "task_files": [t.path for t in tasks],
        "task_subsets": [t.subset for t in tasks],
        "unlabelled_tasks": [t.task_id for t in tasks if t.held_out and not t.labelled],
        "selection": {"fraction": SELECTION_FRACTION, "seed": SELECTION_SEED},  # filled in on close
        **(extra_meta or {}),
    }
    for t in tasks:
        if not t.held_out and not t.labelled:
            raise ArcError(
                f"{t.path}: test outputs unknown, but the task is not held out (its test pairs would be trained on)"
            )
    first_ids, counts = [], []
    next_id = BLANK_PUZZLE_ID + 1
    t0 = time.time()
    written = {"train": 0, "test": 0}
    with (
        DatasetWriter(out, meta, overwrite=overwrite) as w,
        Progress(f"arc: building {Path(out).name}", len(tasks), unit="tasks", every=progress_every) as progress,
    ):
        buf = _Buffer(w, chunk)
        for ti, task in enumerate(tasks):
            rng = _task_rng(seed, task.task_id)
            D, C = plan_augmentations(task, augmentations, rng)
            K = len(D)
            ids = (next_id + np.arange(K)).astype(np.int32)
            first_ids.append(next_id)
            counts.append(K)
            next_id += K
            pairs = list(task.train)
            if not task.held_out:  # labelled (checked above): every test output is known
                pairs += [(inp, outp) for inp, outp in task.test if outp is not None]
            plain = rng.integers(0, len(pairs), size=K)  # the pair left untranslated per augmentation
            for pi, pair in enumerate(pairs):
                off = None
                if translate:
                    off = _pair_offsets(pair, D, rng)
                    off[plain == pi] = 0
                buf.add(
                    "train",
                    inputs=encode_augmented(pair[0], D, C, off),
                    labels=to_labels(encode_augmented(pair[1], D, C, off)),
                    puzzle_ids=ids,
                    group_ids=np.full(K, ti, np.int32),
                    aug_ids=np.arange(K, dtype=np.int32),
                )
                written["train"] += K
            if task.held_out:
                for qi, (inp, outp) in enumerate(task.test):
                    labels = (
                        np.full((K, SEQ_LEN), IGNORE, np.int8)
                        if outp is None
                        else to_labels(encode_augmented(outp, D, C))
                    )
                    buf.add(
                        "test",
                        inputs=encode_augmented(inp, D, C),
                        labels=labels,
                        puzzle_ids=ids,
                        task_index=np.full(K, ti, np.int32),
                        test_index=np.full(K, qi, np.int16),
                        aug_index=np.arange(K, dtype=np.int32),
                        dihedral=D.astype(np.int8),
                        colors=C,
                        labelled=np.full(K, outp is not None, np.uint8),
                        group_ids=np.full(K, ti, np.int32),
                        aug_ids=np.arange(K, dtype=np.int32),
                    )
                    written["test"] += K
            progress.update(1)
        buf.flush()
        w.meta.update(num_puzzle_ids=next_id, task_first_puzzle_id=first_ids, task_num_augmentations=counts)
    log.info(
        "arc: wrote %s: %d tasks, %d puzzle ids, %d train + %d test samples in %.1fs",
        out,
        len(tasks),
        next_id,
        written["train"],
        written["test"],
        time.time() - t0,
    )
    short = sum(1 for k in counts if k < augmentations + 1)
    if short:
        log.info(
            "arc: %d task(s) have fewer than %d distinct augmentations (few colours or symmetric)", short, augmentations
        )
    return Path(out)


# ---------------------------------------------------------------- CLI: trm data arc
def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--src",
        action="append",
        required=True,
        metavar="PATH",
        help="ARC source, repeat to mix: a folder of per-task JSON files and/or Kaggle-style "
        "PREFIX_<subset>_challenges.json files (searched recursively), or one such file; "
        "test outputs come from the PREFIX_<subset>_solutions.json beside a challenges file",
    )
    parser.add_argument(
        "--subsets",
        nargs="+",
        metavar="NAME",
        help="read only these subsets' challenges files from --src folders (reference: "
        "training evaluation concept for ARC-AGI-1, training2 evaluation2 concept for ARC-AGI-2)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument(
        "--augmentations",
        type=int,
        default=1000,
        metavar="N",
        help="augmented copies per task besides the original (paper: 1000)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--test-set",
        action="append",
        metavar="NAME",
        help="held-out subset, repeatable: its tasks' test inputs form the test split (their "
        "demonstrations are still trained on); a per-task file's subset is any folder "
        "above it, a challenges file's is in its name (default, as the reference: "
        "evaluation and evaluation2)",
    )
    parser.add_argument("--no-translate", action="store_true", help="do not translate training pairs")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="warn about and skip invalid task files instead of failing"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    return parser


def run(args: argparse.Namespace) -> Path:
    if args.augmentations < 0:
        raise ArcError(f"--augmentations={args.augmentations}: expected >= 0")
    if Path(args.out).exists() and not args.overwrite:
        raise DatasetError(f"--out {args.out}: already exists (pass --overwrite to replace it)")
    test_sets = args.test_set or list(DEFAULT_TEST_SETS)
    corpus = load_tasks(args.src, test_sets, args.skip_invalid, getattr(args, "subsets", None))
    held = sum(t.held_out for t in corpus.tasks)
    log.info("arc: %d tasks (%d held out for testing) from %s", len(corpus.tasks), held, ", ".join(args.src))
    out = build_dataset(
        args.out,
        corpus.tasks,
        args.augmentations,
        args.seed,
        translate=not args.no_translate,
        overwrite=args.overwrite,
        extra_meta={
            "sources": [str(Path(s).resolve()) for s in args.src],
            "test_sets": test_sets,
            "subsets": sorted({t.subset for t in corpus.tasks}),
            "skipped_files": [f for f, _ in corpus.skipped],
        },
    )
    meta = json.loads((out / "meta.json").read_text())
    unlabelled = len(meta["unlabelled_tasks"])
    if unlabelled:
        log.info("arc: %d held-out task(s) have no known test outputs (unlabelled rows, not scored)", unlabelled)
    print(
        json.dumps(
            {
                "out": str(out),
                "tasks": len(corpus.tasks),
                "held_out": held,
                "skipped": len(corpus.skipped),
                "unlabelled": unlabelled,
                **{k: meta[k] for k in ("num_puzzle_ids", "splits", "augmentations", "seed")},
            },
            indent=2,
        )
    )
    return out
