"""The sync-free training step: the same numbers as the step it replaced, and no host reads inside.

`legacy_step` below is the training step as it was before the step moved to the device (host
`nonzero()` + `stream.take(k)` + numpy batch copied in, a CPU exploration generator, AveragedModel's
update, the puzzle-embedding sign-SGD with `unique()`), run on a second Trainer built from the same
config: both must give bit-identical losses, weights, EMA, puzzle table, carried slots and stream
position. `SyncDetector` lists the ATen ops of a step that make the host wait for a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trm.data.dataset import PuzzleDataset, make_stream
from trm.model import PuzzleEmbedding
from trm.train.feed import DeviceFeed
from trm.train.loop import Trainer
from trm.train.losses import supervision_losses
from trm.train.optim import PuzzleEmbeddingSGD
from trm.train.session import LocalSession


# ---------------------------------------------------------------- the step it replaced
class LegacyPuzzleEmbeddingSGD(PuzzleEmbeddingSGD):
    """The previous sign-SGD update: sums gradients per id with unique(), which syncs the device."""

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        rows, ids = self.emb.last_rows, self.emb.last_ids
        if rows is None or rows.grad is None:
            return
        grad = rows.grad
        uniq, inv = ids.unique(return_inverse=True)
        summed = torch.zeros(len(uniq), grad.shape[-1], dtype=grad.dtype).index_add_(0, inv, grad)
        w = self.emb.weight
        lr = self.lr * lr_scale
        w[uniq] = w[uniq] * (1 - lr * self.weight_decay) - lr * summed.sign()
        self.emb.last_rows = self.emb.last_ids = None


class Legacy:
    """The previous step's host-side state: the host stream, a CPU exploration generator and the
    unique()-based puzzle-embedding update, for a Trainer `tr` (its model, optimiser, EMA, slots)."""

    def __init__(self, tr: Trainer):
        t = tr.cfg.train
        self.tr = tr
        self.stream = make_stream(tr.train_ds, t.seed, 0, 1)
        self.explore = torch.Generator().manual_seed(t.seed * 1000)
        self.emb_opt = (LegacyPuzzleEmbeddingSGD(tr.model.puzzle_emb, t.puzzle_emb_lr, t.puzzle_emb_weight_decay)
                        if tr.model.puzzle_emb is not None else None)

    def step(self) -> dict[str, torch.Tensor]:
        tr, cfg, s = self.tr, self.tr.cfg, self.tr.slots
        free = s.halted.nonzero().squeeze(-1)
        if len(free):
            batch = tr.train_ds.batch(self.stream.take(len(free)))
            s.tokens[free] = torch.as_tensor(batch["inputs"]).long()
            s.labels[free] = torch.as_tensor(batch["labels"]).long()
            s.puzzle_ids[free] = torch.as_tensor(batch["puzzle_ids"]).long()
            s.steps[free] = 0
            s.carry = tr.model.reset_carry(s.carry, s.halted)
        carry, out = tr.model(s.carry, s.tokens, s.puzzle_ids)
        s.steps += 1
        last = s.steps >= cfg.model.N_sup
        target_q = None
        if out.q_continue is not None:
            with torch.no_grad():
                _, nxt = tr.model(carry, s.tokens, s.puzzle_ids)
            target_q = torch.sigmoid(torch.where(last, nxt.q_halt, torch.maximum(nxt.q_halt, nxt.q_continue)))
        loss, parts, is_correct, token_correct = supervision_losses(
            out.logits, s.labels, out.q_halt, out.q_continue, target_q)
        loss.backward()
        lr_scale = tr.sched.get_last_lr()[0] / cfg.train.lr
        tr.opt.step()
        if self.emb_opt is not None:
            self.emb_opt.step(lr_scale)
        tr.opt.zero_grad(set_to_none=True)
        tr.sched.step()
        if tr.ema is not None:
            tr.ema.update_parameters(tr.model)
        tr.step += 1
        with torch.no_grad():
            halted = last.clone()
            if cfg.model.N_sup > 1:
                stop = out.q_halt > 0 if out.q_continue is None else out.q_halt > out.q_continue
                explore = torch.rand(len(stop), generator=self.explore) < cfg.model.halt_exploration
                min_steps = torch.randint(2, cfg.model.N_sup + 1, (len(stop),), generator=self.explore)
                halted |= stop & (s.steps >= torch.where(explore, min_steps, 0))
        s.carry, s.halted = carry, halted
        return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}


def _halting_head_that_halts(tr: Trainer) -> None:
    """A q-head that says "done" for some samples and not others, so that refills are partial."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        tr.model.q_head.weight.copy_(torch.randn(tr.model.q_head.weight.shape, generator=g))
        tr.model.q_head.bias.zero_()


