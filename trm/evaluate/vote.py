"""ARC test-time augmentation vote: the paper's "most common answer out of the 1000 data
augmentations", as the reference implementation's ARC evaluator computes it.

Every test input is in the test split once per augmentation of its task. The
model answers each augmented copy; each answer is decoded to a grid, mapped back
through the inverse augmentation, and identical grids are counted. Candidates
rank by votes, ties broken by the halting head's mean confidence (sigmoid of
q_halt), as the reference. pass@k: the target is among the top k candidates. With noisy
multi-trajectory inference (`trm.evaluate.Trajectories`), every run's answer on every augmented
copy enters the vote with its own confidence (`Vote.add_predictions`).

Running the model and voting are separate: `Vote` takes raw predictions (token
arrays + confidences) for rows of the test split, so a vote is fed chunk by chunk
by `trm.evaluate.task.evaluate_task` (training, `trm eval`) and `trm submit`, or by
planted predictions in tests. Nothing here starts Ray or loads checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from trm.data import arc
from trm.data.dataset import DatasetError, PuzzleDataset
from trm.evaluate import Predictions

log = logging.getLogger(__name__)
ATTEMPTS = 2  # ARC allows two answers per test input
_KEEP = 10  # candidates kept per test input (the rest are only counted)


# ---------------------------------------------------------------- what each sample is
@dataclass
class VoteSamples:
    """Per-row facts of the test split that the vote needs, and each test input's
    original-frame input and target, keyed by (task_index, test_index)."""

    task_index: np.ndarray  # [N]
    test_index: np.ndarray  # [N]
    aug_index: np.ndarray  # [N]
    dihedral: np.ndarray  # [N]
    colors: np.ndarray  # [N, 10]
    task_ids: list[str]
    targets: dict[tuple[int, int], np.ndarray]  # labelled test inputs only
    inputs: dict[tuple[int, int], np.ndarray]
    # (task, test) whose output is unknown: voted on, never scored
    unlabelled: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def from_dataset(cls, ds: PuzzleDataset) -> VoteSamples:
        if ds.meta.get("name") != "arc":
            raise DatasetError(
                f"{ds.path}: an ARC vote needs a dataset built by `trm data arc` (meta name {ds.meta.get('name')!r})"
            )
        need = ("task_index", "test_index", "aug_index", "dihedral", "colors")
        missing = [k for k in need if k not in ds.arrays]
        if missing:
            raise DatasetError(f"{ds.path}/{ds.split}: missing per-sample arrays {missing}")
        a = {k: np.asarray(ds.arrays[k]) for k in need}
        s = cls(
            a["task_index"],
            a["test_index"],
            a["aug_index"],
            a["dihedral"],
            a["colors"],
            list(ds.meta["task_ids"]),
            {},
            {},
            set(),
        )
        # one row per test input suffices: every augmented copy inverts to the same grids
        key = s.task_index.astype(np.int64) * 1024 + s.test_index
        first = np.sort(np.unique(key, return_index=True)[1])
        labelled = (
            np.asarray(ds.arrays["labelled"][first]).astype(bool)
            if "labelled" in ds.arrays
            else np.ones(len(first), bool)
        )
        inputs = arc.decode_batch(np.asarray(ds.arrays["inputs"][first]))
        labels = arc.decode_batch(np.asarray(ds.arrays["labels"][first]))
        for row, inp, lab, known in zip(first, inputs, labels, labelled, strict=True):
            k = (int(s.task_index[row]), int(s.test_index[row]))
            if inp is None or (known and lab is None):
                raise DatasetError(f"{ds.path}/{ds.split}: row {row} does not decode to a grid")
            s.inputs[k] = s.invert(row, inp)
            if known:
                assert lab is not None  # a known output that does not decode was raised above
                s.targets[k] = s.invert(row, lab)
            else:
                s.unlabelled.add(k)
        return s

    def invert(self, row: int, grid: np.ndarray) -> np.ndarray:
        return arc.Augmentation(int(self.dihedral[row]), self.colors[row]).invert(grid)

    def __len__(self) -> int:
        return len(self.task_index)


# ---------------------------------------------------------------- results
@dataclass
class Candidate:
    grid: np.ndarray
    votes: int
    confidence: float  # mean halting confidence of its votes


@dataclass
class TestVote:
    """The vote on one test input."""

    task_id: str
    task_index: int
    test_index: int
    input: np.ndarray | None
    target: np.ndarray | None  # None: unknown (an unlabelled test input, not scored)
    candidates: list[Candidate]  # ranked, best first (top _KEEP)
    predictions: int  # augmented copies answered
    invalid: int  # answers that did not decode to a grid
    distinct: int  # distinct valid answers

    def correct_at(self, k: int) -> bool:
        if self.target is None:
            return False
        return any(
            c.grid.shape == self.target.shape and np.array_equal(c.grid, self.target) for c in self.candidates[:k]
        )


@dataclass
class VoteResult:
    metrics: dict[str, float]
    tests: list[TestVote]
    predictions: Predictions | None = None  # raw predictions, when asked to keep them

    def task_solved(self, k: int) -> dict[str, bool]:
        """A task counts only when every one of its test inputs is solved within k attempts."""
        out: dict[str, bool] = {}
        for t in self.tests:
            out[t.task_id] = out.get(t.task_id, True) and t.correct_at(k)
        return out

    def table(self, step: int | None = None) -> dict[str, list]:
        """One row per test input (most tasks have one), for MLflow's log_table (which appends
        to an existing table: `step` tells evaluations at different steps apart)."""
        solved2 = self.task_solved(ATTEMPTS)
        rows: dict[str, list] = {
            k: []
            for k in (
                *(("step",) if step is not None else ()),
                "task_id",
                "test_index",
                "predictions",
                "invalid",
                "distinct",
                "winner_votes",
                "winner_confidence",
                "second_votes",
                "top1_correct",
                "top2_correct",
                "task_solved_at_2",
            )
        }
        for t in self.tests:
            c = t.candidates
            if step is not None:
                rows["step"].append(step)
            rows["task_id"].append(t.task_id)
            rows["test_index"].append(t.test_index)
            rows["predictions"].append(t.predictions)
            rows["invalid"].append(t.invalid)
            rows["distinct"].append(t.distinct)
            rows["winner_votes"].append(c[0].votes if c else 0)
            rows["winner_confidence"].append(round(c[0].confidence, 6) if c else 0.0)
            rows["second_votes"].append(c[1].votes if len(c) > 1 else 0)
            rows["top1_correct"].append(t.correct_at(1))
            rows["top2_correct"].append(t.correct_at(2))
            rows["task_solved_at_2"].append(solved2[t.task_id])
        return rows


# ---------------------------------------------------------------- the vote
class Vote:
    """Accumulates predictions for rows of the test split; `result()` ranks and scores."""

    def __init__(self, samples: VoteSamples):
        self.s = samples
        self.inv_colors = np.argsort(samples.colors, axis=1).astype(np.uint8)
        # (task, test) -> {grid key: [votes, confidence sum, grid]}
        self.tally: dict[tuple[int, int], dict[bytes, list]] = {}
        self.counts: dict[tuple[int, int], list[int]] = {}  # [predictions, invalid]

    def add(self, rows: np.ndarray, tokens: np.ndarray, confidence: np.ndarray) -> None:
        """rows [n]: indices into the test split; tokens [n, 900]; confidence [n] in [0, 1]."""
        rows = np.asarray(rows)
        if not (len(rows) == len(tokens) == len(confidence)):
            raise ValueError(
                f"rows ({len(rows)}), tokens ({len(tokens)}) and confidence ({len(confidence)}) differ in length"
            )
        s = self.s
        for row, grid, conf in zip(
            rows, arc.decode_batch(tokens), np.asarray(confidence, dtype=np.float64), strict=True
        ):
            key = (int(s.task_index[row]), int(s.test_index[row]))
            n = self.counts.setdefault(key, [0, 0])
            n[0] += 1
            tally = self.tally.setdefault(key, {})
            if grid is None:
                n[1] += 1
                continue
            d = int(s.dihedral[row])
            orig = np.ascontiguousarray(self.inv_colors[row][arc.inverse_dihedral(grid, d)])
            gk = bytes(orig.shape) + orig.tobytes()
            entry = tally.get(gk)
            if entry is None:
                tally[gk] = [1, float(conf), orig]
            else:
                entry[0] += 1
                entry[1] += float(conf)

    def add_predictions(self, p: Predictions) -> None:
        """`predict`'s output: with every trajectory kept (noisy multi-trajectory inference), each run's
        answer enters the vote with its own halting confidence (so a test input gets augmentations x
        runs answers); otherwise each row's one answer."""
        if p.run_tokens is None or p.run_confidence is None:
            self.add(p.index, p.tokens, p.confidence)
            return
        for tokens, confidence in zip(p.run_tokens, p.run_confidence, strict=True):
            self.add(p.index, tokens, confidence)

    def result(self, predictions: Predictions | None = None) -> VoteResult:
        s = self.s
        tests = []
        for key in sorted(self.counts):
            if key not in s.targets and key not in (s.unlabelled or ()):
                raise DatasetError(f"test input {key} (task, test) has predictions but no target")
            tally = self.tally.get(key, {})
            # votes, then mean confidence, then the grid bytes: a total order, so ranking is reproducible
            ranked = sorted(tally.items(), key=lambda kv: (-kv[1][0], -kv[1][1] / kv[1][0], kv[0]))
            cands = [Candidate(g, v, c / v) for _, (v, c, g) in ranked[:_KEEP]]
            tests.append(
                TestVote(
                    s.task_ids[key[0]],
                    key[0],
                    key[1],
                    s.inputs.get(key),
                    s.targets.get(key),
                    cands,
                    self.counts[key][0],
                    self.counts[key][1],
                    len(tally),
                )
            )
        return VoteResult(_metrics(tests), tests, predictions)


