"""Training throughput of `trm` against a plain PyTorch loop doing the same work.

    python benchmarks/throughput.py                      # CPU: TRM-MLP, paper sizes, batch 8 (~1-2 min)
    python benchmarks/throughput.py --batch 32 --steps 3 # CPU, larger batch (~10-20 s per step)
    python benchmarks/throughput.py --arch both --steps 5
    python benchmarks/throughput.py --bf16 --compile     # on a GPU: batch 768, adds tokens/s, TFLOP/s, MFU, memory

Both loops train the paper's Sudoku model (hidden 512, 2 layers, n=6, T=3,
N_sup=16, 16-token puzzle-embedding prefix; MLP-mixer by default, the paper's
best Sudoku model) on the same small generated Sudoku dataset:

  ours      trm.train.loop.Trainer.train_step(): one supervision step on every
            slot of the carried batch, then AdamW, puzzle-embedding sign-SGD
            and the EMA.
  baseline  written below from the paper's pseudocode, independently of `trm`:
            nn.Embedding, post-norm blocks with nn.RMSNorm and SwiGLU, latent
            recursion with T-1 no-grad passes then one with grad, softmax
            cross-entropy + BCE halting loss, backward, AdamW, zero_grad, an EMA
            updated by a Python loop over the parameters, and `break` out of the
            N_sup loop once every q_halt > 0.

One timed iteration of either is one optimizer step = one supervision step
(forward, backward, optimizer, EMA) over `batch` samples, so
samples/s = batch * steps / time and supervision-steps/s = steps / time.
On CPU (default batch 8, 1 warmup + 10 timed steps each) the two loops'
timed steps alternate, so background load on a shared machine hits both
alike; on CUDA (default batch 768, 3 + 20) they run one after the other so
that each one's peak memory is its own (--interleave / --no-interleave).

The FLOP count is analytic (matmuls and attention scores only, elementwise
work ignored): forward of T*(n+1) network calls plus the output heads, and a
backward of ~2x forward for the n+1 calls (and the heads) that carry gradients.
"""
from __future__ import annotations

import argparse
import copy
import gc
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trm.config import load_config
from trm.data import sudoku
from trm.model import count_parameters
from trm.train.loop import Trainer
from trm.train.session import LocalSession

PREFIX = 16  # puzzle-embedding prefix tokens (reference value, trm's default)
HEADS = 8
EXPANSION = 4.0
N_SUP = 16
# dense bf16 tensor-core peak in TFLOP/s, by substring of torch.cuda.get_device_name()
BF16_PEAK = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
             ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0)]


