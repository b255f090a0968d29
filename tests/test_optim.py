"""The network optimisers: AdamATan2 against its update rule written out by hand, exact resume
from a state_dict, AdamW still available, and training counted in epochs."""
import copy
import math

import pytest
import torch

from trm.config import ConfigError
from trm.data.dataset import epoch_size
from trm.train.loop import Trainer
from trm.train.optim import AdamATan2, build_optimizer, lr_factor
from trm.train.session import LocalSession


def _reference_steps(params, grads, lrs, betas, wd):
    """The `adam-atan2` package's rule, one step per (grads, lr), in float64:
    p *= 1 - lr*wd; m, v = EMAs of g, g^2; p -= lr / (1 - b1^t) * atan2(m, sqrt(v / (1 - b2^t)))."""
    b1, b2 = betas
    p = [x.double().clone() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    for t, (gs, lr) in enumerate(zip(grads, lrs), start=1):
        for i, g in enumerate(gs):
            g = g.double()
            p[i] = p[i] * (1 - lr * wd)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p[i] = p[i] - lr / (1 - b1 ** t) * torch.atan2(m[i], torch.sqrt(v[i] / (1 - b2 ** t)))
    return p


def _random_problem(steps=12, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 7), (7,), (3, 2, 4), (1,)]
    params = [torch.randn(s, generator=gen).to(device) for s in shapes]
    # gradients of very different scales, some exactly zero: atan2 has no eps to hide behind
    grads = [[torch.randn(s, generator=gen).to(device) * 10.0 ** (i - 2) for i, s in enumerate(shapes)]
             for _ in range(steps)]
    grads[0][3].zero_()
    lrs = [1e-2 * (k + 1) / steps for k in range(steps)]  # a warmup: lr changes every step
    return params, grads, lrs


def _run(opt, params, grads, lrs):
    for gs, lr in zip(grads, lrs):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("wd", [0.0, 1.0, 0.1])
def test_adam_atan2_follows_the_reference_rule(device, wd):
    params, grads, lrs = _random_problem(device=device)
    ours = [p.clone() for p in params]
    _run(AdamATan2(ours, lr=lrs[0], betas=(0.9, 0.95), weight_decay=wd), ours, grads, lrs)
    expected = _reference_steps(params, grads, lrs, (0.9, 0.95), wd)
    for got, want in zip(ours, expected):
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6), (got, want)
    # not a no-op, and not Adam: the first step moves every entry with a gradient by about lr
    one = [p.clone() for p in params]
    _run(AdamATan2(one, lr=1.0, betas=(0.9, 0.95)), one, grads[:1], [1e-3])
    moved = (one[0] - params[0]).abs()
    assert torch.allclose(moved, torch.full_like(moved, 1e-3 * math.atan(0.1) / 0.1), rtol=1e-4)


def test_adam_atan2_resumes_exactly_from_state_dict():
    params, grads, lrs = _random_problem(steps=10, seed=1)
    straight = [p.clone() for p in params]
    _run(AdamATan2(straight, weight_decay=0.5), straight, grads, lrs)

    first = [p.clone() for p in params]
    opt = AdamATan2(first, weight_decay=0.5)
    _run(opt, first, grads[:4], lrs[:4])
    saved = copy.deepcopy(opt.state_dict())
    resumed = [p.clone() for p in first]
    opt2 = AdamATan2(resumed, weight_decay=0.5)
    opt2.load_state_dict(saved)
    _run(opt2, resumed, grads[4:], lrs[4:])
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    assert float(opt2.state[resumed[0]]["step"]) == 10


def test_adam_atan2_skips_parameters_without_gradients():
    a, b = torch.ones(3), torch.ones(3)
    opt = AdamATan2([a, b], lr=0.1, weight_decay=1.0)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b, torch.ones(3)) and b not in opt.state  # no decay either, as the reference
    assert not torch.equal(a, torch.ones(3))


def test_build_optimizer_choices(tiny_config):
    model = torch.nn.Linear(4, 1)
    opt, _ = build_optimizer(model, tiny_config().train)
    assert isinstance(opt, AdamATan2)  # the reference's optimiser is the default
    opt, sched = build_optimizer(model, tiny_config(optimizer="adamw", lr_warmup_steps=0).train)
    assert isinstance(opt, torch.optim.AdamW)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    first = None
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert loss.item() < first
    with pytest.raises(ConfigError, match=r"train.optimizer='sgd': expected one of \['adam_atan2', 'adamw'\]"):
        tiny_config(optimizer="sgd")


class _Params:
    """Records what the trainer adds to a run's params (a write-once store, as MLflow's)."""

    def __init__(self):
        self.params: dict = {}

    def log_config(self, cfg):
        for k, v in cfg.flat().items():
            self.params.setdefault(k, v)

    def log_metrics(self, metrics, step):
        pass

    def set_tags(self, tags):  # the session tags the best checkpoint
        pass

    def last_logged_step(self):
        return None


def test_epochs_set_steps_eval_interval_and_schedule(tiny_config, tmp_path, sudoku_data):
    cfg = tiny_config(epochs=3, eval_every_epochs=1, lr_schedule="cosine", lr_min_ratio=0.1)
    assert "steps" not in cfg.flat() and "eval_every" not in cfg.flat()  # not known before the data is read
    tracker = _Params()
    tracker.log_config(cfg)  # what a launcher logs first
    tr = Trainer(cfg, LocalSession(tmp_path, tracker=tracker))
    samples = epoch_size(sudoku_data)
    steps, every = int(3 * samples / 8), math.ceil(samples / 8)
    t = tr.cfg.train
    assert (t.epoch_samples, t.steps, t.eval_every) == (samples, steps, every)
    assert tracker.params["steps"] == steps and tracker.params["eval_every"] == every
    assert tracker.params["epochs"] == 3 and tracker.params["epoch_samples"] == samples
    # the schedule ends at the derived step count
    assert tr.sched.lr_lambdas[0](steps) == pytest.approx(0.1)
    assert lr_factor(steps // 2 + 2, t) > 0.5
    reports = []
    tr.session.on_report = lambda metrics, step: reports.append(step)
    tr.fit()
    assert tr.step == steps
    assert reports == [every, 2 * every, steps]  # one evaluation per epoch, the last at the end


def test_resolve_epochs_is_the_reference_formula(tiny_config):
    cfg = tiny_config(epochs=50_000, eval_every_epochs=5_000, batch_size=768)
    r = cfg.resolve_epochs(1000.0)  # Sudoku-Extreme-1K: 1000 groups x 1 example
    assert (r.train.steps, r.train.eval_every) == (65_104, 6_511)
    assert cfg.train.steps != 65_104  # a copy
    assert tiny_config(steps=7).resolve_epochs(10.0).train.steps == 7  # epochs=0: steps as given
    with pytest.raises(ConfigError, match="train.epochs=-1"):
        tiny_config(epochs=-1)
