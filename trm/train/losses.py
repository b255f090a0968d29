"""Losses of one supervision step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trm.data.dataset import IGNORE


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of stable-max (Prieto et al., 2025): s(x) = 1/(1-x) for x < 0, x + 1 otherwise,
    normalised like softmax. It grows linearly, so logits cannot blow up to win.
    The clamp keeps the unused branch finite: 1/(1-x) at x = 1 would put inf * 0 = NaN
    into the gradient of torch.where."""
    s = torch.where(x < 0, 1 / (1 - x.clamp(max=0)), x + 1)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss [B, L] in float64 (as the reference), 0 where label == IGNORE."""
    logp = log_stablemax(logits.to(torch.float64))
    mask = labels != IGNORE
    safe = torch.where(mask, labels, 0).long()
    nll = -torch.gather(logp, -1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, nll, 0.0)


def supervision_losses(logits, labels, q_halt, q_continue=None, target_q_continue=None):
    """lm loss (per-sample mean over labelled tokens, batch mean), halting BCE on
    "the whole answer is right", and the optional Q-learning continue loss.

    Returns (total, parts dict, is_correct [B], token_correct [B, L] masked)."""
    mask = labels != IGNORE
    counts = mask.sum(-1).clamp_min(1)
    lm = (stablemax_cross_entropy(logits, labels).sum(-1) / counts).mean()
    with torch.no_grad():
        token_correct = (logits.argmax(-1) == labels) & mask
        is_correct = token_correct.sum(-1) == mask.sum(-1)
    halt = F.binary_cross_entropy_with_logits(q_halt, is_correct.to(q_halt.dtype))
    parts = {"lm_loss": lm, "halt_loss": halt}
    total = lm + 0.5 * halt
    if q_continue is not None:
        cont = F.binary_cross_entropy_with_logits(q_continue, target_q_continue)
        parts["continue_loss"] = cont
        total = total + 0.5 * cont
    return total.float(), parts, is_correct, token_correct