def _metrics(all_tests: list[TestVote]) -> dict[str, float]:
    """Scores over the labelled test inputs (tasks with an unknown output are voted on, not scored)."""
    unknown = {t.task_id for t in all_tests if t.target is None}
    tests = [t for t in all_tests if t.task_id not in unknown]
    n = max(len(tests), 1)
    by_task: dict[str, list[TestVote]] = {}
    for t in tests:
        by_task.setdefault(t.task_id, []).append(t)
    ntask = max(len(by_task), 1)
    preds = sum(t.predictions for t in tests)
    m = {
        "eval/num_test_inputs": float(len(tests)),
        "eval/num_tasks": float(len(by_task)),
        # answers voted per test input: its augmented copies (identity included) x trajectories
        "eval/num_augmentations": preds / n,
        "eval/valid_fraction": (preds - sum(t.invalid for t in tests)) / max(preds, 1),
    }
    for k in (1, ATTEMPTS):
        m[f"eval/pass_at_{k}"] = sum(t.correct_at(k) for t in tests) / n
        m[f"eval/task_pass_at_{k}"] = sum(all(t.correct_at(k) for t in ts) for ts in by_task.values()) / ntask
    # The official ARC score (and the reference's "ARC/pass@2"): per task, the fraction of its
    # test inputs solved in two attempts, averaged over tasks.
    m["eval/arc_score"] = float(sum(np.mean([t.correct_at(ATTEMPTS) for t in ts]) for ts in by_task.values()) / ntask)
    return m


def check_model(model, ds: PuzzleDataset) -> None:
    want = {k: ds.meta[k] for k in ("vocab_size", "seq_len", "num_puzzle_ids")}
    have = {
        "vocab_size": model.vocab_size,
        "seq_len": model.seq_len,
        "num_puzzle_ids": model.puzzle_emb.weight.shape[0] if model.puzzle_emb is not None else None,
    }
    bad = {k: (have[k], v) for k, v in want.items() if have[k] is not None and have[k] != v}
    if bad:
        raise DatasetError(
            f"{ds.path}: model and dataset disagree (model, dataset): {bad}; evaluate on the "
            f"dataset the model was trained on (same augmentations and seed)"
        )


__all__ = ["ATTEMPTS", "Candidate", "TestVote", "Vote", "VoteResult", "VoteSamples", "check_model"]
