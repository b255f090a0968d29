"""Maze-Hard evaluation: exact match with the target, and the stricter question the
task asks, "is the predicted path a valid shortest path?" (S to G through open
cells, walls untouched, as long as BFS's shortest). With a unique shortest path
both agree; the second also accepts an equally short alternative route.

Scoring takes raw arrays (`score_mazes`), separate from running the model
(`trm.evaluate.task.evaluate_task`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trm.data import maze


@dataclass
class MazeResult:
    metrics: dict[str, float]
    index: np.ndarray  # [N] rows of the test split
    exact: np.ndarray  # [N] prediction == target on every cell
    valid: np.ndarray  # [N] prediction marks a shortest S->G path
    errors: list[str | None]  # why a prediction is not a valid shortest path

    def table(self, limit: int = 1000) -> dict[str, list]:
        n = min(limit, len(self.index))
        return {
            "index": self.index[:n].tolist(),
            "exact": self.exact[:n].tolist(),
            "valid_path": self.valid[:n].tolist(),
            "error": [e or "" for e in self.errors[:n]],
        }


def score_mazes(
    questions: np.ndarray, predictions: np.ndarray, labels: np.ndarray, index: np.ndarray | None = None
) -> MazeResult:
    """questions/predictions/labels: tokens [N, 900]."""
    q = np.asarray(questions).reshape(-1, maze.SEQ_LEN)
    p = np.asarray(predictions).reshape(-1, maze.SEQ_LEN)
    y = np.asarray(labels).reshape(-1, maze.SEQ_LEN)
    if not (len(q) == len(p) == len(y)):
        raise ValueError(f"questions ({len(q)}), predictions ({len(p)}) and labels ({len(y)}) differ in length")
    exact = (p == y).all(-1)
    errors = maze.check_paths(q, p)
    valid = np.array([e is None for e in errors], dtype=bool)
    n = max(len(q), 1)
    metrics = {
        "eval/maze_exact_accuracy": float(exact.sum()) / n,
        "eval/maze_valid_path_accuracy": float(valid.sum()) / n,
        "eval/maze_cell_accuracy": float((p == y).mean()) if len(q) else 0.0,
        "eval/num_mazes": float(len(q)),
    }
    return MazeResult(metrics, np.arange(len(q)) if index is None else np.asarray(index), exact, valid, errors)
