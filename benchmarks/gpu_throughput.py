"""Training throughput of trm's step on one device, against a reference-style loop doing the same work.

    python benchmarks/gpu_throughput.py                          # CUDA: both configs at the paper's sizes
    python benchmarks/gpu_throughput.py --config arc-attention --steps 40
    python benchmarks/gpu_throughput.py --device cpu --tiny      # CI smoke (the default without CUDA): < 60 s

Configs (the paper's models; random tokens, which does not change the work of a step):
  sudoku-mlp      MLP-mixer, seq 81 + 16 puzzle-prefix tokens, batch 768, hidden 512, 2 layers, n=6, T=3
  arc-attention   attention, seq 900 + 16, batch 192 (the reference's 768 over 4 GPUs, per GPU)

Loops (same initial weights, same first batch, same optimiser class, same number of steps):
  trm        trm.train.loop.Trainer.train_step: bf16 autocast and TF32 on CUDA, the whole supervision
             step compiled (--compile, default on CUDA), no host synchronisation in the step (device
             refill/halting/exploration/sign-SGD/EMA), dataset resident on the device.
  reference  written here from the reference implementation's published algorithm
             (SamsungSAILMontreal/TinyRecursiveModels: pretrain.py, models/recursive_reasoning/trm.py,
             models/layers.py, models/losses.py, models/sparse_embedding.py, models/ema.py):
             forward_dtype bfloat16 (fp32 weights cast to bf16 in every layer, carry in bf16), its compile
             scope (torch.compile of the whole ACT model + loss head), a new batch per step copied to the
             device (prepared in advance here, as its DataLoader workers do), halted slots take the new
             batch's sample in their slot, loss summed and scaled by 1/batch, sign-SGD of the puzzle
             embedding with unique(), a per-parameter EMA, and its per-step metrics read back on rank 0.
             The optimiser: torch AdamW (fused on CUDA) standing in for its fused CUDA AdamATan2 (the
             `adam_atan2` extension); --optimizer adam_atan2 gives both loops trm's AdamATan2 instead.

One timed iteration is one optimiser step = one supervision step over `batch` samples:
samples/s = batch * steps/s, tokens/s = samples/s * (seq + prefix). FLOPs are counted analytically
(matmuls and attention scores; elementwise work ignored) and printed with their formula; MFU is
against the card's dense bf16 peak (spec table by device name) and against a measured bf16 matmul.
"""
from __future__ import annotations

import argparse
import gc
import math
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trm.config import load_config  # noqa: E402
from trm.data.dataset import IGNORE, DatasetWriter, PuzzleDataset, make_stream  # noqa: E402
from trm.model import count_parameters  # noqa: E402
from trm.official import reference_name  # noqa: E402
from trm.train.loop import Trainer  # noqa: E402
from trm.train.optim import AdamATan2  # noqa: E402
from trm.train.session import LocalSession  # noqa: E402

# dense bf16 tensor-core peak, TFLOP/s, by substring of the device name (first match wins)
BF16_PEAK = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0), ("H200", 989.0),
             ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0)]
NVLINK_BUS_GBS, PCIE_BUS_GBS = 360.0, 22.0  # all-reduce bus bandwidths assumed for the 2-GPU estimate


@dataclass
class Setup:
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


FULL = {"sudoku-mlp": Setup("sudoku-mlp", "mlp", 81, 11, 768),
        "arc-attention": Setup("arc-attention", "attention", 900, 12, 192, examples=3, weight_decay=0.1)}
TINY = {"sudoku-mlp": Setup("sudoku-mlp", "mlp", 81, 11, 8, hidden=32, heads=2, layers=1, n=2, T=2, N_sup=4),
        "arc-attention": Setup("arc-attention", "attention", 64, 12, 8, hidden=32, heads=2, layers=1, n=2, T=2,
                               N_sup=4, examples=3, weight_decay=0.1)}


# =============================================================== FLOPs
def swiglu_width(dim: int, expansion: float = 4.0) -> int:
    return 256 * math.ceil(round(expansion * dim * 2 / 3) / 256)


