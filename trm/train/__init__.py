"""The per-worker training loop: deep supervision, ACT halting, EMA, checkpoints."""
