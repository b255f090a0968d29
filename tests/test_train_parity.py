"""Training-step parity with the reference (SamsungSAILMontreal/TinyRecursiveModels).

`ReferenceTrainer` below is an independent re-implementation, written for this test from the
reference's published code, of one `pretrain.py` `train_batch` call: the ACT wrapper of
`models/recursive_reasoning/trm.py` (halted slots take the batch's rows and restart from
H_init / L_init, halting with exploration), its inner forward (H_cycles - 1 passes without
gradients, one with), `models/losses.py` `ACTLossHead` (stable-max cross entropy in float64 per
sample mean, summed, plus 0.5 x BCE halting loss summed; backward of loss / global batch),
`models/sparse_embedding.py`'s sign-SGD on the puzzle-embedding rows, the `adam-atan2` update,
`cosine_schedule_with_warmup_lr_lambda` at the step counter after its increment, and
`models/ema.py` `EMAHelper` (registered from the initial weights, updated after every step).
The forward's pieces (RMSNorm, SwiGLU, attention with RoPE) are `tests/test_official.py`'s.

Same initial weights (the reference's layout, converted by `trm.official`), same samples for the
halted slots (the stream ours reads, replayed), same exploration draws: after several steps the
losses, weights, EMA weights and puzzle table agree (float32: to rounding; float64: to 1e-9,
except where both implementations compute in float32 by design: the RMSNorm and the halting logits).
The reference's Q-learning branch (`no_ACT_continue=False`) cannot run (its target computation
unpacks five values from an inner forward that returns three); ours is tested in test_step.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.test_official import (
    SEQ,
    VOCAB,
    _attention,
    _linear,
    _rms,
    _swiglu,
    arch,
    reference_state_dict,
)
from trm.data.dataset import make_stream
from trm.model import Carry
from trm.official import convert_state_dict, reference_name
from trm.train.loop import Trainer
from trm.train.session import LocalSession

BUFFERS = ("inner.puzzle_emb.weights", "inner.H_init", "inner.L_init")  # not trained by AdamATan2 / the EMA


def _stablemax_ce(logits, labels):
    """models/losses.py: log stable-max in float64, -log p(label), 0 where label == -100."""
    x = logits.to(torch.float64)
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    logp = torch.log(s / s.sum(-1, keepdim=True))
    valid = labels != -100
    picked = torch.gather(logp, -1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


def _cosine_lr(step, base_lr, warmup, total, min_ratio):
    """pretrain.py cosine_schedule_with_warmup_lr_lambda (num_cycles = 0.5)."""
    if step < warmup:
        return base_lr * float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))))


class ReferenceTrainer:
    """The reference's training state and `train_batch`, on a reference-layout state dict."""

    def __init__(self, sd: dict, a: dict, t: dict, dtype: torch.dtype, batch: int):
        self.a, self.t, self.dtype, self.B = a, t, dtype, batch
        self.w = {k: v.to(dtype).clone().requires_grad_(k not in BUFFERS) for k, v in sd.items()}
        self.adam = {k: (torch.zeros_like(v), torch.zeros_like(v), 0) for k, v in self.w.items() if v.requires_grad}
        self.shadow = {k: v.detach().clone() for k, v in self.w.items() if v.requires_grad}  # EMAHelper.register
        self.step = 0
        D, L = a["hidden_size"], a["puzzle_emb_len"]
        shape = (batch, SEQ + L, D)
        self.z_H, self.z_L = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
        self.steps = torch.zeros(batch, dtype=torch.int32)
        self.halted = torch.ones(batch, dtype=torch.bool)
        self.data = {"inputs": torch.zeros(batch, SEQ, dtype=torch.long), "labels": torch.zeros(batch, SEQ, dtype=torch.long),
                     "puzzle_identifiers": torch.zeros(batch, dtype=torch.long)}
        hd = D // a["num_heads"]
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(SEQ + L, dtype=torch.float32), inv)
        self.cos, self.sin = (f(torch.cat((ang, ang), -1)).to(dtype) for f in (torch.cos, torch.sin))

    def _level(self, h, injection):
        a, w = self.a, self.w
        h = h + injection
        for i in range(a["L_layers"]):
            name = f"inner.L_level.layers.{i}"
            if a["mlp_t"]:
                x = h.transpose(1, 2)
                h = _rms(x + _swiglu(w, name + ".mlp_t", x), 1e-5).transpose(1, 2)
            else:
                h = _rms(h + _attention(w, name + ".self_attn", h, a["num_heads"], self.cos, self.sin), 1e-5)
            h = _rms(h + _swiglu(w, name + ".mlp", h), 1e-5)
        return h

    def _inner(self, z_H, z_L, inputs, puzzle_rows):
        a, w, D, L = self.a, self.w, self.a["hidden_size"], self.a["puzzle_emb_len"]
        emb = w["inner.embed_tokens.embedding_weight"].to(self.dtype)[inputs]
        p = puzzle_rows.to(self.dtype)
        p = torch.cat((p, p.new_zeros(p.shape[0], L * D - p.shape[1])), dim=1).reshape(-1, L, D)
        x = math.sqrt(D) * torch.cat((p, emb), dim=1)
        with torch.no_grad():
            for _ in range(a["H_cycles"] - 1):
                for _ in range(a["L_cycles"]):
                    z_L = self._level(z_L, z_H + x)
                z_H = self._level(z_H, z_L)
        for _ in range(a["L_cycles"]):
            z_L = self._level(z_L, z_H + x)
        z_H = self._level(z_H, z_L)
        q = _linear(w, "inner.q_head.weight", z_H[:, 0], "inner.q_head.bias").to(torch.float32)
        return z_H.detach(), z_L.detach(), _linear(w, "inner.lm_head.weight", z_H)[:, L:], q[:, 0]

    def train_batch(self, batch: dict, explore: tuple[torch.Tensor, torch.Tensor]) -> dict:
        a, t, w = self.a, self.t, self.w
        # the ACT wrapper: halted slots restart from the inits and take the batch's rows
        h = self.halted.view(-1, 1, 1)
        z_H = torch.where(h, w["inner.H_init"].detach(), self.z_H)
        z_L = torch.where(h, w["inner.L_init"].detach(), self.z_L)
        steps = torch.where(self.halted, 0, self.steps)
        self.data = {k: torch.where(self.halted.view(-1, *([1] * (v.ndim - 1))), batch[k], v) for k, v in self.data.items()}
        ids = self.data["puzzle_identifiers"]
        local = w["inner.puzzle_emb.weights"][ids].detach().clone().requires_grad_(True)  # CastedSparseEmbedding
        self.z_H, self.z_L, logits, q_halt = self._inner(z_H, z_L, self.data["inputs"], local)
        with torch.no_grad():
            steps = steps + 1
            halted = (steps >= a["halt_max_steps"]) | (q_halt > 0)
            min_halt_steps = (explore[0] < a["halt_exploration_prob"]) * explore[1]
            self.halted, self.steps = halted & (steps >= min_halt_steps), steps
        # ACTLossHead
        labels = self.data["labels"]
        mask = labels != -100
        counts = mask.sum(-1)
        with torch.no_grad():
            seq_is_correct = (mask & (logits.argmax(-1) == labels)).sum(-1) == counts
        lm_loss = (_stablemax_ce(logits, labels) / counts.clamp_min(1).unsqueeze(-1)).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_is_correct.to(q_halt.dtype), reduction="sum")
        loss = lm_loss + 0.5 * (q_halt_loss + 0)
        ((1 / self.B) * loss).backward()
        # the optimisers, each at its base lr x the schedule at the incremented counter
        self.step += 1
        lr_of = lambda base: _cosine_lr(self.step, base, t["lr_warmup_steps"], t["total_steps"], t["lr_min_ratio"])
        with torch.no_grad():
            lr = lr_of(t["puzzle_emb_lr"])
            uniq, inv = ids.unique(return_inverse=True)
            grad = torch.zeros(len(uniq), local.shape[1], dtype=local.dtype).scatter_add_(
                0, inv.unsqueeze(-1).expand(-1, local.shape[1]), local.grad)
            table = w["inner.puzzle_emb.weights"]
            table[uniq] = table[uniq] * (1.0 - lr * t["puzzle_emb_weight_decay"]) - lr * torch.sign(grad)
            lr = lr_of(t["lr"])
            b1, b2 = t["betas"]
            for k, (m, v, n) in self.adam.items():
                p, g = w[k], w[k].grad
                n += 1
                p.mul_(1 - lr * t["weight_decay"])
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.sub_(lr / (1 - b1 ** n) * torch.atan2(m, torch.sqrt(v / (1 - b2 ** n))))
                self.adam[k] = (m, v, n)
                p.grad = None
            for k in self.shadow:  # EMAHelper.update
                self.shadow[k] = (1.0 - t["ema"]) * w[k].detach() + t["ema"] * self.shadow[k]
        return {"loss": loss.detach() / self.B, "lm_loss": lm_loss.detach() / self.B,
                "halt_loss": q_halt_loss.detach() / self.B}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mlp_t", [False, True], ids=["attention", "mlp_t"])
