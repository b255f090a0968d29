"""What the two throughput benchmarks share: trm's step and the reference-style loop built from the
same weights and data, timed alike (`compare`), the analytic FLOP count, and the device's peaks."""
from __future__ import annotations

import gc
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_loop import Setup, reference_step_fn, swiglu_width  # noqa: E402  (benchmarks/)

from trm.config import load_config  # noqa: E402
from trm.data.dataset import PuzzleDataset  # noqa: E402
from trm.model import count_parameters  # noqa: E402
from trm.train.loop import Trainer  # noqa: E402
from trm.train.session import LocalSession  # noqa: E402

# dense bf16 tensor-core peak, TFLOP/s, by substring of the device name (first match wins)
BF16_PEAK = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0), ("H200", 989.0),
             ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0)]


def spec_peak(device_name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s from its name, None when unknown."""
    return next((v for k, v in BF16_PEAK if k.lower() in device_name.lower()), None)


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


def trm_step_fn(s: Setup, data: Path, out: Path, device, bf16: bool, compile_: bool, optimizer: str, seed: int):
    """trm's Trainer for `s` on the dataset at `data`, and its initial weights (for the reference loop)."""
    cfg = load_config(None, {
        "model.arch": s.arch, "model.hidden": s.hidden, "model.heads": s.heads, "model.layers": s.layers,
        "model.n": s.n, "model.T": s.T, "model.N_sup": s.N_sup, "model.puzzle_emb_len": s.prefix,
        "model.puzzle_emb_ndim": s.hidden, "train.batch_size": s.batch, "train.device": device.type,
        "train.bf16": bf16, "train.compile": compile_, "train.optimizer": optimizer, "train.seed": seed,
        "train.weight_decay": s.weight_decay, "train.steps": 1_000_000, "data.path": str(data)})
    tr = Trainer(cfg, LocalSession(out))
    init = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    return tr, init


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


@dataclass
class LoopResult:
    params: int  # trm.model.count_parameters (the reference-style loop counted alike)
    seconds: float  # of the timed steps
    losses: list[float]  # warmup and timed steps
    peak_bytes: int | None  # CUDA peak memory (both loops together when interleaved)
    syncs: float | None  # host synchronisations per step (CUDA only)


def compare(s: Setup, data: Path, out: Path, device: torch.device, *, bf16: bool, compile_: bool, optimizer: str,
            warmup: int, steps: int, interleave: bool, seed: int) -> tuple[dict[str, LoopResult], bool]:
    """Time trm's step ("trm") and the reference-style loop ("reference") on the dataset at `data`, from
    the same initial weights; and whether trm's dataset sat on the device. Not interleaved, trm's loop
    is freed before the reference's is built, so that each one's peak memory is its own."""
    on_gpu = device.type == "cuda"
    free(device)
    tr, init = trm_step_fn(s, data, out, device, bf16, compile_, optimizer, seed)
    resident = tr.feed.resident
    params = {"trm": count_parameters(tr.model)}
    loops = {"trm": lambda: tr.train_step()["loss"]}
    timed, mem, syncs = {}, {}, {}
    for who in ("trm", "reference"):
        if who == "reference":
            params[who], loops[who] = reference_step_fn(
                s, PuzzleDataset(data, "train"), init, device, torch.bfloat16 if bf16 else torch.float32, compile_,
                optimizer, warmup + steps + 3, seed)
        if interleave and who == "trm":
            continue  # both built, then timed together
        run = loops if interleave else {who: loops[who]}
        timed.update(time_loops(run, warmup, steps, device, interleave))
        for k in run:
            mem[k] = torch.cuda.max_memory_allocated(device) if on_gpu else None
            syncs[k] = count_syncs(loops[k], device)
        if not interleave and who == "trm":
            del tr, loops["trm"]
            free(device)
    results = {k: LoopResult(params[k], timed[k][0], [float(x) for x in timed[k][1]], mem[k], syncs[k])
               for k in ("trm", "reference")}
    loops.clear()
    free(device)
    return results, resident