def _state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    if tr.ema is not None:
        out.update({f"ema.{k}": v for k, v in tr.ema.state_dict().items()})
    s = tr.slots
    out.update({"slots.y": s.carry.y, "slots.z": s.carry.z, "slots.tokens": s.tokens, "slots.labels": s.labels,
                "slots.puzzle_ids": s.puzzle_ids, "slots.steps": s.steps, "slots.halted": s.halted})
    return out


@pytest.mark.parametrize("overrides", [
    {},
    {"halting": "q_learning", "arch": "mlp", "ema": 0.0},
    {"N_sup": 4, "halt_exploration": 0.5, "lr_schedule": "cosine", "steps": 30},
], ids=["bce", "q_learning-mlp-no-ema", "exploration"])
def test_sync_free_step_equals_the_previous_step(tiny_config, tmp_path, overrides):
    """Same seed, same config: the device step and the previous host step give bit-identical losses
    at every step, and identical weights, EMA, puzzle table, slots and stream position after 30."""
    cfg = tiny_config(**overrides)
    new, old = Trainer(cfg, LocalSession(tmp_path / "new")), Trainer(cfg, LocalSession(tmp_path / "old"))
    for tr in (new, old):
        _halting_head_that_halts(tr)
    legacy = Legacy(old)
    refills = set()
    for i in range(30):
        before = new.slots.halted.sum().item()
        a, b = new.train_step(), legacy.step()
        refills.add(before)
        for k in b:
            assert torch.equal(a[k], b[k]), (i, k, a[k], b[k])
    assert len(refills - {0, cfg.train.batch_size}) > 0  # some steps refilled only part of the slots
    sa, sb = _state(new), _state(old)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert new.stream.state_dict() == legacy.stream.state_dict()


