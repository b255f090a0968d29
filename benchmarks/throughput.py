"""Training throughput of `trm` on Sudoku against the reference-style loop doing the same work.

    python benchmarks/throughput.py                      # CPU: TRM-MLP, paper sizes, batch 8 (~1-2 min)
    python benchmarks/throughput.py --batch 32 --steps 3 # CPU, larger batch (~10-20 s per step)
    python benchmarks/throughput.py --arch both --steps 5
    python benchmarks/throughput.py --bf16 --compile     # on a GPU: batch 768, adds tokens/s, TFLOP/s, MFU, memory

Both loops train the paper's Sudoku model (hidden 512, 2 layers, n=6, T=3, N_sup=16, 16-token
puzzle-embedding prefix; MLP-mixer by default, the paper's best Sudoku model; any size by flag)
on the same small generated Sudoku dataset, from the same initial weights:

  ours       trm.train.loop.Trainer.train_step(): one supervision step on every slot of the
             carried batch, then the optimiser, puzzle-embedding sign-SGD and the EMA.
  reference  benchmarks/reference_loop.py: the reference implementation's algorithm, written
             independently of trm (the loop benchmarks/gpu_throughput.py times too).

Both use torch AdamW (--optimizer adam_atan2: trm's AdamATan2). One timed iteration of either is
one optimiser step = one supervision step (forward, backward, optimiser, EMA) over `batch`
samples, so samples/s = batch * steps / time and supervision-steps/s = steps / time. On CPU
(default batch 8, 1 warmup + 10 timed steps each) the two loops' timed steps alternate, so
background load on a shared machine hits both alike; on CUDA (default batch 768, 3 + 20) they
run one after the other so that each one's peak memory is its own (--interleave / --no-interleave).

The FLOP count is analytic (benchmarks/step_timing.py: matmuls and attention scores, elementwise
work ignored): forward of T*(n+1) network calls plus the heads, and a backward of ~2x forward for
the n+1 calls (and the heads) that carry gradients.
"""
from __future__ import annotations

import argparse
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_loop import Setup  # noqa: E402  (benchmarks/reference_loop.py)
from step_timing import compare, flops, spec_peak  # noqa: E402  (benchmarks/step_timing.py)

from trm.data import sudoku  # noqa: E402


def build_data(root: Path, batch: int, puzzles: int, seed: int) -> Path:
    p, s, _ = sudoku.generate(puzzles, seed, 30, 40)
    augmentations = max(3, math.ceil(2 * batch / puzzles) - 1)  # at least two batches of samples
    return sudoku.build_dataset(root / "sudoku", (p, s), (p[:4], s[:4]), augmentations, seed)


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
    p.add_argument("--compile", action="store_true", help="torch.compile both loops")
    p.add_argument("--optimizer", choices=("adamw", "adam_atan2"), default="adamw")
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
    bf16 = args.bf16 and on_gpu
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    name = torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or platform.machine())
    peak = (args.peak_tflops or spec_peak(name)) if on_gpu else None
    print(f"torch {torch.__version__} | python {platform.python_version()} | device {device.type}: {name} | "
          f"threads {torch.get_num_threads()} | bf16 {bf16} | compile {args.compile} | optimizer {args.optimizer}")
    print(f"hidden {args.hidden}, layers {args.layers}, n {args.n}, T {args.T}, N_sup 16, heads 8, "
          f"puzzle prefix 16 | batch {args.batch} | warmup {args.warmup} + {args.steps} timed steps each, "
          f"{'interleaved' if args.interleave else 'one loop after the other'}")

    tmp = Path(tempfile.mkdtemp(prefix="trm-throughput-"))
    try:
        t0 = time.perf_counter()
        data = build_data(tmp, args.batch, args.puzzles, args.seed)
        n_train = len(np.load(data / "train" / "inputs.npy", mmap_mode="r"))
        print(f"data: {n_train} generated Sudoku samples (givens 30-40) in {time.perf_counter() - t0:.1f}s\n")

        for arch in (("mlp", "attention") if args.arch == "both" else (args.arch,)):
            s = Setup(f"sudoku-{arch}", arch, sudoku.SEQ_LEN, sudoku.VOCAB_SIZE, args.batch, hidden=args.hidden,
                      layers=args.layers, n=args.n, T=args.T)
            step_flops, _ = flops(s)
            rows, _ = compare(s, data, tmp / f"run-{arch}", device, bf16=bf16, compile_=args.compile,
                              optimizer=args.optimizer, warmup=args.warmup, steps=args.steps,
                              interleave=args.interleave, seed=args.seed)
            ours, ref = rows["trm"], rows["reference"]
            print(f"== arch {arch} | parameters: ours {ours.params:,}  reference {ref.params:,}  "
                  f"(diff {100 * (ref.params - ours.params) / ours.params:+.2f}%)")
            print(f"   analytic FLOPs per supervision step: {step_flops / 1e12:.3f} TFLOP "
                  f"(forward {args.T * (args.n + 1)} net calls, backward through {args.n + 1})")
            header = f"   {'':9s} {'samples/s':>10s} {'sup-steps/s':>12s} {'ms/step':>9s} {'GFLOP/s':>9s}"
            if on_gpu:
                header += f" {'tokens/s':>11s} {'TFLOP/s':>8s} {'MFU':>7s} {'peak GiB':>9s}"
            print(header)
            for who, r in (("ours", ours), ("reference", ref)):
                rate = args.steps / r.seconds
                line = (f"   {who:9s} {rate * args.batch:10.2f} {rate:12.3f} {1000 / rate:9.1f} "
                        f"{rate * step_flops / 1e9:9.1f}")
                if on_gpu:
                    tflops = rate * step_flops / 1e12
                    mfu = f"{100 * tflops / peak:6.1f}%" if peak else "    n/a"
                    line += (f" {rate * args.batch * sudoku.SEQ_LEN:11,.0f} {tflops:8.1f} {mfu:>7s} "
                             f"{r.peak_bytes / 2**30:9.2f}")
                print(line)
            print(f"   ratio ours/reference: {ref.seconds / ours.seconds:.2f}x  (samples/s; >1 means ours is faster)"
                  f"  | first loss: ours {ours.losses[0]:.4f}, reference {ref.losses[0]:.4f}\n")
        if on_gpu:
            print(f"tokens/s counts the {sudoku.SEQ_LEN} grid cells per sample; MFU is against a bf16 dense peak "
                  f"of {peak if peak else 'unknown (pass --peak-tflops)'} TFLOP/s"
                  f"{'' if bf16 else ' although this run is not bf16'}"
                  f"{'; peak memory is of both loops together (use --no-interleave)' if args.interleave else ''}.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
