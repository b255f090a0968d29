"""Reference checkpoints: key mapping, config mapping, `trm import`, and forward parity.

The reference's state_dicts are built here from its published key names and shapes
(SamsungSAILMontreal/TinyRecursiveModels, models/recursive_reasoning/trm.py and
models/layers.py), and `reference_step` below is an independent re-implementation of
its forward pass written for this test: same weights must give the same logits and
halting logits over several supervision steps.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from trm.cli import main
from trm.model import TRM
from trm.official import (ReferenceImportError, config_from_reference, convert_state_dict, load_weights,
                          read_checkpoint)
from trm.train.checkpoint import CheckpointError

VOCAB, SEQ = 11, 81


def arch(**kw) -> dict:
    """A small reference arch section (the layout of config/arch/trm.yaml)."""
    return {"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
            "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
            "halt_exploration_prob": 0.1, "halt_max_steps": 4, "H_cycles": 2, "L_cycles": 3,
            "H_layers": 0, "L_layers": 2, "hidden_size": 32, "num_heads": 4, "expansion": 4,
            "puzzle_emb_ndim": 40, "pos_encodings": "rope", "forward_dtype": "bfloat16",
            "mlp_t": False, "puzzle_emb_len": 2, "no_ACT_continue": True, **kw}


def all_config(data_path: str = "data/nowhere", **arch_kw) -> dict:
    return {"arch": arch(**arch_kw), "data_paths": [data_path], "global_batch_size": 768, "epochs": 100000,
            "lr": 1e-4, "lr_min_ratio": 1.0, "lr_warmup_steps": 2000, "beta1": 0.9, "beta2": 0.95,
            "weight_decay": 1.0, "puzzle_emb_weight_decay": 1.0, "puzzle_emb_lr": 1e-2, "seed": 0,
            "ema": True, "ema_rate": 0.999, "checkpoint_path": "checkpoints/x/y"}


def swiglu_inner(d: int, expansion: float) -> int:
    return -(round(expansion * d * 2 / 3) // -256) * 256  # the reference's _find_multiple(round(...), 256)


def reference_state_dict(a: dict, num_ids: int = 3, prefix: str = "_orig_mod.model.", seed: int = 0) -> dict:
    """Random weights under the reference's names and shapes (H_init/L_init in bfloat16, as it keeps them)."""
    g = torch.Generator().manual_seed(seed)
    D, L = a["hidden_size"], a["puzzle_emb_len"] or -(-a["puzzle_emb_ndim"] // a["hidden_size"])
    L = L if a["puzzle_emb_ndim"] else 0
    shapes = {"inner.embed_tokens.embedding_weight": (VOCAB, D), "inner.lm_head.weight": (VOCAB, D),
              "inner.q_head.weight": (2, D), "inner.q_head.bias": (2,), "inner.H_init": (D,), "inner.L_init": (D,)}
    if a["puzzle_emb_ndim"]:
        shapes["inner.puzzle_emb.weights"] = (num_ids, a["puzzle_emb_ndim"])
    for i in range(a["L_layers"]):
        p = f"inner.L_level.layers.{i}."
        if a["mlp_t"]:
            inner = swiglu_inner(SEQ + L, a["expansion"])
            shapes[p + "mlp_t.gate_up_proj.weight"] = (2 * inner, SEQ + L)
            shapes[p + "mlp_t.down_proj.weight"] = (SEQ + L, inner)
        else:
            shapes[p + "self_attn.qkv_proj.weight"] = (3 * D, D)
            shapes[p + "self_attn.o_proj.weight"] = (D, D)
        inner = swiglu_inner(D, a["expansion"])
        shapes[p + "mlp.gate_up_proj.weight"] = (2 * inner, D)
        shapes[p + "mlp.down_proj.weight"] = (D, inner)
    sd = {}
    for k, shape in shapes.items():
        fan_in = shape[-1] if len(shape) == 2 else 1
        sd[prefix + k] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    sd[prefix + "inner.q_head.bias"] = torch.tensor([-1.0, 0.5])
    for k in ("inner.H_init", "inner.L_init"):
        sd[prefix + k] = torch.randn(D, generator=g).to(torch.bfloat16)
    return sd


# ---------------------------------------------------------------- the reference forward, re-implemented
def _rms(x, eps):
    x32 = x.to(torch.float32)
    return (x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)


def _linear(w, name, x, bias=None):  # the reference's CastedLinear: weights cast to the input's dtype
    return F.linear(x, w[name].to(x.dtype), None if bias is None else w[bias].to(x.dtype))


def _swiglu(w, name, x):
    gate, up = _linear(w, name + ".gate_up_proj.weight", x).chunk(2, dim=-1)
    return _linear(w, name + ".down_proj.weight", F.silu(gate) * up)


def _attention(w, name, x, heads, cos, sin):
    B, S, D = x.shape
    hd = D // heads
    qkv = _linear(w, name + ".qkv_proj.weight", x).view(B, S, 3 * heads, hd)  # [B, S, heads, hd] as the reference
    q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]

    def rope(t):  # in cos/sin's float32, back to t's dtype
        x = t.to(cos.dtype)
        half = torch.cat((-x[..., hd // 2:], x[..., :hd // 2]), dim=-1)
        return (x * cos.unsqueeze(-2) + half * sin.unsqueeze(-2)).to(t.dtype)

    q, k = rope(q), rope(k)
    o = F.scaled_dot_product_attention(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3))
    return _linear(w, name + ".o_proj.weight", o.permute(0, 2, 1, 3).reshape(B, S, heads * hd))  # heads*hd <= D


def reference_step(w: dict, a: dict, z_H, z_L, inputs, puzzle_ids):
    """One supervision step of the reference's inner model: (z_H, z_L, logits, q_halt, q_continue).
    Runs in the carry's dtype (the reference's forward_dtype)."""
    D, eps, dtype = a["hidden_size"], a.get("rms_norm_eps", 1e-5), z_H.dtype
    L = (a["puzzle_emb_len"] or -(-a["puzzle_emb_ndim"] // D)) if a["puzzle_emb_ndim"] else 0
    emb = w["inner.embed_tokens.embedding_weight"].to(dtype)[inputs]
    if a["puzzle_emb_ndim"]:
        p = w["inner.puzzle_emb.weights"][puzzle_ids].to(dtype)
        p = torch.cat((p, p.new_zeros(p.shape[0], L * D - p.shape[1])), dim=1).reshape(-1, L, D)
        emb = torch.cat((p, emb), dim=1)
    emb = math.sqrt(D) * emb
    hd = D // a["num_heads"]
    inv = 1.0 / (a.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.outer(torch.arange(SEQ + L, dtype=torch.float32), inv)
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()

    def level(h, injection):
        h = h + injection
        for i in range(a["L_layers"]):
            name = f"inner.L_level.layers.{i}"
            if a["mlp_t"]:
                t = h.transpose(1, 2)
                h = _rms(t + _swiglu(w, name + ".mlp_t", t), eps).transpose(1, 2)
            else:
                h = _rms(h + _attention(w, name + ".self_attn", h, a["num_heads"], cos, sin), eps)
            h = _rms(h + _swiglu(w, name + ".mlp", h), eps)
        return h

    for _ in range(a["H_cycles"]):
        for _ in range(a["L_cycles"]):
            z_L = level(z_L, z_H + emb)
        z_H = level(z_H, z_L)
    q = _linear(w, "inner.q_head.weight", z_H[:, 0], "inner.q_head.bias").float()
    return z_H, z_L, _linear(w, "inner.lm_head.weight", z_H)[:, L:], q[:, 0], q[:, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", [{"mlp_t": False}, {"mlp_t": True, "pos_encodings": "none"},
                                {"mlp_t": True, "puzzle_emb_len": 0, "puzzle_emb_ndim": 64},
                                {"mlp_t": False, "puzzle_emb_ndim": 0, "puzzle_emb_len": 0, "no_ACT_continue": False}])
def test_same_weights_give_the_reference_logits(kw, dtype):
    # float32: bit-exact here (the tolerance is for other kernels); bfloat16: ours under autocast
    # against the reference's forward_dtype=bfloat16 (embeddings, residual stream and carry in bf16)
    a = arch(**kw)
    sd = reference_state_dict(a)
    cfg = config_from_reference({"arch": a})
    model = TRM(cfg.model, VOCAB, SEQ, 3)
    load_weights(model, convert_state_dict(sd))
    model.eval()
    w = {k.removeprefix("_orig_mod.model."): v.float() for k, v in sd.items()}
    g = torch.Generator().manual_seed(1)
    tokens, ids = torch.randint(0, VOCAB, (3, SEQ), generator=g), torch.tensor([2, 0, 1])
    carry = model.initial_carry(3)
    z_H, z_L = (w[k].to(dtype).expand(3, carry.y.shape[1], -1) for k in ("inner.H_init", "inner.L_init"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for _ in range(4):  # supervision steps, carrying (y, z) = (z_H, z_L)
            carry, out = model(carry, tokens, ids)
            assert carry.y.dtype == dtype and out.logits.dtype == dtype and out.q_halt.dtype == torch.float32
            z_H, z_L, logits, q_halt, q_cont = reference_step(w, a, z_H, z_L, tokens, ids)
            torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.q_halt, q_halt, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(carry.y, z_H, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(carry.z, z_L, rtol=1e-5, atol=1e-5)
            if out.q_continue is not None:
                torch.testing.assert_close(out.q_continue, q_cont, rtol=1e-5, atol=1e-5)
    assert (out.q_continue is None) == a["no_ACT_continue"]


# ---------------------------------------------------------------- key mapping
@pytest.mark.parametrize("prefix", ["_orig_mod.model.", "model.", ""])
@pytest.mark.parametrize("mlp_t", [False, True])
def test_every_reference_tensor_lands_in_its_place(prefix, mlp_t):
    a = arch(mlp_t=mlp_t)
    sd = reference_state_dict(a, prefix=prefix)
    model = TRM(config_from_reference({"arch": a}).model, VOCAB, SEQ, 3)
    ours = convert_state_dict(sd)
    model.load_state_dict(ours, strict=True)  # every parameter and buffer mapped, nothing left over
    got = model.state_dict()
    expected = {"embed.weight": "inner.embed_tokens.embedding_weight", "puzzle_emb.weight": "inner.puzzle_emb.weights",
                "lm_head.weight": "inner.lm_head.weight", "q_head.weight": "inner.q_head.weight",
                "q_head.bias": "inner.q_head.bias", "y_init": "inner.H_init", "z_init": "inner.L_init"}
    mix = {"mix.gate_up": "mlp_t.gate_up_proj", "mix.down": "mlp_t.down_proj"} if mlp_t else \
          {"mix.qkv": "self_attn.qkv_proj", "mix.out": "self_attn.o_proj"}
    for i in range(2):
        for o, r in {**mix, "mlp.gate_up": "mlp.gate_up_proj", "mlp.down": "mlp.down_proj"}.items():
            for net in ("net", "net_y"):  # one network, registered under both names
                expected[f"{net}.blocks.{i}.{o}.weight"] = f"inner.L_level.layers.{i}.{r}.weight"
    assert sorted(expected) == sorted(got)
    for o, r in expected.items():
        assert torch.equal(got[o], sd[prefix + r].float()), o


def test_bad_state_dicts_are_refused_by_key():
    a = arch()
    model = TRM(config_from_reference({"arch": a}).model, VOCAB, SEQ, 3)
    sd = reference_state_dict(a)
    with pytest.raises(ReferenceImportError, match=r"'_orig_mod.model.inner.foo.weight': unknown"):
        convert_state_dict({**sd, "_orig_mod.model.inner.foo.weight": torch.zeros(1)})
    with pytest.raises(ReferenceImportError, match="embed_pos.embedding_weight.*learned"):
        convert_state_dict({**sd, "_orig_mod.model.inner.embed_pos.embedding_weight": torch.zeros(83, 32)})
    with pytest.raises(ReferenceImportError, match="H_level.*separate H level"):
        convert_state_dict({**sd, "model.inner.H_level.layers.0.mlp.down_proj.weight": torch.zeros(1)})
    missing = {k: v for k, v in sd.items() if "layers.1.mlp.down_proj" not in k}
    with pytest.raises(ReferenceImportError, match=r"missing key 'inner.L_level.layers.1.mlp.down_proj.weight'"):
        load_weights(model, convert_state_dict(missing))
    wrong = {**sd, "_orig_mod.model.inner.lm_head.weight": torch.zeros(12, 32)}
    with pytest.raises(ReferenceImportError, match=r"'inner.lm_head.weight' has shape \(12, 32\).*\(11, 32\)"):
        load_weights(model, convert_state_dict(wrong))
    mixer = reference_state_dict(arch(mlp_t=True))  # mlp_t weights for an attention config
    with pytest.raises(ReferenceImportError, match="missing key 'inner.L_level.layers.0.self_attn"):
        load_weights(model, convert_state_dict(mixer))
    assert issubclass(ReferenceImportError, CheckpointError)


# ---------------------------------------------------------------- config mapping
def test_config_maps_the_reference_names():
    cfg = config_from_reference(all_config(mlp_t=True, pos_encodings="none", H_cycles=3, L_cycles=6,
                                           rms_norm_eps=1e-6, rope_theta=500.0, halt_exploration_prob=0.2,
                                           no_ACT_continue=False, forward_dtype="float32"))
    m, t = cfg.model, cfg.train
    assert (m.arch, m.T, m.n, m.layers, m.hidden, m.heads, m.expansion) == ("mlp", 3, 6, 2, 32, 4, 4.0)
    assert (m.puzzle_emb_ndim, m.puzzle_emb_len, m.N_sup, m.halt_exploration) == (40, 2, 4, 0.2)
    assert (m.norm_eps, m.rope_theta, m.halting, t.bf16) == (1e-6, 500.0, "q_learning", False)
    assert (t.lr, t.weight_decay, t.puzzle_emb_lr, t.batch_size, t.ema, t.lr_schedule) == \
           (1e-4, 1.0, 1e-2, 768, 0.999, "constant")
    assert cfg.data.path == "data/nowhere" and cfg.data.generate == "none"
    assert config_from_reference(all_config(puzzle_emb_len=0, puzzle_emb_ndim=40)).model.puzzle_emb_len == 2


@pytest.mark.parametrize("kw, key", [({"pos_encodings": "learned"}, "arch.pos_encodings='learned'"),
                                     ({"pos_encodings": "none"}, "arch.pos_encodings='none'"),
                                     ({"H_layers": 4}, "arch.H_layers=4"),
                                     ({"name": "recursive_reasoning.trm_deq_h@TinyRecursiveReasoningModel_ACTV1"},
                                      "arch.name="),  # a fork's model (hrm, trm_singlez, ...: tests/test_variants.py)
                                     ({"name": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
                                       "H_layers": 3}, "arch.H_layers=3: expected arch.L_layers=2"),
                                     ({"name": "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1",
                                       "L_cycles": 7}, "arch.L_cycles: model.n=7"),
                                     ({"H_cycles": None}, "arch.H_cycles"),
                                     ({"num_heads": 0}, "arch.num_heads: model.heads=0"),
                                     ({"forward_dtype": "float16"}, "arch.forward_dtype")])
def test_unrepresentable_configs_name_the_key(kw, key):
    a = all_config(**kw)
    if kw.get("H_cycles", 1) is None:
        del a["arch"]["H_cycles"]
    with pytest.raises(ReferenceImportError) as e:
        config_from_reference(a)
    assert str(e.value).startswith(key), str(e.value)


# ---------------------------------------------------------------- files and `trm import`
def _write_reference_run(folder: Path, data_path: str, **arch_kw) -> Path:
    """What the reference leaves in checkpoints/PROJECT/RUN: step_N and all_config.yaml."""
    folder.mkdir(parents=True)
    a = all_config(data_path, **arch_kw)
    (folder / "all_config.yaml").write_text(yaml.dump(a))
    torch.save(reference_state_dict(a["arch"], num_ids=1), folder / "step_1234")
    return folder / "step_1234"


def test_truncated_file_is_refused(tmp_path):
    path = _write_reference_run(tmp_path / "ref", "data/nowhere")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ReferenceImportError, match=r"step_1234: cannot be read as a torch checkpoint"):
        read_checkpoint(path)


@pytest.mark.parametrize("mlp_t", [False, True])
def test_import_writes_a_run_that_trm_eval_reads(tmp_path, sudoku_data, capsys, mlp_t):
    # the config's data path holds the dataset, as on the machine that trained it
    ckpt = _write_reference_run(tmp_path / "ref", sudoku_data, mlp_t=mlp_t, puzzle_emb_ndim=32, puzzle_emb_len=1)
    out = tmp_path / "runs" / "imported"
    assert main(["import", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["step"], summary["vocab_size"], summary["seq_len"], summary["num_puzzle_ids"]) == (1234, 11, 81, 1)
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "step_000001234" / "state.pt").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left

    from trm.train.loop import load_for_eval

    model, cfg, state = load_for_eval(out / "checkpoints" / "step_000001234")
    assert cfg.model.arch == ("mlp" if mlp_t else "attention") and state["step"] == 1234
    w = reference_state_dict(all_config()["arch"] | {"mlp_t": mlp_t, "puzzle_emb_ndim": 32, "puzzle_emb_len": 1},
                             num_ids=1)
    assert torch.equal(model.lm_head.weight, w["_orig_mod.model.inner.lm_head.weight"])

    assert main(["eval", "--checkpoint", str(out), "--limit", "4", "--batch-size", "4"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["step"] == 1234 and 0 <= scores["val/cell_accuracy"] <= 1


def test_import_needs_the_sequence_length_of_an_attention_model(tmp_path, sudoku_data, capsys):
    ckpt = _write_reference_run(tmp_path / "ref", "data/not-here", puzzle_emb_ndim=32, puzzle_emb_len=1)
    out = tmp_path / "run"
    assert main(["import", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "cannot tell the sequence length" in capsys.readouterr().err and not out.exists()
    assert main(["import", "--checkpoint", str(ckpt), "--out", str(out), "--data", sudoku_data]) == 0
    assert json.loads(capsys.readouterr().out)["data_path"] == sudoku_data


@pytest.mark.parametrize("breakage, message", [
    ("truncate", "cannot be read as a torch checkpoint"),
    ("learned", "arch.pos_encodings='learned'"),
    ("unknown_key", "'model.inner.extra.weight': unknown"),
    ("no_config", "all_config.yaml: no such file"),
    ("vocab", "vocab_size=11 but the checkpoint"),
])
def test_bad_input_exits_2_with_one_error_line_and_no_output(tmp_path, sudoku_data, capsys, breakage, message):
    ckpt = _write_reference_run(tmp_path / "ref", sudoku_data, mlp_t=True, puzzle_emb_ndim=32, puzzle_emb_len=1)
    if breakage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:-100])
    elif breakage == "learned":
        c = yaml.safe_load((ckpt.parent / "all_config.yaml").read_text())
        c["arch"]["pos_encodings"] = "learned"
        (ckpt.parent / "all_config.yaml").write_text(yaml.dump(c))
    elif breakage == "unknown_key":
        torch.save({**torch.load(ckpt), "model.inner.extra.weight": torch.zeros(2)}, ckpt)
    elif breakage == "no_config":
        (ckpt.parent / "all_config.yaml").unlink()
    elif breakage == "vocab":
        sd = torch.load(ckpt)
        sd["_orig_mod.model.inner.embed_tokens.embedding_weight"] = torch.zeros(12, 32)
        torch.save(sd, ckpt)
    out = tmp_path / "runs" / "imported"
    argv = ["import", "--checkpoint", str(ckpt), "--out", str(out)]
    if breakage == "truncate":  # once as a user runs it: a process, its exit status, its stderr
        r = subprocess.run([sys.executable, "-m", "trm.cli", *argv], capture_output=True, text=True, timeout=300)
        code, err = r.returncode, r.stderr
    else:
        code, err = main(argv), capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
