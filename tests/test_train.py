import pytest
import torch

from trm.train import checkpoint as ckpt
from trm.train.loop import Trainer, load_for_eval
from trm.train.session import LocalSession


class Crash(Exception):
    pass


def crash_at(step):
    def on_report(metrics, s):
        if s == step:
            raise Crash(f"simulated crash after step {s}")
    return on_report


def _weights(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.state_dict().items()})
    return out


@pytest.mark.parametrize("total", [
    200, pytest.param(2000, marks=pytest.mark.slow, id="2k-steps")])
def test_exact_resume(tiny_config, tmp_path, total):
    """`total` steps straight == total/2 steps, crash, resume, total/2 more: identical weights."""
    half = total // 2
    cfg = tiny_config(steps=total, eval_every=half // 2, checkpoint_every=half, lr_schedule="cosine")
    straight = Trainer(cfg, LocalSession(tmp_path / "a"))
    straight.fit()

    with pytest.raises(Crash):
        Trainer(cfg, LocalSession(tmp_path / "b", on_report=crash_at(half + half // 2))).fit()
    # the crash came half an eval interval after the last checkpoint: that work is redone
    assert ckpt.latest_local(tmp_path / "b" / "checkpoints").name == ckpt.step_dir_name(half)
    resumed = Trainer(cfg, LocalSession(tmp_path / "b"))
    resumed.fit()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.step == resumed.step == total
    assert torch.equal(straight.slots.carry.z, resumed.slots.carry.z)
    assert straight.stream.state_dict() == resumed.stream.state_dict()


def test_ema_matches_hand_computed(tiny_config, tmp_path):
    decay = 0.5
    tr = Trainer(tiny_config(ema=decay), LocalSession(tmp_path))
    initial = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    raw_after = []
    for _ in range(4):
        tr.train_step()
        raw_after.append({k: v.detach().clone() for k, v in tr.model.named_parameters()})
    # the reference's EMAHelper: registered from the initial weights, then after every step
    # ema <- decay * ema + (1 - decay) * param (the first update included)
    hand = dict(initial)
    for params in raw_after:
        hand = {k: decay * hand[k] + (1 - decay) * params[k] for k in hand}
    ema = dict(tr.ema.module.named_parameters())
    for k, v in hand.items():
        assert torch.allclose(ema[k], v, atol=1e-6), k
    assert any(not torch.allclose(ema[k], raw_after[-1][k]) for k in hand)  # EMA differs from raw


def test_halting_forces_a_refill_after_N_sup(tiny_config, tmp_path):
    tr = Trainer(tiny_config(N_sup=3, halt_exploration=0.0), LocalSession(tmp_path))
    for _ in range(3):
        tr.train_step()
    # untrained halting head never says "done" (bias -5), so every slot halts at N_sup exactly
    assert tr.slots.halted.all() and (tr.slots.steps == 3).all()


def test_incompatible_checkpoint_is_refused(tiny_config, tmp_path):
    Trainer(tiny_config(steps=25), LocalSession(tmp_path)).fit()
    other = Trainer(tiny_config(steps=50, hidden=32, puzzle_emb_ndim=32), LocalSession(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match=r"model.hidden: checkpoint 16 vs config 32"):
        other.fit()


def test_corrupt_latest_falls_back_to_previous(tiny_config, tmp_path):
    Trainer(tiny_config(steps=50), LocalSession(tmp_path)).fit()
    root = tmp_path / "checkpoints"
    newest = ckpt.latest_local(root)
    assert newest.name == ckpt.step_dir_name(50)
    with open(newest / "state.pt", "r+b") as f:  # flip bytes in the middle
        f.seek(200)
        f.write(b"\x00garbage\x00")
    assert ckpt.latest_local(root).name == ckpt.step_dir_name(25)
    tr = Trainer(tiny_config(steps=50), LocalSession(tmp_path))
    tr.fit()
    assert tr.step == 50


def test_interrupted_checkpoint_write_is_never_published(tiny_config, tmp_path):
    tr = Trainer(tiny_config(), LocalSession(tmp_path))

    def half_written(folder):
        tr.write_checkpoint(folder)
        (folder / "state.pt.sha256").unlink()  # as if killed before the digest
        raise Crash("killed mid-write")

    with pytest.raises(Crash):
        ckpt.save_local(tmp_path / "checkpoints", 1, half_written, keep=3)
    assert ckpt.latest_local(tmp_path / "checkpoints") is None
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_load_for_eval_uses_ema(tiny_config, tmp_path):
    tr = Trainer(tiny_config(steps=25), LocalSession(tmp_path))
    tr.fit()
    model, cfg, state = load_for_eval(ckpt.latest_local(tmp_path / "checkpoints"))
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(tr.ema.module.named_parameters())[name])


def test_divergence_stops_with_the_last_finite_checkpoint(tiny_config, tmp_path):
    """A loss that becomes NaN (weights poisoned after the step-25 checkpoint): the run stops at the
    next log with one sentence, writes no checkpoint of the NaN weights, and the best stays finite."""
    import json
    import math

    from trm.train.loop import Diverged

    tr = None

    def poison(metrics, step):
        if step == 25:
            with torch.no_grad():
                tr.model.lm_head.weight[0, 0] = float("nan")

    tr = Trainer(tiny_config(steps=100, log_every=5), LocalSession(tmp_path, on_report=poison))
    with pytest.raises(Diverged) as e:
        tr.fit()
    assert str(e.value).startswith("diverged at step 30: loss is nan") and str(e.value).endswith(
        f"last good checkpoint {ckpt.step_dir_name(25)} kept"), str(e.value)
    assert "\n" not in str(e.value) and tr.stop_reason == "diverged"
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == [ckpt.step_dir_name(25)]
    assert ckpt.best_local(root).name == ckpt.step_dir_name(25) and tr.best["step"] == 25
    last = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 30 and last["stop_reason"] == "diverged" and math.isnan(last["train/loss"])


def test_non_finite_weights_are_never_checkpointed(tiny_config, tmp_path):
    """Weights that went non-finite while the window's loss still looks finite: refused at the checkpoint."""
    from trm.train.loop import Diverged

    tr = Trainer(tiny_config(steps=50, log_every=25), LocalSession(tmp_path))
    step = tr.train_step

    def last_step_poisons():
        stats = step()
        if tr.step == 25:
            with torch.no_grad():
                tr.ema.module.lm_head.weight[0, 0] = float("inf")
        return stats

    tr.train_step = last_step_poisons
    with pytest.raises(Diverged, match="diverged at step 25: weights are non-finite; no checkpoint was written"):
        tr.fit()
    assert not list((tmp_path / "checkpoints").glob("step_*")) if (tmp_path / "checkpoints").exists() else True


def test_resume_logs_no_step_twice(tiny_config, tmp_path):
    """A crash after step 40 (checkpoint at 25): the resumed run cuts metrics.jsonl back to 25."""
    import json

    cfg = tiny_config(steps=50, log_every=5, eval_every=5, checkpoint_every=25)
    with pytest.raises(Crash):
        Trainer(cfg, LocalSession(tmp_path, on_report=crash_at(40))).fit()
    Trainer(cfg, LocalSession(tmp_path)).fit()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 55, 5))
