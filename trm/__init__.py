"""Tiny Recursive Models: model, data, training, evaluation, tracking and sweeps."""

__version__ = "0.1.0"
