"""The reference-style training loop the throughput benchmarks compare trm's step against.

Written from the reference implementation's published algorithm (SamsungSAILMontreal/TinyRecursiveModels:
pretrain.py, models/recursive_reasoning/trm.py, models/layers.py, models/losses.py,
models/sparse_embedding.py, models/ema.py), independently of trm's model and step: forward_dtype
(fp32 weights cast to the compute dtype in every layer, the carry in that dtype), its compile scope
(torch.compile of the whole ACT model + loss head), a new batch per step copied to the device
(prepared in advance here, as its DataLoader workers do), halted slots take the new batch's sample
in their slot, loss summed and scaled by 1/batch, sign-SGD of the puzzle embedding with unique(),
a per-parameter EMA, and its per-step metrics read back on rank 0. The optimiser: torch AdamW
(fused on CUDA) standing in for its fused CUDA AdamATan2 (the `adam_atan2` extension), or trm's
AdamATan2 when asked. It starts from trm's initial weights (under the reference's names), so both
loops' first losses agree.

`Setup` is the shape both loops train; `reference_step_fn` builds the loop.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trm.data.dataset import IGNORE, PuzzleDataset, make_stream  # noqa: E402
from trm.official import reference_name  # noqa: E402
from trm.train.optim import AdamATan2  # noqa: E402


@dataclass
class Setup:
    """The model and batch both loops train: the reference's hyperparameter names in trm's words
    (seq + prefix positions, hidden, heads, layers, n = L_cycles, T = H_cycles, N_sup = halt_max_steps)."""
    name: str
    arch: str
    seq: int
    vocab: int
    batch: int
    hidden: int = 512
    heads: int = 8
    layers: int = 2
    n: int = 6
    T: int = 3
    N_sup: int = 16
    prefix: int = 16
    examples: int = 1  # samples per puzzle id (ARC: a task's demonstration pairs)
    weight_decay: float = 1.0

    @property
    def positions(self) -> int:
        return self.seq + self.prefix


def swiglu_width(dim: int, expansion: float = 4.0) -> int:
    """The reference's SwiGLU inner width: 2/3 of expansion x dim, rounded up to a multiple of 256."""
    return 256 * math.ceil(round(expansion * dim * 2 / 3) / 256)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.to(torch.float32)
    return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)).to(dtype)


class CastedLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in).normal_(0, d_in ** -0.5))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype) if self.bias is not None else None)


