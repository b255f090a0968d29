"""Datasets: Sudoku, Maze and ARC-AGI, one on-disk format (see `dataset.py`)."""

from trm.data.dataset import (
    IGNORE,
    DatasetError,
    DatasetWriter,
    GroupLayout,
    GroupSampler,
    PuzzleDataset,
    SampleStream,
    epoch_size,
    make_stream,
    read_meta,
)

__all__ = [
    "IGNORE",
    "DatasetError",
    "DatasetWriter",
    "GroupLayout",
    "GroupSampler",
    "PuzzleDataset",
    "SampleStream",
    "epoch_size",
    "make_stream",
    "read_meta",
]
