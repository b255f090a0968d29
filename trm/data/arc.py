"""ARC-AGI: task loader, the reference encoding, augmentation with exact inverses,
and the streamed dataset build.

Tasks are ARC JSON files `{"train": [{"input", "output"}...], "test": [...]}`
with colours 0..9 and grids up to 30x30 (ARC-AGI-1/2; ConceptARC-style trees
are searched recursively). As in the paper (and HRM/TRM's reference code), the
model trains on every task's demonstrations (plus the test pairs of tasks not
held out) and is tested on the held-out tasks' test inputs: a task is held out
when it lies under a folder named `test_set` ("evaluation").

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
import json
import logging
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from trm.data.dataset import IGNORE, DatasetError, DatasetWriter

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
    def identity(cls) -> "Augmentation":
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
    test: list[tuple[Grid, Grid]]
    held_out: bool = False  # its test pairs form the test split (else they are trained on)

    def grids(self) -> list[Grid]:
        return [g for pair in self.train + self.test for g in pair]


@dataclass
class ArcCorpus:
    tasks: list[ArcTask]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) with skip_invalid


def _grid(obj, where: str) -> Grid:
    if not isinstance(obj, list) or not obj:
        raise ArcError(f"{where}: expected a non-empty list of rows, got {type(obj).__name__}"
                       + (" (empty)" if isinstance(obj, list) else ""))
    width = None
    for r, row in enumerate(obj):
        if not isinstance(row, list):
            raise ArcError(f"{where}: row {r} is a {type(row).__name__}, expected a list of colours")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ArcError(f"{where}: row {r} has {len(row)} cells, row 0 has {width} (ragged grid)")
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


def parse_task(obj, where: str, task_id: str, held_out: bool = False) -> ArcTask:
    """Validate one decoded task; errors name `where` (the file) and the field."""
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
                if key not in pair:
                    raise ArcError(f"{where}: {part}[{i}] has no {key!r} grid")
            pairs[part].append((_grid(pair["input"], f"{where}: {part}[{i}].input"),
                                _grid(pair["output"], f"{where}: {part}[{i}].output")))
    return ArcTask(task_id, where, pairs["train"], pairs["test"], held_out)


def load_task(path: str | Path, task_id: str | None = None, held_out: bool = False) -> ArcTask:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise ArcError(f"{path}: not a text file ({e})") from None
    except json.JSONDecodeError as e:
        raise ArcError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return parse_task(obj, str(path), task_id or path.stem, held_out)


def load_tasks(sources: Sequence[str | Path], test_set: str = "evaluation",
               skip_invalid: bool = False) -> ArcCorpus:
    """Every `*.json` under each source folder (recursively; a source may also be one file).

    A task is held out (its test pairs become the test split) when the source's
    own name or a folder between it and the file is `test_set`. Task ids are the
    file stems, qualified by source and sub-folder when two files share a stem.
    """
    if not sources:
        raise ArcError("no ARC source folders given (--src DIR)")
    found: list[tuple[Path, Path, bool]] = []  # (file, source root, held out)
    for src in map(Path, sources):
        if src.is_file():
            found.append((src, src.parent, test_set in (src.parent.name,)))
            continue
        if not src.is_dir():
            raise ArcError(f"{src}: no such file or folder")
        files = sorted(src.rglob("*.json"))
        if not files:
            raise ArcError(f"{src}: no *.json task files found (searched sub-folders too)")
        for f in files:
            found.append((f, src, bool(test_set) and test_set in (src.name, *f.relative_to(src).parent.parts)))
    stems: dict[str, int] = {}
    for f, _, _ in found:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    corpus = ArcCorpus([])
    for f, root, held in found:
        task_id = f.stem if stems[f.stem] == 1 else f"{root.name}/{f.relative_to(root).with_suffix('').as_posix()}"
        try:
            corpus.tasks.append(load_task(f, task_id, held))
        except ArcError as e:
            if not skip_invalid:
                raise
            corpus.skipped.append((str(f), str(e)))
            warnings.warn(f"skipping invalid ARC task: {e}", ArcWarning, stacklevel=2)
    ids = [t.task_id for t in corpus.tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ArcError(f"task ids collide after qualification: {dup[:5]}; give each source a distinct folder name")
    if corpus.skipped:
        log.warning("arc: skipped %d invalid task file(s) of %d", len(corpus.skipped), len(found))
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
    return [(g[k, :h[k], :w[k]] - COLOR_OFFSET).astype(np.uint8) if ok[k] else None for k in range(n)]


def decode(tokens: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Grid | None:
    """Tokens [900] -> the grid, or None when they do not encode a well-formed grid."""
    g = np.asarray(tokens).reshape(MAX_SIZE, MAX_SIZE)
    return _decode_canvas(g[None, offset[0]:, offset[1]:])[0]


def decode_batch(tokens: np.ndarray, chunk: int = 4096) -> list[Grid | None]:
    """Tokens [N, 900] (untranslated) -> grid or None per row, vectorised in chunks."""
    tokens = np.asarray(tokens)
    out: list[Grid | None] = []
    for s in range(0, len(tokens), chunk):
        out += _decode_canvas(tokens[s:s + chunk].reshape(-1, MAX_SIZE, MAX_SIZE))
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
    seen: dict[bytes, int] = {}
    for i, r in enumerate(np.ascontiguousarray(rows)):
        seen.setdefault(r.tobytes(), i)
    return np.fromiter(seen.values(), dtype=np.int64, count=len(seen))


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


def encode_augmented(grid: Grid, dihedrals: np.ndarray, colors: np.ndarray,
                     offsets: np.ndarray | None = None) -> np.ndarray:
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


def build_dataset(out: str | Path, tasks: Sequence[ArcTask], augmentations: int, seed: int = 0,
                  translate: bool = True, overwrite: bool = False, chunk: int = 16384,
                  progress_every: float = 10.0, extra_meta: dict | None = None) -> Path:
    """Stream the ARC dataset to `out` task by task.

    train: for every task and each of its augmentations (identity first), every
           demonstration pair, plus the test pairs of tasks not held out; each
           pair translated by a random offset except one pair per (task,
           augmentation), as the reference.
    test:  for every held-out task, each test input under each augmentation,
           untranslated, with task_index, test_index, aug_index, dihedral and
           colors per sample so the vote can invert and group predictions.
    The puzzle id of (task, aug k) is task_first_puzzle_id[task] + k in both splits,
    so a test input is answered with the embedding learned on its demonstrations.
    """
    tasks = list(tasks)
    if not any(t.held_out for t in tasks):
        raise ArcError("no held-out tasks: none lies under a folder named like the test set "
                       "(--test-set, default 'evaluation'), so there would be no test split")
    meta = {"name": "arc", "vocab_size": VOCAB_SIZE, "seq_len": SEQ_LEN, "num_puzzle_ids": 1,
            "pad_token": PAD, "eos_token": EOS, "color_offset": COLOR_OFFSET, "label_pad": "ignore",
            "blank_puzzle_id": BLANK_PUZZLE_ID, "augmentations": augmentations, "seed": seed,
            "translate": translate, "dihedral_inverse": list(DIHEDRAL_INVERSE),
            "task_ids": [t.task_id for t in tasks], "task_held_out": [t.held_out for t in tasks],
            "task_files": [t.path for t in tasks], **(extra_meta or {})}
    first_ids, counts = [], []
    next_id = BLANK_PUZZLE_ID + 1
    t0 = last = time.time()
    written = {"train": 0, "test": 0}
    with DatasetWriter(out, meta, overwrite=overwrite) as w:
        buf = _Buffer(w, chunk)
        for ti, task in enumerate(tasks):
            rng = _task_rng(seed, task.task_id)
            D, C = plan_augmentations(task, augmentations, rng)
            K = len(D)
            ids = (next_id + np.arange(K)).astype(np.int32)
            first_ids.append(next_id), counts.append(K)
            next_id += K
            pairs = task.train + ([] if task.held_out else task.test)
            plain = rng.integers(0, len(pairs), size=K)  # the pair left untranslated per augmentation
            for pi, pair in enumerate(pairs):
                off = None
                if translate:
                    off = _pair_offsets(pair, D, rng)
                    off[plain == pi] = 0
                buf.add("train", inputs=encode_augmented(pair[0], D, C, off),
                        labels=to_labels(encode_augmented(pair[1], D, C, off)), puzzle_ids=ids)
                written["train"] += K
            if task.held_out:
                for qi, (inp, outp) in enumerate(task.test):
                    buf.add("test", inputs=encode_augmented(inp, D, C),
                            labels=to_labels(encode_augmented(outp, D, C)), puzzle_ids=ids,
                            task_index=np.full(K, ti, np.int32), test_index=np.full(K, qi, np.int16),
                            aug_index=np.arange(K, dtype=np.int32), dihedral=D.astype(np.int8), colors=C)
                    written["test"] += K
            if time.time() - last > progress_every:
                last = time.time()
                log.info("arc: %d/%d tasks, %d train + %d test samples (%.1f tasks/s)", ti + 1, len(tasks),
                         written["train"], written["test"], (ti + 1) / (last - t0))
        buf.flush()
        w.meta.update(num_puzzle_ids=next_id, task_first_puzzle_id=first_ids, task_num_augmentations=counts)
    log.info("arc: wrote %s: %d tasks, %d puzzle ids, %d train + %d test samples in %.1fs", out, len(tasks),
             next_id, written["train"], written["test"], time.time() - t0)
    short = sum(1 for k in counts if k < augmentations + 1)
    if short:
        log.info("arc: %d task(s) have fewer than %d distinct augmentations (few colours or symmetric)",
                 short, augmentations)
    return Path(out)


# ---------------------------------------------------------------- CLI: trm data arc
def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--src", action="append", required=True, metavar="DIR",
                        help="ARC task folder (searched recursively) or file; repeat to mix sources")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--augmentations", type=int, default=1000, metavar="N",
                        help="augmented copies per task besides the original (paper: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-set", default="evaluation", metavar="NAME",
                        help="tasks under a folder of this name are held out: their test inputs "
                             "form the test split (default: evaluation)")
    parser.add_argument("--no-translate", action="store_true", help="do not translate training pairs")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="warn about and skip invalid task files instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    return parser


def run(args: argparse.Namespace) -> Path:
    if args.augmentations < 0:
        raise ArcError(f"--augmentations={args.augmentations}: expected >= 0")
    corpus = load_tasks(args.src, args.test_set, args.skip_invalid)
    held = sum(t.held_out for t in corpus.tasks)
    log.info("arc: %d tasks (%d held out for testing) from %s", len(corpus.tasks), held, ", ".join(args.src))
    out = build_dataset(args.out, corpus.tasks, args.augmentations, args.seed, translate=not args.no_translate,
                        overwrite=args.overwrite,
                        extra_meta={"sources": [str(Path(s).resolve()) for s in args.src], "test_set": args.test_set,
                                    "skipped_files": [f for f, _ in corpus.skipped]})
    meta = json.loads((out / "meta.json").read_text())
    print(json.dumps({"out": str(out), "tasks": len(corpus.tasks), "held_out": held, "skipped": len(corpus.skipped),
                      **{k: meta[k] for k in ("num_puzzle_ids", "splits", "augmentations", "seed")}}, indent=2))
    return out