def flops(s: Setup) -> tuple[float, str]:
    """Matmul + attention-score FLOPs of one supervision step (forward + backward), and the formula."""
    Lp, D, W, B = s.positions, s.hidden, swiglu_width(s.hidden), s.batch
    channel = 6 * Lp * D * W  # SwiGLU over channels: gate_up (D -> 2W) and down (W -> D), 2 FLOPs a MAC
    if s.arch == "attention":
        mix, mix_f = 8 * Lp * D * D + 4 * Lp * Lp * D, "8 L'D^2 (qkv, out) + 4 L'^2 D (scores, AV)"
    else:
        Wt = swiglu_width(Lp)
        mix, mix_f = 6 * D * Lp * Wt, f"6 D L' Wt (token SwiGLU, Wt={Wt})"
    net = s.layers * (channel + mix)
    heads = 2 * s.positions * D * s.vocab + 2 * D * 2  # lm_head (as the reference: on every position), q_head
    calls_fwd, calls_graded = s.T * (s.n + 1), s.n + 1
    per_sample = calls_fwd * net + heads + 2 * (calls_graded * net + heads)
    text = (f"per sample: net = layers x [6 L'D W (channel SwiGLU, W={W}) + {mix_f}] = {net / 1e9:.3f} GFLOP "
            f"(L'={Lp}, D={D}); forward T(n+1)={calls_fwd} net calls + heads ({heads / 1e6:.2f} MFLOP), "
            f"backward 2x the last (n+1)={calls_graded} calls + heads: {calls_fwd + 2 * calls_graded} x net "
            f"+ 3 x heads = {per_sample / 1e9:.2f} GFLOP; x batch {B} = {per_sample * B / 1e12:.3f} TFLOP/step")
    return per_sample * B, text


# =============================================================== the reference-style loop
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

    return sum(p.numel() for p in model.parameters()) + model.inner.puzzle_emb.weights.numel(), step