def test_sign_sgd_without_unique_equals_the_unique_version():
    """Repeated ids (an ARC puzzle's examples share one): the same table after the update."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([5, 1, 5, 2, 1, 5, 7, 0])
    grad = torch.randn(len(ids), 6, generator=g)
    tables = []
    for cls in (LegacyPuzzleEmbeddingSGD, PuzzleEmbeddingSGD):
        emb = PuzzleEmbedding(9, 6)
        emb.weight.copy_(torch.randn(9, 6, generator=torch.Generator().manual_seed(1)))
        rows = emb.training_rows(ids)
        rows.grad = grad.clone()
        cls(emb, lr=0.01, weight_decay=0.5).step(lr_scale=0.3)
        tables.append(emb.weight.clone())
    assert torch.equal(tables[0], tables[1])
    assert not torch.equal(tables[0][3], tables[0][5])  # untouched rows stay, touched rows moved


# ---------------------------------------------------------------- the device feed
@pytest.mark.parametrize("resident", [True, False], ids=["resident", "ring-of-rows"])
@pytest.mark.parametrize("ahead", [2, 32])
def test_feed_gives_the_stream_in_slot_order_and_its_exact_position(sudoku_data, resident, ahead):
    ds = PuzzleDataset(sudoku_data, "train")
    B = 8
    feed = DeviceFeed(ds, make_stream(ds, 3), torch.device("cpu"), B, ahead=ahead,
                      resident_max_bytes=1 << 40 if resident else 0)
    assert feed.resident is resident
    reference = make_stream(ds, 3)
    rng = np.random.default_rng(0)
    for step in range(200):  # crosses epochs (160 samples each)
        free = torch.from_numpy(rng.random(B) < [0.0, 0.1, 0.5, 1.0][step % 4])
        got = feed.next(free)
        want = ds.batch(reference.take(int(free.sum())))
        for k in got:
            assert np.array_equal(got[k][free].numpy(), want[k]), (step, k)
        if step % 37 == 0:  # exact position at any time; the ring carries on afterwards
            assert feed.state_dict() == reference.state_dict()
    state = feed.state_dict()
    resumed = DeviceFeed(ds, make_stream(ds, 3), torch.device("cpu"), B, ahead=ahead)
    resumed.load_state_dict(state)
    free = torch.ones(B, dtype=torch.bool)
    assert np.array_equal(resumed.next(free)["inputs"].numpy(), ds.batch(reference.take(B))["inputs"])


# ---------------------------------------------------------------- no host synchronisation
SYNCING_OPS = {"nonzero", "_local_scalar_dense", "unique", "_unique", "_unique2", "unique_consecutive",
               "unique_dim", "masked_select", "equal", "is_nonzero", "allclose"}


class SyncDetector(TorchDispatchMode):
    """Records the ATen ops that, on a CUDA tensor, make the host wait for the device: a value read
    back (`item()`, `bool(t)`, `int(t)`, `tolist()` all reach `_local_scalar_dense`), output sizes
    known only on the device (`nonzero`, `unique`, `masked_select`, boolean-mask indexing,
    `repeat_interleave` without `output_size`). Host<->device copies cannot be told apart on a CPU;
    the step makes none but the feed's asynchronous pinned copies (see trm.train.feed).
    `allowed`: tensors that live on the host even in a CUDA run (the optimiser's step counts)."""

    def __init__(self, allowed: list[torch.Tensor] = ()):
        super().__init__()
        self.allowed = {t.data_ptr() for t in allowed}
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in SYNCING_OPS and not (name == "_local_scalar_dense" and args[0].data_ptr() in self.allowed):
            self.seen.append(name)
        if name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            self.seen.append(f"{name}[bool mask]")
        if name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.seen.append(name)
        return func(*args, **kwargs)


def _host_tensors(tr: Trainer) -> list[torch.Tensor]:
    return [st["step"] for st in tr.opt.state.values() if torch.is_tensor(st.get("step"))]


@pytest.mark.parametrize("optimizer", ["adam_atan2", "adamw"])
def test_the_step_reads_nothing_back_from_the_device(tiny_config, tmp_path, optimizer):
    tr = Trainer(tiny_config(optimizer=optimizer, N_sup=2), LocalSession(tmp_path / "new"))
    _halting_head_that_halts(tr)
    tr.train_step()  # creates the optimiser state
    with SyncDetector(_host_tensors(tr)) as d:
        for _ in range(6):  # refills (N_sup=2), ring writes, an epoch boundary on the way
            tr.train_step()
    assert d.seen == [], sorted(set(d.seen))

    old = Trainer(tiny_config(optimizer=optimizer, N_sup=2), LocalSession(tmp_path / "old"))
    legacy = Legacy(old)
    legacy.step()
    with SyncDetector(_host_tensors(old)) as d:
        for _ in range(3):
            legacy.step()
    assert {"nonzero", "_unique2"} <= set(d.seen)  # the detector sees what the old step did


# ---------------------------------------------------------------- compiled step
@pytest.mark.slow
def test_compiled_step_gives_the_eager_losses(tiny_config, tmp_path):
    """train.compile: the whole supervision step and the losses as graphs (Inductor's C++ on CPU)."""
    cfg = tiny_config()
    eager = Trainer(cfg, LocalSession(tmp_path / "eager"))
    compiled = Trainer(tiny_config(compile=True), LocalSession(tmp_path / "compiled"))
    for tr in (eager, compiled):
        _halting_head_that_halts(tr)
    for i in range(8):
        a, b = eager.train_step(), compiled.train_step()
        for k in ("loss", "lm_loss", "halt_loss", "halted", "exact"):
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (i, k, a[k], b[k])
    for (k, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-5), k


# ---------------------------------------------------------------- the benchmark
def test_gpu_throughput_benchmark_smokes_on_cpu():
    """benchmarks/gpu_throughput.py at its tiny CPU size: both loops, their figures and the ratio."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "gpu_throughput.py"), "--device", "cpu", "--tiny",
                        "--steps", "1", "--warmup", "1", "--threads", "1"],
                       capture_output=True, text=True, timeout=300, cwd=repo)
    assert r.returncode == 0, r.stderr[-3000:]
    for config in ("sudoku-mlp", "arc-attention"):
        assert f"== {config}:" in r.stdout
    assert r.stdout.count("ratio trm / reference samples/s:") == 2
    for line in r.stdout.splitlines():  # same weights, same first batch: the same first loss
        if line.strip().startswith(("trm ", "reference ")):
            assert len(line.split()) == 12, line
    firsts = [line.split()[9] for line in r.stdout.splitlines() if line.strip().startswith(("trm ", "reference "))]
    assert firsts[0] == firsts[1] and firsts[2] == firsts[3], r.stdout


# ---------------------------------------------------------------- DDP
def _ddp_steps(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    import torch.distributed as dist

    from trm.config import config_from_dict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        session = LocalSession(f"{out}/rank{rank}")
        session.rank, session.world_size = rank, world
        tr = Trainer(config_from_dict(cfg_dict), session)
        with torch.no_grad():
            tr.model.q_head.bias.zero_()  # some slots halt early: the ranks refill differently
        losses = [tr.train_step()["loss"] for _ in range(8)]
        torch.save({"weights": tr.model.state_dict(), "losses": torch.stack(losses),
                    "stream": tr.stream.state_dict()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_free_step_under_ddp_keeps_the_ranks_identical(tiny_config, tmp_path):
    """Two gloo ranks: DDP all-reduces the gradients and the sign-SGD all-gathers the puzzle rows, so
    the weights and the puzzle table stay identical while each rank takes its own shard of the stream."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_steps, args=(2, port, tiny_config().to_dict(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert torch.isfinite(a["losses"]).all() and not torch.equal(a["losses"], b["losses"])  # different samples
    assert a["stream"]["pos"] > 0 and b["stream"]["pos"] > 0
