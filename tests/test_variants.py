"""The reference's other models as `model.variant`: forward parity, import, training, bad configs.

The reference's state_dicts are built from its published key names and shapes
(SamsungSAILMontreal/TinyRecursiveModels, models/recursive_reasoning/trm_singlez.py, trm_hier6.py,
hrm.py, transformers_baseline.py), and `reference_step` below re-implements each file's inner
forward independently of `trm.model` (the layers are test_official's re-implementation of
models/layers.py): same weights must give the same logits, halting logits and carry over several
supervision steps.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from tests.test_official import (
    SEQ,
    VOCAB,
    _attention,
    _linear,
    _rms,
    _swiglu,
    swiglu_inner,
)
from trm.cli import main
from trm.config import ConfigError, load_config
from trm.model import TRM, count_parameters
from trm.official import (
    ReferenceImportError,
    config_from_reference,
    convert_state_dict,
    load_weights,
)
from trm.train.loop import Trainer
from trm.train.session import LocalSession
from trm.variants import MultiZ, SingleZ, Transformer, build_model

NAMES = {"singlez": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1",
         "multiz": "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1",
         "hrm": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
         "transformer": "recursive_reasoning.transformers_baseline@Model_ACTV2"}


def arch(variant: str, **kw) -> dict:
    """A small arch section in the layout of each reference config (config/arch/<name>.yaml)."""
    a = {"name": NAMES[variant], "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
         "halt_exploration_prob": 0.1, "halt_max_steps": 4, "hidden_size": 32, "num_heads": 4, "expansion": 4,
         "puzzle_emb_ndim": 40, "pos_encodings": "rope", "forward_dtype": "bfloat16"}
    if variant in ("singlez", "multiz"):
        a |= {"H_cycles": 2, "L_cycles": 3, "H_layers": 0, "L_layers": 2, "mlp_t": False, "puzzle_emb_len": 2,
              "no_ACT_continue": True}
    elif variant == "hrm":
        a |= {"H_cycles": 2, "L_cycles": 3, "H_layers": 2, "L_layers": 2, "mlp_t": False}
    else:  # the baseline: 12 heads at 512 in the reference, i.e. heads * head_dim < hidden; here 5 x 6 at 32
        a |= {"H_cycles": 1, "H_layers": 3, "num_heads": 5}
    return a | kw


def prefix_len(a: dict, variant: str) -> int:
    if not a["puzzle_emb_ndim"]:
        return 0
    ceil = -(-a["puzzle_emb_ndim"] // a["hidden_size"])
    return (a["puzzle_emb_len"] or ceil) if variant in ("singlez", "multiz") else ceil


def reference_state_dict(a: dict, variant: str, num_ids: int = 3, prefix: str = "_orig_mod.model.",
                         seed: int = 0) -> dict:
    """Random weights under the reference's names and shapes (start values in bfloat16, as it keeps them)."""
    g = torch.Generator().manual_seed(seed)
    D, L, heads = a["hidden_size"], prefix_len(a, variant), a["num_heads"]
    hd = D // heads
    shapes = {"inner.embed_tokens.embedding_weight": (VOCAB, D), "inner.lm_head.weight": (VOCAB, D),
              "inner.q_head.weight": (2, D), "inner.q_head.bias": (2,)}
    if a["puzzle_emb_ndim"]:
        shapes["inner.puzzle_emb.weights"] = (num_ids, a["puzzle_emb_ndim"])
    if variant == "hrm":
        levels = {"H": a["H_layers"], "L": a["L_layers"]}
    else:
        levels = {"H": a["H_layers"]} if variant == "transformer" else {"L": a["L_layers"]}
    for level, n_layers in levels.items():
        for i in range(n_layers):
            p = f"inner.{level}_level.layers.{i}."
            if a.get("mlp_t") and variant != "transformer":
                inner = swiglu_inner(SEQ + L, a["expansion"])
                shapes[p + "mlp_t.gate_up_proj.weight"] = (2 * inner, SEQ + L)
                shapes[p + "mlp_t.down_proj.weight"] = (SEQ + L, inner)
            else:
                shapes[p + "self_attn.qkv_proj.weight"] = (3 * heads * hd, D)
                shapes[p + "self_attn.o_proj.weight"] = (D, heads * hd)
            inner = swiglu_inner(D, a["expansion"])
            shapes[p + "mlp.gate_up_proj.weight"] = (2 * inner, D)
            shapes[p + "mlp.down_proj.weight"] = (D, inner)
    sd = {}
    for k, shape in shapes.items():
        sd[prefix + k] = torch.randn(shape, generator=g) / math.sqrt(shape[-1] if len(shape) == 2 else 1)
    sd[prefix + "inner.q_head.bias"] = torch.tensor([-1.0, 0.5])
    inits = {"singlez": ["L_init"], "multiz": ["H_init"] + [f"L{i}_init" for i in range(1, 7)],
             "hrm": ["H_init", "L_init"], "transformer": ["H_init"]}[variant]
    for k in inits:
        sd[prefix + "inner." + k] = torch.randn(D, generator=g).to(torch.bfloat16)
    return sd


