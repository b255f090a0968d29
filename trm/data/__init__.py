"""Datasets: Sudoku, Maze and ARC-AGI, one on-disk format (see `dataset.py`)."""
from trm.data.dataset import IGNORE, DatasetError, DatasetWriter, PuzzleDataset, SampleStream, read_meta

__all__ = ["IGNORE", "DatasetError", "DatasetWriter", "PuzzleDataset", "SampleStream", "read_meta"]