def test_training_steps_equal_the_reference_train_batch(tiny_config, tmp_path, dtype, mlp_t):
    a = arch(hidden_size=32, num_heads=4, expansion=4, L_layers=2, H_cycles=2, L_cycles=2, halt_max_steps=3,
             halt_exploration_prob=0.5, puzzle_emb_ndim=32, puzzle_emb_len=1, mlp_t=mlp_t,
             pos_encodings="none" if mlp_t else "rope")
    t = {"lr": 3e-3, "lr_warmup_steps": 3, "lr_min_ratio": 0.1, "total_steps": 8, "weight_decay": 0.1,
         "puzzle_emb_lr": 1e-2, "puzzle_emb_weight_decay": 0.1, "betas": (0.9, 0.95), "ema": 0.9}
    cfg = tiny_config(hidden=32, heads=4, expansion=4, layers=2, n=2, T=2, N_sup=3, halt_exploration=0.5,
                      puzzle_emb_ndim=32, puzzle_emb_len=1, arch="mlp" if mlp_t else "attention",
                      lr=t["lr"], lr_warmup_steps=3, lr_schedule="cosine", lr_min_ratio=0.1, steps=8,
                      weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, beta1=0.9, beta2=0.95,
                      ema=0.9, optimizer="adam_atan2")
    ours = Trainer(cfg, LocalSession(tmp_path))
    meta = ours.train_ds.meta
    assert (meta["vocab_size"], meta["seq_len"]) == (VOCAB, SEQ)
    sd = reference_state_dict(a, num_ids=meta["num_puzzle_ids"], prefix="", seed=3)
    # a halting head that halts some samples early: partial refills (position 0 differs little between samples)
    sd["inner.q_head.weight"], sd["inner.q_head.bias"] = 10 * sd["inner.q_head.weight"], torch.tensor([2.0, 0.0])
    state = ours.state
    state.model.load_state_dict(convert_state_dict(sd, "reference weights"))
    state.reset_ema()  # registered from these initial weights
    if dtype == torch.float64:
        state.model.double()
        state.ema.double()
        s = state.slots
        s.carry = Carry(s.carry.y.double(), s.carry.z.double())
    B = cfg.train.batch_size
    ref = ReferenceTrainer(sd, a, t, dtype, B)

    stream = make_stream(ours.train_ds, cfg.train.seed, 0, 1)  # the samples ours reads, for the reference's batches
    draws = torch.Generator().manual_seed(cfg.train.seed * 1000)  # ours draws exploration from this seed
    partial = False
    for i in range(8):
        k = int(ref.halted.sum())
        partial |= 0 < k < B
        rows = ours.train_ds.batch(stream.take(k))
        batch = {key: torch.zeros_like(v) for key, v in ref.data.items()}
        for key, field in (("inputs", "inputs"), ("labels", "labels"), ("puzzle_identifiers", "puzzle_ids")):
            batch[key][ref.halted] = torch.as_tensor(rows[field]).long()
        explore = (torch.rand(B, generator=draws), torch.randint(2, 4, (B,), generator=draws))
        want, got = ref.train_batch(batch, explore), ours.train_step()
        assert torch.equal(ref.halted, state.slots.halted), i
        # float32: rounding, grown over the steps (the halting logits are large here); float64: 1e-9,
        # except our total loss, which the step returns as float32
        tol = {"lm_loss": 1e-9, "halt_loss": 1e-9, "loss": 1e-6} if dtype == torch.float64 else dict.fromkeys(want, 1e-4)
        for key in ("lm_loss", "halt_loss", "loss"):
            assert got[key].item() == pytest.approx(want[key].item(), rel=tol[key], abs=tol[key]), (i, key)
    assert partial  # some steps refilled only some of the slots

    tol = {"rtol": 0, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    weights, ema = state.model.state_dict(), dict(state.ema.module.named_parameters())
    ours_name = {reference_name(k): k for k in reversed(weights)}  # the first name of a shared tensor
    assert set(ours_name) >= set(ref.w)
    for k, v in ref.w.items():
        name = ours_name[k]
        assert torch.allclose(weights[name].to(dtype), v.detach(), **tol), (k, (weights[name] - v).abs().max())
        if k in ref.shadow:
            assert torch.allclose(ema[name].to(dtype), ref.shadow[k], **tol), ("ema", k)
    moved = ref.w["inner.puzzle_emb.weights"].detach() - sd["inner.puzzle_emb.weights"].to(dtype)
    assert moved.abs().max() > 0  # the sign-SGD ran