# ---------------------------------------------------------------- the reference forwards, re-implemented
def _level(w, a, level, h, injection, cos, sin):
    """A ReasoningModule: (h + injection, or h alone where the file passes none), then its post-norm blocks."""
    h = h if injection is None else h + injection
    eps = a.get("rms_norm_eps", 1e-5)
    n_layers = a["H_layers"] if level == "H" else a["L_layers"]
    for i in range(n_layers):
        name = f"inner.{level}_level.layers.{i}"
        if a.get("mlp_t") and "transformers_baseline" not in a["name"]:
            t = h.transpose(1, 2)
            h = _rms(t + _swiglu(w, name + ".mlp_t", t), eps).transpose(1, 2)
        else:
            h = _rms(h + _attention(w, name + ".self_attn", h, a["num_heads"], cos, sin), eps)
        h = _rms(h + _swiglu(w, name + ".mlp", h), eps)
    return h


def reference_step(w: dict, a: dict, variant: str, carry: dict, inputs, puzzle_ids):
    """One supervision step of the file's inner model: (new carry, logits, q_halt, q_continue)."""
    D, L = a["hidden_size"], prefix_len(a, variant)
    dtype = next(iter(carry.values())).dtype
    emb = w["inner.embed_tokens.embedding_weight"].to(dtype)[inputs]
    if a["puzzle_emb_ndim"]:
        p = w["inner.puzzle_emb.weights"][puzzle_ids].to(dtype)
        p = torch.cat((p, p.new_zeros(p.shape[0], L * D - p.shape[1])), dim=1).reshape(-1, L, D)
        emb = torch.cat((p, emb), dim=1)
    x = math.sqrt(D) * emb
    hd = D // a["num_heads"]
    inv = 1.0 / (a.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.outer(torch.arange(SEQ + L, dtype=torch.float32), inv)
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()

    def level(name, h, injection=None):
        return _level(w, a, name, h, injection, cos, sin)

    H, n = a.get("H_cycles", 1), a.get("L_cycles", 1)
    if variant == "singlez":  # trm_singlez.py
        z_L = carry["z_L"]
        with torch.no_grad():
            for _ in range(H - 1):
                for _ in range(n):
                    z_L = level("L", z_L + x)
                z_L = level("L", z_L)
        for _ in range(n):
            z_L = level("L", z_L + x)
        z_L = level("L", z_L)
        new, out = {"z_L": z_L}, z_L
    elif variant == "multiz":  # trm_hier6.py
        z_H, z_L = carry["z_H"], list(carry["z_L"])

        def cycle(z_H):
            for i in range(n):
                z_L_ = z_L[0] + z_L[1] + z_L[2] + z_L[3] + z_L[4] + z_L[5]
                z_L[i] = level("L", z_L_, z_H + x)
            z_L_ = z_L[0] + z_L[1] + z_L[2] + z_L[3] + z_L[4] + z_L[5]
            return level("L", z_H, z_L_)

        with torch.no_grad():
            for _ in range(H - 1):
                z_H = cycle(z_H)
        z_H = cycle(z_H)
        new, out = {"z_H": z_H, "z_L": z_L}, z_H
    elif variant == "hrm":  # hrm.py
        z_H, z_L = carry["z_H"], carry["z_L"]
        with torch.no_grad():
            for h in range(H):
                for i in range(n):
                    if not (h == H - 1 and i == n - 1):
                        z_L = level("L", z_L, z_H + x)
                if h != H - 1:
                    z_H = level("H", z_H, z_L)
        z_L = level("L", z_L, z_H + x)
        z_H = level("H", z_H, z_L)
        new, out = {"z_H": z_H, "z_L": z_L}, z_H
    else:  # transformers_baseline.py
        z_H = level("H", carry["z_H"], x)
        new, out = {"z_H": z_H}, z_H
    q = _linear(w, "inner.q_head.weight", out[:, 0], "inner.q_head.bias").float()
    return new, _linear(w, "inner.lm_head.weight", out)[:, L:], q[:, 0], q[:, 1]


def _ref_carry(w, variant, B, length, dtype):
    def start(k):
        return w[f"inner.{k}"].to(dtype).expand(B, length, -1)

    return {"singlez": lambda: {"z_L": start("L_init")},
            "multiz": lambda: {"z_H": start("H_init"), "z_L": [start(f"L{i}_init") for i in range(1, 7)]},
            "hrm": lambda: {"z_H": start("H_init"), "z_L": start("L_init")},
            "transformer": lambda: {"z_H": start("H_init")}}[variant]()


def _ours_vs_reference_carry(carry, ref: dict, variant: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (ours, reference's) of every carried tensor."""
    if variant == "singlez":
        return [(carry.z, ref["z_L"])]
    if variant == "multiz":
        return [(carry.y, ref["z_H"])] + [(carry.z[:, i], ref["z_L"][i]) for i in range(6)]
    if variant == "hrm":
        return [(carry.y, ref["z_H"]), (carry.z, ref["z_L"])]
    return [(carry.y, ref["z_H"])]


def _model(a: dict, variant: str, sd: dict):
    cfg = config_from_reference({"arch": a})
    assert cfg.model.variant == variant
    model = build_model(cfg.model, VOCAB, SEQ, 3)
    load_weights(model, convert_state_dict(sd, variant=variant))
    return model


CASES = [("singlez", {}), ("singlez", {"mlp_t": True, "pos_encodings": "none"}),
         ("singlez", {"no_ACT_continue": False, "puzzle_emb_ndim": 0}),
         ("multiz", {}), ("multiz", {"L_cycles": 6, "H_cycles": 3}), ("multiz", {"mlp_t": True, "puzzle_emb_len": 0}),
         ("hrm", {}), ("hrm", {"mlp_t": True, "H_cycles": 3, "L_cycles": 1}),
         ("transformer", {}), ("transformer", {"num_heads": 4, "puzzle_emb_ndim": 70})]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant, kw", CASES)
def test_same_weights_give_the_reference_logits(variant, kw, dtype):
    # float32: to rounding (the reference's kernels in another order); bfloat16: ours under autocast
    # against the reference's forward_dtype=bfloat16, as tests/test_official.py for the TRM
    a = arch(variant, **kw)
    sd = reference_state_dict(a, variant)
    model = _model(a, variant, sd).eval()
    w = {k.removeprefix("_orig_mod.model."): v.float() for k, v in sd.items()}
    g = torch.Generator().manual_seed(1)
    tokens, ids = torch.randint(0, VOCAB, (3, SEQ), generator=g), torch.tensor([2, 0, 1])
    carry = model.initial_carry(3)
    ref = _ref_carry(w, variant, 3, SEQ + prefix_len(a, variant), dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for step in range(4):  # supervision steps, the carry fed back
            if step == 2:  # a reset slot starts again from the start values, the others keep theirs
                carry = model.reset_carry(carry, torch.tensor([False, True, False]))
                fresh = _ref_carry(w, variant, 3, SEQ + prefix_len(a, variant), dtype)
                ref = {k: [torch.where(torch.tensor([False, True, False]).view(-1, 1, 1), f, r)
                           for f, r in zip(fresh[k], ref[k])] if isinstance(ref[k], list)
                       else torch.where(torch.tensor([False, True, False]).view(-1, 1, 1), fresh[k], ref[k])
                       for k in ref}
            carry, out = model(carry, tokens, ids)
            ref, logits, q_halt, q_cont = reference_step(w, a, variant, ref, tokens, ids)
            assert out.logits.dtype == dtype and out.q_halt.dtype == torch.float32
            torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.q_halt, q_halt, rtol=1e-5, atol=1e-5)
            for ours, theirs in _ours_vs_reference_carry(carry, ref, variant):
                torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
            if out.q_continue is not None:
                torch.testing.assert_close(out.q_continue, q_cont, rtol=1e-5, atol=1e-5)
    # HRM and the baseline always learn Q with the continue head; the TRM family where no_ACT_continue=False
    assert (out.q_continue is not None) == (variant in ("hrm", "transformer") or not a.get("no_ACT_continue", True))


def test_hrm_is_the_trm_module_with_two_nets_and_the_one_step_gradient():
    model = _model(arch("hrm"), "hrm", reference_state_dict(arch("hrm"), "hrm"))
    assert type(model) is TRM and model.net is not model.net_y
    calls = []
    for net in (model.net, model.net_y):
        net.register_forward_hook(lambda mod, inp, out: calls.append(out.requires_grad))
    model.train()
    model(model.initial_carry(2), torch.randint(0, VOCAB, (2, SEQ)), torch.zeros(2, dtype=torch.long))
    assert calls == [False] * 6 + [True, True]  # H=2 x (L=3 z-updates + 1 y-update); only the last two in the graph


def test_each_variant_is_its_own_module():
    small = {"hidden": 32, "heads": 4, "puzzle_emb_ndim": 0}
    for variant, cls in (("singlez", SingleZ), ("multiz", MultiZ), ("transformer", Transformer)):
        m = build_model(load_config(None, {"variant": variant, **small}).model, VOCAB, SEQ)
        assert type(m) is cls
    with pytest.raises(ValueError, match="build_model"):  # TRM(...) never builds another variant silently
        TRM(load_config(None, {"variant": "singlez", **small}).model, VOCAB, SEQ)


# ---------------------------------------------------------------- key mapping
@pytest.mark.parametrize("prefix", ["_orig_mod.model.", ""])
@pytest.mark.parametrize("variant, kw", CASES)
def test_every_reference_tensor_lands_in_its_place(variant, kw, prefix):
    a = arch(variant, **kw)
    sd = reference_state_dict(a, variant, prefix=prefix)
    model = build_model(config_from_reference({"arch": a}).model, VOCAB, SEQ, 3)
    model.load_state_dict(convert_state_dict(sd, variant=variant), strict=True)  # all mapped, nothing left over
    got = model.state_dict()
    nets = {"hrm": {"L": "net", "H": "net_y"}, "transformer": {"H": "net"}}.get(variant, {"L": "net"})
    for k, v in sd.items():
        name = k.removeprefix(prefix).removeprefix("inner.")
        level = name.split("_level.")[0] if "_level." in name else None
        if level:
            ours = nets[level] + ".blocks." + name.split(".layers.")[1]
            ours = ours.replace("self_attn.qkv_proj", "mix.qkv").replace("self_attn.o_proj", "mix.out") \
                .replace("mlp_t.gate_up_proj", "mix.gate_up").replace("mlp_t.down_proj", "mix.down") \
                .replace("mlp.gate_up_proj", "mlp.gate_up").replace("mlp.down_proj", "mlp.down")
            assert torch.equal(got[ours], v), k
        elif name.startswith("L") and name[1].isdigit():  # trm_hier6's L1_init..L6_init: rows of z_init
            assert torch.equal(got["z_init"][int(name[1]) - 1], v.float()), k
        elif name.endswith("_init"):
            ours = {"H_init": "y_init", "L_init": "y_init" if variant == "transformer" else "z_init"}[name]
            assert torch.equal(got[ours], v.float()), k
    assert ("y_init" in got) == (variant != "singlez") and ("z_init" in got) == (variant != "transformer")


@pytest.mark.parametrize("variant", ["singlez", "multiz", "hrm", "transformer"])
def test_a_checkpoint_whose_shapes_disagree_with_its_config_is_refused(variant):
    a = arch(variant)
    sd = reference_state_dict(a, variant)
    model = build_model(config_from_reference({"arch": a}).model, VOCAB, SEQ, 3)
    level = "L" if variant != "transformer" else "H"
    key = f"_orig_mod.model.inner.{level}_level.layers.1.mlp.down_proj.weight"
    with pytest.raises(ReferenceImportError, match=rf"'inner.{level}_level.layers.1.mlp.down_proj.weight' has shape"):
        load_weights(model, convert_state_dict({**sd, key: torch.zeros(3, 3)}, variant=variant))
    missing = {k: v for k, v in sd.items() if not k.endswith("_init")}
    with pytest.raises(ReferenceImportError, match="missing key 'inner.(H|L1?)_init"):
        load_weights(model, convert_state_dict(missing, variant=variant))
    if variant != "hrm":  # a level the variant has not (the baseline has only H, the TRM family only L)
        extra, why = ("L_level", "an L level") if variant == "transformer" else ("H_level", "a separate H level")
        with pytest.raises(ReferenceImportError, match=f"'model.inner.{extra}.layers.0.mlp.down_proj.weight': {why}"):
            convert_state_dict({**sd, f"model.inner.{extra}.layers.0.mlp.down_proj.weight": torch.zeros(1)},
                               variant=variant)


def test_the_reference_configs_map_to_each_variant():
    cfg = config_from_reference({"arch": arch("hrm", H_layers=4, L_layers=4, H_cycles=2, L_cycles=2,
                                              hidden_size=512, num_heads=8, puzzle_emb_ndim="${.hidden_size}")})
    m = cfg.model
    assert (m.variant, m.layers, m.T, m.n, m.gradient, m.halting, m.separate_nets, m.puzzle_emb_len) == \
           ("hrm", 4, 2, 2, "one_step", "q_learning", True, 1)
    assert 26.5e6 < count_parameters(build_model(m, 11, 81, 1)) - 512 < 27.5e6  # the paper's 27M (Sudoku)
    m = config_from_reference({"arch": arch("transformer", H_layers=8, hidden_size=512, num_heads=12,
                                            puzzle_emb_ndim=512)}).model
    assert (m.variant, m.layers, m.T, m.n, m.heads, m.halting, m.puzzle_emb_len) == \
           ("transformer", 8, 1, 1, 12, "q_learning", 1)
    m = config_from_reference({"arch": arch("multiz", H_cycles=3, L_cycles=6)}).model
    assert (m.variant, m.T, m.n, m.halting) == ("multiz", 3, 6, "bce")
    assert config_from_reference({"arch": arch("singlez", no_ACT_continue=False)}).model.halting == "q_learning"


# ---------------------------------------------------------------- config refusals
@pytest.mark.parametrize("overrides, message", [
    ({"variant": "rnn"}, "model.variant='rnn': expected one of ['trm', 'singlez', 'multiz', 'hrm', 'transformer']"),
    ({"variant": "transformer", "T": 3}, "model.T=3: variant=transformer expects T=1"),
    ({"variant": "transformer", "n": 2}, "model.n=2: variant=transformer expects n=1"),
    ({"variant": "multiz", "n": 7}, "model.n=7: variant=multiz expects n <= 6"),
    ({"variant": "hrm", "gradient": "full"}, "model.gradient='full': variant=hrm expects gradient='one_step'"),
    ({"variant": "singlez", "separate_nets": True}, "model.separate_nets=True: variant=singlez expects"),
    ({"variant": "transformer", "heads": 5, "hidden": 35}, "model.heads=5: expected hidden // heads even"),
])
def test_a_variant_refuses_options_it_cannot_take(overrides, message, capsys, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert str(e.value).startswith(message), str(e.value)
    argv = ["train", "--out", str(tmp_path / "run")] + [f"--set={k}={v}" for k, v in overrides.items()]
    assert main(argv) == 2  # the entry point: one error line, exit 2, nothing written
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_variant_brings_its_own_values_but_keeps_those_set_beside_it():
    m = load_config(None, {"variant": "hrm"}).model
    assert (m.layers, m.n, m.T, m.gradient, m.halting, m.separate_nets, m.puzzle_emb_len) == \
           (4, 2, 2, "one_step", "q_learning", True, 1)
    m = load_config(None, {"variant": "hrm", "n": 3, "hidden": 256}).model
    assert (m.layers, m.n, m.T, m.puzzle_emb_len) == (4, 3, 2, 2)
    m = load_config(None, {"variant": "singlez", "n": 4}).model
    assert (m.layers, m.n, m.T, m.gradient) == (2, 4, 3, "full")


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("variant", ["trm", "singlez", "multiz", "hrm", "transformer"])
def test_each_variant_trains_and_evaluates(variant, tiny_config, tmp_path):
    extra = {"T": 1} if variant == "transformer" else {}
    cfg = tiny_config(variant=variant, N_sup=2, **extra)
    tr = Trainer(cfg, LocalSession(tmp_path / "run"))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    stats = [tr.train_step() for _ in range(4)]  # N_sup=2: slots halt and refill from the start values
    assert all(torch.isfinite(s["loss"]) for s in stats)
    assert ("continue_loss" in stats[-1]) == (variant in ("hrm", "transformer"))  # Q-learning's extra forward
    after = tr.model.state_dict()
    for k, v in before.items():
        if k.endswith(".weight") and "puzzle_emb" not in k and "q_head" not in k:
            assert not torch.equal(v, after[k]), k  # every network weight learned something
    scores = tr.evaluate()
    assert 0 <= scores["val/cell_accuracy"] <= 1


def test_trm_import_of_an_hrm_checkpoint_runs_trm_eval(tmp_path, sudoku_data, capsys):
    a = arch("hrm", puzzle_emb_ndim=32, hidden_size=32)
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "all_config.yaml").write_text(yaml.dump({"arch": a, "data_paths": [sudoku_data], "global_batch_size": 8}))
    torch.save(reference_state_dict(a, "hrm", num_ids=1), ref / "step_7")
    out = tmp_path / "run"
    assert main(["import", "--checkpoint", str(ref / "step_7"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 7
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["variant"] == "hrm"
    assert main(["eval", "--checkpoint", str(out), "--limit", "4", "--batch-size", "4"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["val/cell_accuracy"] <= 1

    sd = reference_state_dict(a, "hrm", num_ids=1)  # an H level of other width than its config: one line, exit 2
    sd["_orig_mod.model.inner.H_level.layers.0.self_attn.o_proj.weight"] = torch.zeros(32, 16)
    torch.save(sd, ref / "step_7")
    assert main(["import", "--checkpoint", str(ref / "step_7"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "'inner.H_level.layers.0.self_attn.o_proj.weight' has shape (32, 16)" in lines[0], err
    assert not (tmp_path / "bad").exists()
