import math

import torch

from trm.data.dataset import IGNORE
from trm.train.losses import stablemax_cross_entropy, supervision_losses


def reference_stablemax_ce(logits, labels):
    """Written out element by element from the definition (Prieto et al., 2025)."""
    out = torch.zeros(labels.shape, dtype=torch.float64)
    for idx in range(labels.numel()):
        b, l = divmod(idx, labels.shape[1])
        if labels[b, l] == IGNORE:
            continue
        s = [1 / (1 - v) if v < 0 else v + 1 for v in logits[b, l].double().tolist()]
        out[b, l] = -math.log(s[labels[b, l]] / sum(s))
    return out


def test_stablemax_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g) * 4
    labels = torch.randint(0, 7, (3, 5), generator=g)
    labels[0, 1] = IGNORE
    got = stablemax_cross_entropy(logits, labels)
    assert torch.allclose(got, reference_stablemax_ce(logits, labels), atol=1e-12)
    assert got[0, 1] == 0


def test_halting_target_is_exact_match():
    labels = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, IGNORE]])
    logits = torch.full((3, 3, 4), -10.0)
    for b, pred in enumerate([[1, 2, 3], [1, 2, 0], [1, 2, 0]]):  # right, one cell wrong, right (ignored cell)
        for l, t in enumerate(pred):
            logits[b, l, t] = 10.0
    q_halt = torch.zeros(3, requires_grad=True)
    _, parts, is_correct, _ = supervision_losses(logits, labels, q_halt)
    assert is_correct.tolist() == [True, False, True]
    parts["halt_loss"].backward()
    # d BCE / d logit = sigmoid(0) - target, averaged over the batch
    assert torch.allclose(q_halt.grad, (0.5 - is_correct.float()) / 3)


def test_stablemax_gradient_is_finite_where_the_unused_branch_is_singular():
    logits = torch.tensor([[[1.0, -2.0, 0.5]]], requires_grad=True)  # 1/(1-x) is infinite at x = 1
    stablemax_cross_entropy(logits, torch.tensor([[2]])).sum().backward()
    assert torch.isfinite(logits.grad).all()