# =============================================================== the plain baseline
def swiglu_width(dim: int, expansion: float = EXPANSION) -> int:
    return 256 * math.ceil(expansion * dim * 2 / 3 / 256)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int):
        super().__init__()
        width = swiglu_width(dim)
        self.gate = nn.Linear(dim, width, bias=False)
        self.up = nn.Linear(dim, width, bias=False)
        self.down = nn.Linear(width, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def rotate_half(t):
    a, b = t.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, seq_len: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        head_dim = dim // heads
        freqs = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.arange(seq_len).float()[:, None] * freqs[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = (proj(x).view(B, L, self.heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        cos, sin = self.cos.to(q.dtype), self.sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(B, L, D))


class TokenMixer(nn.Module):
    """MLP-mixer: a SwiGLU along the sequence, shared by all channels."""

    def __init__(self, seq_len: int):
        super().__init__()
        self.mlp = FeedForward(seq_len)

    def forward(self, x):
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    def __init__(self, arch: str, dim: int, heads: int, seq_len: int):
        super().__init__()
        self.mix = SelfAttention(dim, heads, seq_len) if arch == "attention" else TokenMixer(seq_len)
        self.ff = FeedForward(dim)
        self.norm1 = nn.RMSNorm(dim, eps=1e-5, elementwise_affine=False)
        self.norm2 = nn.RMSNorm(dim, eps=1e-5, elementwise_affine=False)

    def forward(self, h):
        h = self.norm1(h + self.mix(h))
        return self.norm2(h + self.ff(h))


class PlainTRM(nn.Module):
    def __init__(self, arch, vocab, seq_len, num_puzzles, dim, layers, n, T, heads=HEADS):
        super().__init__()
        self.n, self.T, self.dim = n, T, dim
        self.input_emb = nn.Embedding(vocab, dim)
        self.puzzle_emb = nn.Embedding(num_puzzles, dim)  # fills the first prefix token, the rest are 0
        self.blocks = nn.ModuleList(Block(arch, dim, heads, seq_len + PREFIX) for _ in range(layers))
        self.output_head = nn.Linear(dim, vocab, bias=False)
        self.q_head = nn.Linear(dim, 2)
        nn.init.constant_(self.q_head.bias, -5.0)
        self.register_buffer("y_init", torch.randn(dim))
        self.register_buffer("z_init", torch.randn(dim))

    def input_embedding(self, tokens, puzzle_ids):
        B = tokens.shape[0]
        p = self.puzzle_emb(puzzle_ids)[:, None, :]
        pad = torch.zeros(B, PREFIX - 1, self.dim, device=tokens.device, dtype=p.dtype)
        return math.sqrt(self.dim) * torch.cat([p, pad, self.input_emb(tokens)], dim=1)

    def net(self, h, inject):
        h = h + inject
        for block in self.blocks:
            h = block(h)
        return h

    def latent_recursion(self, x, y, z):
        for _ in range(self.n):
            z = self.net(z, x + y)
        y = self.net(y, z)
        return y, z

    def deep_recursion(self, x, y, z):
        with torch.no_grad():
            for _ in range(self.T - 1):
                y, z = self.latent_recursion(x, y, z)
        y, z = self.latent_recursion(x, y, z)
        return (y.detach(), z.detach()), self.output_head(y[:, PREFIX:]), self.q_head(y[:, 0])


def plain_training(model, ema_model, loader, opt, device, use_bf16, ema_decay=0.999):
    """The paper's deep-supervision loop; yields after every optimizer step."""
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    ema_params = list(ema_model.parameters())
    while True:
        for tokens, labels, puzzle_ids in loader:
            tokens, labels, puzzle_ids = tokens.to(device), labels.to(device), puzzle_ids.to(device)
            B, L = tokens.shape[0], tokens.shape[1] + PREFIX
            y = model.y_init.expand(B, L, -1)
            z = model.z_init.expand(B, L, -1)
            for step in range(N_SUP):
                with amp:
                    x = model.input_embedding(tokens, puzzle_ids)
                    (y, z), logits, q = model.deep_recursion(x, y, z)
                logits, q_halt = logits.float(), q[:, 0].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
                solved = (logits.argmax(-1) == labels).all(-1).float()
                loss = loss + 0.5 * F.binary_cross_entropy_with_logits(q_halt, solved)
                loss.backward()
                opt.step()
                opt.zero_grad()
                with torch.no_grad():
                    for p_ema, p in zip(ema_params, model.parameters()):
                        p_ema.mul_(ema_decay).add_(p, alpha=1 - ema_decay)
                yield loss.detach()
                if (q_halt > 0).all():
                    break


# =============================================================== measurement
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(builders: dict, warmup: int, steps: int, device, interleave: bool) -> dict:
    """Seconds for `steps` optimizer steps of each loop, and its peak CUDA memory.

    builders: name -> () -> (parameter count, step function). Sequential: build,
    warm up, time, free one loop after the other. Interleaved (for a CPU shared
    with other work): build both, warm up both, then alternate single timed
    steps, so that both see the same background load.
    """
    results = {}
    if not interleave:
        for name, build in builders.items():
            free(device)
            params, step = build()
            for _ in range(warmup):
                step()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            seconds = time.perf_counter() - t0
            mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            results[name] = (params, seconds, mem)
            del step
        free(device)
        return results
    free(device)
    loops = {name: build() for name, build in builders.items()}
    for _ in range(warmup):
        for _, step in loops.values():
            step()
    seconds = dict.fromkeys(loops, 0.0)
    for _ in range(steps):
        for name, (_, step) in loops.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            seconds[name] += time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None  # of both together
    results = {name: (params, seconds[name], mem) for name, (params, _) in loops.items()}
    del loops
    free(device)
    return results


def flops_per_step(arch, batch, dim, layers, n, T, seq_len, vocab, heads=HEADS):
    """Analytic matmul + attention-score FLOPs of one supervision step (forward + backward)."""
    L = seq_len + PREFIX
    tokens = batch * L
    block = 2 * tokens * 3 * dim * swiglu_width(dim)  # channel SwiGLU
    if arch == "attention":
        block += 2 * tokens * 4 * dim * dim  # q, k, v, o
        block += 2 * 2 * batch * L * L * dim  # q k^T and attn @ v over all heads
    else:
        block += 2 * (batch * dim) * 3 * L * swiglu_width(L)  # SwiGLU along the sequence, per channel
    net = layers * block
    head = 2 * batch * seq_len * dim * vocab + 2 * batch * dim * 2
    forward = T * (n + 1) * net + head
    backward = 2 * ((n + 1) * net + head)
    return forward + backward


def bf16_peak(name: str) -> float | None:
    for key, tflops in BF16_PEAK:
        if key.lower() in name.lower():
            return tflops
    return None


def build_data(root: Path, batch: int, puzzles: int, seed: int) -> Path:
    p, s, _ = sudoku.generate(puzzles, seed, 30, 40)
    augmentations = max(3, math.ceil(2 * batch / puzzles) - 1)  # at least two batches of samples
    return sudoku.build_dataset(root / "sudoku", (p, s), (p[:4], s[:4]), augmentations, seed)


def build_ours(args, arch, data: Path, out: Path, device):
    cfg = load_config(None, {
        "model.arch": arch, "model.hidden": args.hidden, "model.n": args.n, "model.T": args.T,
        "model.layers": args.layers, "model.heads": HEADS, "model.expansion": EXPANSION, "model.N_sup": N_SUP,
        "model.puzzle_emb_len": PREFIX, "model.puzzle_emb_ndim": args.hidden, "train.batch_size": args.batch,
        "train.device": device.type, "train.bf16": args.bf16, "train.compile": args.compile,
        "data.path": str(data)})
    trainer = Trainer(cfg, LocalSession(out))
    return count_parameters(trainer.model), trainer.train_step


def build_baseline(args, arch, data: Path, device):
    arrays = {k: torch.from_numpy(np.load(data / "train" / f"{k}.npy").astype(np.int64))
              for k in ("inputs", "labels", "puzzle_ids")}
    dataset = torch.utils.data.TensorDataset(arrays["inputs"], arrays["labels"], arrays["puzzle_ids"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True)
    vocab, seq_len = sudoku.VOCAB_SIZE, sudoku.SEQ_LEN
    num_puzzles = int(arrays["puzzle_ids"].max()) + 1
    model = PlainTRM(arch, vocab, seq_len, num_puzzles, args.hidden, args.layers, args.n, args.T).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    if args.compile:
        for block in model.blocks:
            block.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1.0)
    params = sum(p.numel() for p in model.parameters())
    steps = plain_training(model, ema_model, loader, opt, device, args.bf16 and device.type == "cuda")
    return params, lambda: next(steps)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("attention", "mlp", "both"), default="mlp")
    p.add_argument("--batch", type=int, help="samples per optimizer step (default 8 on CPU, 768 on CUDA)")
    p.add_argument("--steps", type=int, help="timed optimizer steps of each loop (default 10 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed optimizer steps of each loop first (default 1 on CPU, "
                                              "3 on CUDA; use more with --compile)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="alternate timed steps of the two loops (default on CPU, where the machine may be "
                        "shared; off on CUDA, where it would mix their peak memory)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--T", type=int, default=3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks of both models")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--puzzles", type=int, default=32, help="generated training puzzles (then augmented)")
    p.add_argument("--peak-tflops", type=float, help="bf16 dense peak of the GPU, for MFU")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    on_gpu = device.type == "cuda"
    args.batch = args.batch or (768 if on_gpu else 8)
    args.steps = args.steps or (20 if on_gpu else 10)
    args.warmup = (3 if on_gpu else 1) if args.warmup is None else args.warmup
    args.interleave = (not on_gpu) if args.interleave is None else args.interleave
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    name = torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or platform.machine())
    peak = (args.peak_tflops or bf16_peak(name)) if on_gpu else None
    print(f"torch {torch.__version__} | python {platform.python_version()} | device {device.type}: {name} | "
          f"threads {torch.get_num_threads()} | bf16 {args.bf16 and on_gpu} | compile {args.compile}")
    print(f"hidden {args.hidden}, layers {args.layers}, n {args.n}, T {args.T}, N_sup {N_SUP}, heads {HEADS}, "
          f"puzzle prefix {PREFIX} | batch {args.batch} | warmup {args.warmup} + {args.steps} timed steps each, "
          f"{'interleaved' if args.interleave else 'one loop after the other'}")

    tmp = Path(tempfile.mkdtemp(prefix="trm-throughput-"))
    try:
        t0 = time.perf_counter()
        data = build_data(tmp, args.batch, args.puzzles, args.seed)
        n_train = len(np.load(data / "train" / "inputs.npy", mmap_mode="r"))
        print(f"data: {n_train} generated Sudoku samples (givens 30-40) in {time.perf_counter() - t0:.1f}s\n")

        for arch in (("mlp", "attention") if args.arch == "both" else (args.arch,)):
            flops = flops_per_step(arch, args.batch, args.hidden, args.layers, args.n, args.T,
                                   sudoku.SEQ_LEN, sudoku.VOCAB_SIZE)
            rows = measure({"ours": lambda: build_ours(args, arch, data, tmp / f"run-{arch}", device),
                            "baseline": lambda: build_baseline(args, arch, data, device)},
                           args.warmup, args.steps, device, args.interleave)

            p_ours, p_base = rows["ours"][0], rows["baseline"][0]
            print(f"== arch {arch} | parameters: ours {p_ours:,}  baseline {p_base:,}  "
                  f"(diff {100 * (p_base - p_ours) / p_ours:+.2f}%)")
            print(f"   analytic FLOPs per supervision step: {flops / 1e12:.3f} TFLOP "
                  f"(forward {args.T * (args.n + 1)} net calls, backward through {args.n + 1})")
            header = f"   {'':9s} {'samples/s':>10s} {'sup-steps/s':>12s} {'ms/step':>9s} {'GFLOP/s':>9s}"
            if on_gpu:
                header += f" {'tokens/s':>11s} {'TFLOP/s':>8s} {'MFU':>7s} {'peak GiB':>9s}"
            print(header)
            for who, (_, sec, mem) in rows.items():
                rate = args.steps / sec
                line = (f"   {who:9s} {rate * args.batch:10.2f} {rate:12.3f} {1000 / rate:9.1f} "
                        f"{rate * flops / 1e9:9.1f}")
                if on_gpu:
                    tflops = rate * flops / 1e12
                    mfu = f"{100 * tflops / peak:6.1f}%" if peak else "    n/a"
                    line += (f" {rate * args.batch * sudoku.SEQ_LEN:11,.0f} {tflops:8.1f} {mfu:>7s} "
                             f"{mem / 2**30:9.2f}")
                print(line)
            ratio = rows["baseline"][1] / rows["ours"][1]
            print(f"   ratio ours/baseline: {ratio:.2f}x  (samples/s; >1 means ours is faster)\n")
        if on_gpu:
            print(f"tokens/s counts the {sudoku.SEQ_LEN} grid cells per sample; MFU is against a bf16 dense peak "
                  f"of {peak if peak else 'unknown (pass --peak-tflops)'} TFLOP/s"
                  f"{'' if args.bf16 else ' although this run is not bf16'}"
                  f"{'; peak memory is of both loops together (use --no-interleave)' if args.interleave else ''}.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
