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
  reference  benchmarks/reference_loop.py: the reference implementation's algorithm, written independently
             of trm (forward_dtype bfloat16, its compile scope, a new batch copied to the device per step,
             sign-SGD with unique(), a per-parameter EMA, metrics read back every step); torch AdamW
             standing in for its fused CUDA AdamATan2; --optimizer adam_atan2 gives both loops trm's.

One timed iteration is one optimiser step = one supervision step over `batch` samples:
samples/s = batch * steps/s, tokens/s = samples/s * (seq + prefix). FLOPs are counted analytically
(matmuls and attention scores; elementwise work ignored) and printed with their formula; MFU is
against the card's dense bf16 peak (spec table by device name) and against a measured bf16 matmul.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_loop import Setup  # noqa: E402  (benchmarks/reference_loop.py)
from step_timing import compare, flops, measured_peak, spec_peak  # noqa: E402  (benchmarks/step_timing.py)

from trm.data.dataset import IGNORE, DatasetWriter  # noqa: E402

NVLINK_BUS_GBS, PCIE_BUS_GBS = 360.0, 22.0  # all-reduce bus bandwidths assumed for the 2-GPU estimate

FULL = {"sudoku-mlp": Setup("sudoku-mlp", "mlp", 81, 11, 768),
        "arc-attention": Setup("arc-attention", "attention", 900, 12, 192, examples=3, weight_decay=0.1)}
TINY = {"sudoku-mlp": Setup("sudoku-mlp", "mlp", 81, 11, 8, hidden=32, heads=2, layers=1, n=2, T=2, N_sup=4),
        "arc-attention": Setup("arc-attention", "attention", 64, 12, 8, hidden=32, heads=2, layers=1, n=2, T=2,
                               N_sup=4, examples=3, weight_decay=0.1)}


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
    torch.set_num_threads(args.threads)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or platform.machine())
    spec = args.peak_tflops or (spec_peak(name) if on_gpu else None)
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
            total_flops, formula = flops(s)
            rows, resident = compare(s, data, tmp / f"run-{key}", device, bf16=bf16, compile_=compile_,
                                        optimizer=args.optimizer, warmup=warmup, steps=steps,
                                        interleave=interleave, seed=args.seed)

            print(f"\n== {key}: {s.arch}, seq {s.seq}+{s.prefix}, batch {s.batch}, hidden {s.hidden}, "
                  f"{s.layers} layers, n={s.n}, T={s.T}, N_sup={s.N_sup} | params trm {rows['trm'].params:,}, "
                  f"reference {rows['reference'].params:,} | trm's dataset on the device: {resident}")
            print(f"   FLOPs {formula}")
            print(f"   {'':10s} {'samples/s':>10s} {'sup-steps/s':>11s} {'tokens/s':>11s} {'TFLOP/s':>8s} "
                  f"{'MFU spec':>8s} {'MFU meas':>8s} {'peak GiB':>8s} {'syncs/st':>8s} "
                  f"{'loss@1':>8s} {'loss@last':>9s} {'mean last':>9s}")
            for who, r in rows.items():
                rate, losses = steps / r.seconds, r.losses
                tflops = rate * total_flops / 1e12
                tail = losses[-min(steps, 5):]
                print(f"   {who:10s} {rate * s.batch:10.1f} {rate:11.3f} {rate * s.batch * s.positions:11.0f} "
                      f"{tflops:8.3f} {f'{100 * tflops / spec:.1f}%' if spec else 'n/a':>8s} "
                      f"{100 * tflops / peak:7.1f}% {f'{r.peak_bytes / 2**30:.2f}' if r.peak_bytes else 'n/a':>8s} "
                      f"{f'{r.syncs:.1f}' if r.syncs is not None else 'n/a':>8s} "
                      f"{losses[0]:8.4f} {losses[-1]:9.4f} {sum(tail) / len(tail):9.4f}")
            ratio = rows["reference"].seconds / rows["trm"].seconds
            print(f"   ratio trm / reference samples/s: {ratio:.2f}x   (same steps: loss@last differs by "
                  f"{rows['trm'].losses[-1] - rows['reference'].losses[-1]:+.4f})")
            step_s = rows["trm"].seconds / steps
            grad_mb = 4 * rows["trm"].params / 1e6  # what DDP all-reduces: every nn.Parameter
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