class SwiGLU(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        inter = swiglu_width(dim)
        self.gate_up_proj, self.down_proj = CastedLinear(dim, 2 * inter), CastedLinear(inter, dim)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv_proj, self.o_proj = CastedLinear(dim, 3 * dim), CastedLinear(dim, dim)

    def forward(self, cos_sin, h):
        B, S, _ = h.shape
        qkv = self.qkv_proj(h).view(B, S, 3 * self.heads, self.head_dim)
        q, k, v = qkv[:, :, :self.heads], qkv[:, :, self.heads:2 * self.heads], qkv[:, :, 2 * self.heads:]
        cos, sin = cos_sin
        dt = q.dtype
        q, k = q.to(cos.dtype), k.to(cos.dtype)
        q = (q * cos.unsqueeze(-2) + rotate_half(q) * sin.unsqueeze(-2)).to(dt)
        k = (k * cos.unsqueeze(-2) + rotate_half(k) * sin.unsqueeze(-2)).to(dt)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class Block(nn.Module):
    def __init__(self, s: Setup):
        super().__init__()
        self.mlp_t = SwiGLU(s.positions) if s.arch == "mlp" else None
        self.self_attn = Attention(s.hidden, s.heads) if s.arch == "attention" else None
        self.mlp = SwiGLU(s.hidden)

    def forward(self, cos_sin, h):
        if self.mlp_t is not None:
            t = h.transpose(1, 2)
            h = rms_norm(t + self.mlp_t(t), 1e-5).transpose(1, 2)
        else:
            h = rms_norm(h + self.self_attn(cos_sin, h), 1e-5)
        return rms_norm(h + self.mlp(h), 1e-5)


class ReasoningModule(nn.Module):
    def __init__(self, s: Setup):
        super().__init__()
        self.layers = nn.ModuleList(Block(s) for _ in range(s.layers))

    def forward(self, h, injection, cos_sin):
        h = h + injection
        for layer in self.layers:
            h = layer(cos_sin, h)
        return h


class SparseEmbedding(nn.Module):
    """The reference's CastedSparseEmbedding: the batch's rows copied into a grad-carrying buffer."""

    def __init__(self, num: int, dim: int, batch: int, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", torch.zeros(num, dim))
        self.register_buffer("local_weights", torch.zeros(batch, dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch, dtype=torch.int32), persistent=False)

    def forward(self, ids):
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)


class Inner(nn.Module):
    def __init__(self, s: Setup, num_ids: int, dtype: torch.dtype):
        super().__init__()
        self.s, self.dtype = s, dtype
        self.embed_scale = math.sqrt(s.hidden)
        self.embed_tokens = nn.Module()
        self.embed_tokens.embedding_weight = nn.Parameter(torch.randn(s.vocab, s.hidden) / self.embed_scale)
        self.lm_head, self.q_head = CastedLinear(s.hidden, s.vocab), CastedLinear(s.hidden, 2, bias=True)
        self.puzzle_emb = SparseEmbedding(num_ids, s.hidden, s.batch, dtype)
        head_dim = s.hidden // s.heads
        inv = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(s.positions, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self.L_level = ReasoningModule(s)
        self.register_buffer("H_init", torch.randn(s.hidden, dtype=dtype))
        self.register_buffer("L_init", torch.randn(s.hidden, dtype=dtype))

    def forward(self, z_H, z_L, inputs, puzzle_ids):
        s = self.s
        cos_sin = (self.cos, self.sin) if s.arch == "attention" else None
        x = F.embedding(inputs.to(torch.int32), self.embed_tokens.embedding_weight.to(self.dtype))
        p = self.puzzle_emb(puzzle_ids)
        p = F.pad(p, (0, s.prefix * s.hidden - p.shape[-1])).view(-1, s.prefix, s.hidden)
        x = self.embed_scale * torch.cat((p, x), dim=-2)
        with torch.no_grad():
            for _ in range(s.T - 1):
                for _ in range(s.n):
                    z_L = self.L_level(z_L, z_H + x, cos_sin)
                z_H = self.L_level(z_H, z_L, cos_sin)
        for _ in range(s.n):
            z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin)
        logits = self.lm_head(z_H)[:, s.prefix:]
        q = self.q_head(z_H[:, 0]).to(torch.float32)
        return z_H.detach(), z_L.detach(), logits, q[..., 0]


def stablemax_cross_entropy(logits, labels, mask):
    x = logits.to(torch.float64)
    sx = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    logp = torch.log(sx / sx.sum(-1, keepdim=True))
    got = torch.gather(logp, -1, torch.where(mask, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return -torch.where(mask, got, 0)


class ACTLoss(nn.Module):
    """The reference's ACT wrapper and ACTLossHead as one module (what it compiles)."""

    KEYS = ("inputs", "labels", "puzzle_identifiers")

    def __init__(self, s: Setup, num_ids: int, dtype: torch.dtype, explore: float = 0.1):
        super().__init__()
        self.s, self.explore = s, explore
        self.inner = Inner(s, num_ids, dtype)

    def initial_carry(self, device) -> dict:
        s, dt = self.s, self.inner.dtype
        return {"z_H": torch.zeros(s.batch, s.positions, s.hidden, dtype=dt, device=device),
                "z_L": torch.zeros(s.batch, s.positions, s.hidden, dtype=dt, device=device),
                "steps": torch.zeros(s.batch, dtype=torch.int32, device=device),
                "halted": torch.ones(s.batch, dtype=torch.bool, device=device),
                "inputs": torch.zeros(s.batch, s.seq, dtype=torch.int32, device=device),
                "labels": torch.zeros(s.batch, s.seq, dtype=torch.int32, device=device),
                "puzzle_identifiers": torch.zeros(s.batch, dtype=torch.int32, device=device)}

    def forward(self, carry: dict, batch: dict):
        s, halted = self.s, carry["halted"]
        z_H = torch.where(halted.view(-1, 1, 1), self.inner.H_init, carry["z_H"])
        z_L = torch.where(halted.view(-1, 1, 1), self.inner.L_init, carry["z_L"])
        steps = torch.where(halted, 0, carry["steps"])
        data = {k: torch.where(halted.view(-1, *([1] * (batch[k].ndim - 1))), batch[k], carry[k]) for k in self.KEYS}
        z_H, z_L, logits, q_halt = self.inner(z_H, z_L, data["inputs"], data["puzzle_identifiers"])
        with torch.no_grad():
            steps = steps + 1
            halted = steps >= s.N_sup
            if self.training and s.N_sup > 1:
                halted = halted | (q_halt > 0)
                min_steps = (torch.rand_like(q_halt) < self.explore) * torch.randint_like(steps, 2, s.N_sup + 1)
                halted = halted & (steps >= min_steps)
        labels = data["labels"]
        with torch.no_grad():
            mask = labels != IGNORE
            counts = mask.sum(-1)
            divisor = counts.clamp_min(1).unsqueeze(-1)
            is_correct = mask & (logits.argmax(-1) == labels)
            seq_correct = is_correct.sum(-1) == counts
            valid = halted & (counts > 0)
            metrics = {"count": valid.sum(),
                       "accuracy": torch.where(valid, (is_correct.float() / divisor).sum(-1), 0).sum(),
                       "exact_accuracy": (valid & seq_correct).sum(),
                       "q_halt_accuracy": (valid & ((q_halt >= 0) == seq_correct)).sum(),
                       "steps": torch.where(valid, steps, 0).sum()}
        lm_loss = (stablemax_cross_entropy(logits, labels, mask) / divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.to(q_halt.dtype), reduction="sum")
        metrics.update(lm_loss=lm_loss.detach(), q_halt_loss=q_halt_loss.detach())
        new_carry = {"z_H": z_H, "z_L": z_L, "steps": steps, "halted": halted, **data}
        return new_carry, lm_loss + 0.5 * q_halt_loss, metrics


@torch.no_grad()
def sparse_sign_sgd(emb: SparseEmbedding, lr: float, weight_decay: float) -> None:
    grad, ids, w = emb.local_weights.grad, emb.local_ids, emb.weights
    uniq, inv = ids.unique(return_inverse=True)
    g = torch.zeros(len(uniq), grad.shape[-1], dtype=grad.dtype, device=grad.device)
    g.scatter_add_(0, inv.unsqueeze(-1).expand(-1, grad.shape[-1]), grad)
    p = w[uniq]
    p.mul_(1.0 - lr * weight_decay).add_(torch.sign(g), alpha=-lr)
    w[uniq] = p
    emb.local_weights.grad = None


def reference_step_fn(s: Setup, ds: PuzzleDataset, init: dict, device, dtype, compile_: bool, optimizer: str,
                      steps: int, seed: int):
    """(parameter count, step function returning the step's loss per sample on the host)."""
    with torch.device(device):  # as the reference: its grad-carrying embedding buffer must be a leaf there
        model = ACTLoss(s, ds.meta["num_puzzle_ids"], dtype)
    ref = model.state_dict()
    names = {reference_name(k): k for k in init}
    if set(ref) != set(names):
        raise KeyError(f"reference-style names {sorted(set(ref) ^ set(names))} do not match trm's")
    with torch.no_grad():  # trm's initial weights under the reference's names
        for name, t in ref.items():
            t.copy_(init[names[name]].to(t.dtype))
    ema = {k: p.detach().clone() for k, p in model.named_parameters()}
    compiled = torch.compile(model) if compile_ else model
    if optimizer == "adam_atan2":
        opt = AdamATan2(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=s.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=s.weight_decay,
                                fused=device.type == "cuda")
    # the batches its DataLoader would hand over: pinned int32 host tensors, one per step, the same stream
    stream = make_stream(ds, seed)
    batches = []
    for _ in range(steps):
        b = ds.batch(stream.take(s.batch))
        b = {"inputs": b["inputs"], "labels": b["labels"], "puzzle_identifiers": b["puzzle_ids"]}
        b = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int32)) for k, v in b.items()}
        batches.append({k: v.pin_memory() if device.type == "cuda" else v for k, v in b.items()})
    state = {"carry": model.initial_carry(device), "step": 0}

    def step() -> float:
        state["step"] += 1
        lr_scale = min(1.0, state["step"] / 2000)  # the reference's warmup (cosine far away)
        batch = {k: v.to(device) for k, v in batches[state["step"] - 1].items()}
        carry, loss, metrics = compiled(state["carry"], batch)
        state["carry"] = carry
        ((1 / s.batch) * loss).backward()
        sparse_sign_sgd(model.inner.puzzle_emb, 1e-2 * lr_scale, 1.0)  # trm's puzzle_emb_lr / _weight_decay
        for group in opt.param_groups:
            group["lr"] = 1e-4 * lr_scale
        opt.step()
        opt.zero_grad()
        keys = sorted(metrics)
        values = torch.stack([metrics[k].float() for k in keys]).cpu().numpy()  # rank 0 logs every step
        with torch.no_grad():  # EMAHelper.update
            for name, p in model.named_parameters():
                ema[name].data = 0.001 * p.data + 0.999 * ema[name].data
        m = dict(zip(keys, values))
        return (m["lm_loss"] + 0.5 * m["q_halt_loss"]) / s.batch

    return sum(p.numel() for p in model.parameters()), step  # as trm.model.count_parameters: no puzzle table