# =============================================================== trm's loop
def build_data(root: Path, s: Setup, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    n = 8 * s.batch * s.examples
    inputs = rng.integers(1, s.vocab, (n, s.seq), dtype=np.int64).astype(np.uint8)
    labels = rng.integers(1, s.vocab, (n, s.seq), dtype=np.int64).astype(np.int16)
    if s.arch == "attention":  # ARC grids are padded: half the positions are not scored
        labels[:, s.seq // 2:] = IGNORE
    puzzle = np.arange(n) // s.examples
    per_group = 4  # augmentations of a group; one of them per epoch
    meta = {"name": f"bench-{s.name}", "vocab_size": s.vocab, "seq_len": s.seq,
            "num_puzzle_ids": int(puzzle.max()) + 1 if s.examples > 1 else 1}
    with DatasetWriter(root / s.name, meta, overwrite=True) as w:
        w.append("train", inputs=inputs, labels=labels,
                 puzzle_ids=(puzzle if s.examples > 1 else np.zeros(n, np.int64)).astype(np.int32),
                 group_ids=(puzzle // per_group).astype(np.int32), aug_ids=(puzzle % per_group).astype(np.int32))
        w.append("test", inputs=inputs[:8], labels=labels[:8], puzzle_ids=np.zeros(8, np.int32))
    return root / s.name


def trm_step_fn(s: Setup, data: Path, out: Path, device, bf16: bool, compile_: bool, optimizer: str, seed: int):
    cfg = load_config(None, {
        "model.arch": s.arch, "model.hidden": s.hidden, "model.heads": s.heads, "model.layers": s.layers,
        "model.n": s.n, "model.T": s.T, "model.N_sup": s.N_sup, "model.puzzle_emb_len": s.prefix,
        "model.puzzle_emb_ndim": s.hidden, "train.batch_size": s.batch, "train.device": device.type,
        "train.bf16": bf16, "train.compile": compile_, "train.optimizer": optimizer, "train.seed": seed,
        "train.weight_decay": s.weight_decay, "train.steps": 1_000_000, "data.path": str(data)})
    tr = Trainer(cfg, LocalSession(out))
    init = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    return tr, init


# =============================================================== measurement
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device):
    torch._dynamo.reset()  # compiled graphs hold their models' tensors
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measured_peak(device) -> float:
    """Dense matmul TFLOP/s actually reached (best of 5 trials): bf16 8192^3 on CUDA, fp32 512^3 on CPU."""
    n, dtype, reps = (8192, torch.bfloat16, 20) if device.type == "cuda" else (512, torch.float32, 4)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 * reps / best / 1e12


def count_syncs(step, device, k: int = 3) -> float | None:
    """Host synchronisations per step, as CUDA's sync debug mode reports them (CUDA only)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(k):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in seen) / k


def time_loops(loops: dict, warmup: int, steps: int, device, interleave: bool) -> dict[str, tuple[float, list]]:
    """Seconds for `steps` steps of each loop after `warmup`, and the losses of all steps. On CUDA one
    loop after the other; on a (shared) CPU interleaved, step by step, so that both see the same load."""
    losses = {k: [] for k in loops}
    seconds = dict.fromkeys(loops, 0.0)
    order = [list(loops)] if interleave else [[k] for k in loops]
    for group in order:
        for _ in range(warmup):
            for k in group:
                losses[k].append(loops[k]())
        for _ in range(steps):
            for k in group:
                sync(device)
                t0 = time.perf_counter()
                losses[k].append(loops[k]())
                sync(device)
                seconds[k] += time.perf_counter() - t0
    return {k: (seconds[k], losses[k]) for k in loops}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("sudoku-mlp", "arc-attention", "both"), default="both")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                   help="small models and batches (default: on without CUDA)")
    p.add_argument("--steps", type=int, help="timed steps of each loop (default 30 on CUDA, 4 tiny)")
    p.add_argument("--warmup", type=int, help="untimed steps first, compilation included (default 5, 2 tiny)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile in both loops (default: on CUDA)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="trm: bf16 autocast; reference: forward_dtype bfloat16 (default: on CUDA)")
    p.add_argument("--optimizer", choices=("adamw", "adam_atan2"), default="adamw")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="alternate the two loops' timed steps (default on CPU, where the machine may be shared; "
                        "off on CUDA, so that each loop's peak memory is its own)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: from its name)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    on_gpu = device.type == "cuda"
    tiny = (not on_gpu) if args.tiny is None else args.tiny
    steps = args.steps or (4 if tiny else 30)
    warmup = args.warmup if args.warmup is not None else (2 if tiny else 5)
    compile_ = on_gpu if args.compile is None else args.compile
    bf16 = on_gpu if args.bf16 is None else args.bf16
    interleave = (not on_gpu) if args.interleave is None else args.interleave
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.set_num_threads(args.threads)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or platform.machine())
    spec = args.peak_tflops or (next((v for k, v in BF16_PEAK if k.lower() in name.lower()), None) if on_gpu else None)
    peak = measured_peak(device)
    print(f"torch {torch.__version__} | {device.type}: {name} | {'tiny' if tiny else 'paper'} sizes | bf16 {bf16} | "
          f"compile {compile_} | optimizer {args.optimizer} | {warmup} warmup + {steps} timed steps per loop")
    print(f"peak: spec {f'{spec:.0f} TFLOP/s dense bf16' if spec else 'unknown'}; measured matmul "
          f"{peak:.2f} TFLOP/s ({'bf16 8192^3' if on_gpu else 'fp32 512^3'})")

    tmp = Path(tempfile.mkdtemp(prefix="trm-gpu-throughput-"))
    try:
        for key in (("sudoku-mlp", "arc-attention") if args.config == "both" else (args.config,)):
            s = (TINY if tiny else FULL)[key]
            data = build_data(tmp, s, args.seed)
            ds = PuzzleDataset(data, "train")
            total_flops, formula = flops(s)
            free(device)
            tr, init = trm_step_fn(s, data, tmp / f"run-{key}", device, bf16, compile_, args.optimizer, args.seed)
            resident = tr.feed.resident
            params = {"trm": count_parameters(tr.model)}
            n_dense = sum(p.numel() for p in tr.model.parameters())  # what DDP all-reduces
            loops = {"trm": lambda: tr.train_step()["loss"]}
            results, mem, syncs = {}, {}, {}
            for who in ("trm", "reference"):
                if who == "reference":
                    params[who], loops[who] = reference_step_fn(s, ds, init, device, dtype, compile_, args.optimizer,
                                                                warmup + steps + 3, args.seed)
                if interleave and who == "trm":
                    continue  # both built, then timed together
                run = loops if interleave else {who: loops[who]}
                results.update(time_loops(run, warmup, steps, device, interleave))
                for k in run:
                    mem[k] = torch.cuda.max_memory_allocated(device) if on_gpu else None
                    syncs[k] = count_syncs(loops[k], device)
                if not interleave and who == "trm":
                    del tr, loops["trm"]
                    free(device)
            rows = {k: (params[k], results[k][0], [float(x) for x in results[k][1]], mem[k], syncs[k])
                    for k in ("trm", "reference")}
            loops.clear()
            free(device)

            print(f"\n== {key}: {s.arch}, seq {s.seq}+{s.prefix}, batch {s.batch}, hidden {s.hidden}, "
                  f"{s.layers} layers, n={s.n}, T={s.T}, N_sup={s.N_sup} | params trm {rows['trm'][0]:,}, "
                  f"reference {rows['reference'][0]:,} | trm's dataset on the device: {resident}")
            print(f"   FLOPs {formula}")
            print(f"   {'':10s} {'samples/s':>10s} {'sup-steps/s':>11s} {'tokens/s':>11s} {'TFLOP/s':>8s} "
                  f"{'MFU spec':>8s} {'MFU meas':>8s} {'peak GiB':>8s} {'syncs/st':>8s} "
                  f"{'loss@1':>8s} {'loss@last':>9s} {'mean last':>9s}")
            for who, (_, sec, losses, mem, syncs) in rows.items():
                rate = steps / sec
                tflops = rate * total_flops / 1e12
                tail = losses[-min(steps, 5):]
                print(f"   {who:10s} {rate * s.batch:10.1f} {rate:11.3f} {rate * s.batch * s.positions:11.0f} "
                      f"{tflops:8.3f} {f'{100 * tflops / spec:.1f}%' if spec else 'n/a':>8s} "
                      f"{100 * tflops / peak:7.1f}% {f'{mem / 2**30:.2f}' if mem else 'n/a':>8s} "
                      f"{f'{syncs:.1f}' if syncs is not None else 'n/a':>8s} "
                      f"{losses[0]:8.4f} {losses[-1]:9.4f} {sum(tail) / len(tail):9.4f}")
            ratio = rows["reference"][1] / rows["trm"][1]
            print(f"   ratio trm / reference samples/s: {ratio:.2f}x   (same steps: loss@last differs by "
                  f"{rows['trm'][2][-1] - rows['reference'][2][-1]:+.4f})")
            step_s = rows["trm"][1] / steps
            grad_mb = 4 * n_dense / 1e6
            emb_mb = 2 * s.batch * (4 * s.hidden + 8) / 1e6
            for link, bw in (("NVLink", NVLINK_BUS_GBS), ("PCIe", PCIE_BUS_GBS)):
                t = (grad_mb + emb_mb) / 1e3 / bw
                print(f"   2 GPUs ({link}, ~{bw:.0f} GB/s bus): all-reduce {grad_mb:.1f} MB of fp32 gradients + "
                      f"all-gather {emb_mb:.2f} MB of puzzle rows per step ~ {1e3 * t:.2f} ms vs a "
                      f"{1e3 * step_s:.1f} ms step ({100 * t / step_s:.2f}%; not overlapped: the shared net's "
                      f"gradient is complete only at the end of the backward)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
