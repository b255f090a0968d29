"""Reading the reference implementation's checkpoints and configs.

The reference (SamsungSAILMontreal/TinyRecursiveModels) saves the state_dict of
`torch.compile(ACTLossHead(TinyRecursiveReasoningModel_ACTV1(...)))` as a file
`<checkpoint_path>/step_N`, so its keys read `_orig_mod.model.inner.<name>`
(`model.inner.<name>` without compile), and writes its hydra config as
`all_config.yaml` in the same folder. This module is the one place that knows
those names; `trm import` (`import_checkpoint`) turns such a file into a run
folder that `trm eval` reads like one of ours.

    reference key (after the prefixes)                        ours
    inner.embed_tokens.embedding_weight                       embed.weight
    inner.puzzle_emb.weights                                  puzzle_emb.weight
    inner.lm_head.weight                                      lm_head.weight
    inner.q_head.weight, inner.q_head.bias                    q_head.weight, q_head.bias
    inner.H_init, inner.L_init                                y_init, z_init
    inner.L_level.layers.<i>.self_attn.qkv_proj.weight        net.blocks.<i>.mix.qkv.weight
    inner.L_level.layers.<i>.self_attn.o_proj.weight          net.blocks.<i>.mix.out.weight
    inner.L_level.layers.<i>.mlp_t.gate_up_proj.weight        net.blocks.<i>.mix.gate_up.weight
    inner.L_level.layers.<i>.mlp_t.down_proj.weight           net.blocks.<i>.mix.down.weight
    inner.L_level.layers.<i>.mlp.gate_up_proj.weight          net.blocks.<i>.mlp.gate_up.weight
    inner.L_level.layers.<i>.mlp.down_proj.weight             net.blocks.<i>.mlp.down.weight
    (the network again, under net_y: the TRM's one network also updates y)

The config maps arch.H_cycles -> T, arch.L_cycles -> n, arch.L_layers -> layers,
arch.mlp_t -> arch=mlp, arch.no_ACT_continue=False -> halting=q_learning, ... (see
`config_from_reference`). What the model here cannot represent (learned position
embeddings, HRM's separate H level, other reference models) is refused by name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, cast

import torch
import yaml

from trm.config import MULTIZ_LATENTS, Config, ConfigError, apply_overrides
from trm.errors import TrmError
from trm.model import RecursiveModel
from trm.train.checkpoint import CheckpointError

TRM_CLASS = "TinyRecursiveReasoningModel_ACTV1"
# arch.name = recursive_reasoning.<module>@<class> -> model.variant
VARIANT_OF = {
    ("trm", TRM_CLASS): "trm",
    ("trm_singlez", TRM_CLASS): "singlez",
    ("trm_hier6", TRM_CLASS): "multiz",
    ("hrm", "HierarchicalReasoningModel_ACTV1"): "hrm",
    ("transformers_baseline", "Model_ACTV2"): "transformer",
}


class ReferenceImportError(CheckpointError, TrmError):
    """A reference checkpoint or config that cannot be imported; the message names the file/key."""


# ---------------------------------------------------------------- state_dict
_TOP = {
    "embed_tokens.embedding_weight": "embed.weight",
    "puzzle_emb.weights": "puzzle_emb.weight",
    "lm_head.weight": "lm_head.weight",
    "q_head.weight": "q_head.weight",
    "q_head.bias": "q_head.bias",
}
_PART = {
    "self_attn.qkv_proj": "mix.qkv",
    "self_attn.o_proj": "mix.out",
    "mlp_t.gate_up_proj": "mix.gate_up",
    "mlp_t.down_proj": "mix.down",
    "mlp.gate_up_proj": "mlp.gate_up",
    "mlp.down_proj": "mlp.down",
}
_LAYER = re.compile(r"([HL])_level\.layers\.(\d+)\.(" + "|".join(re.escape(p) for p in _PART) + r")\.weight")
# each variant's reasoning modules (reference level -> our network) and start values; the TRM's one network
# is registered twice (net, net_y), as in our state_dicts; six-z's L1_init..L6_init are the rows of z_init
_LEVELS = {
    "trm": {"L": "net"},
    "singlez": {"L": "net"},
    "multiz": {"L": "net"},
    "hrm": {"L": "net", "H": "net_y"},
    "transformer": {"H": "net"},
}
_INITS = {
    "trm": {"H_init": "y_init", "L_init": "z_init"},
    "singlez": {"L_init": "z_init"},
    "multiz": {"H_init": "y_init", **{f"L{i + 1}_init": f"z_init.{i}" for i in range(MULTIZ_LATENTS)}},
    "hrm": {"H_init": "y_init", "L_init": "z_init"},
    "transformer": {"H_init": "y_init"},
}
# derived buffers some versions persist; nothing to import
_DERIVED = ("rotary_emb.cos_cached", "rotary_emb.sin_cached", "puzzle_emb.local_weights", "puzzle_emb.local_ids")
_UNSUPPORTED = {
    "embed_pos.": "learned position embeddings (arch.pos_encodings: learned); only rope is supported",
    "H_level.": "a separate H level, which this variant has not (the HRM is recursive_reasoning.hrm)",
    "L_level.": "an L level, which this variant has not",
}
_WRAPPERS = ("_orig_mod.", "module.", "model.")


def _strip(key: str) -> str:
    """`_orig_mod.model.inner.x` (torch.compile + ACTLossHead wrappers) -> `inner.x`."""
    while key.startswith(_WRAPPERS):
        key = key.split(".", 1)[1]
    return key


def _our_name(ref_key: str, variant: str = "trm") -> str | None:
    name = _strip(ref_key)
    if not name.startswith("inner."):
        return None
    name = name[len("inner.") :]
    if name in _TOP:
        return _TOP[name]
    if name in _INITS[variant]:
        return _INITS[variant][name]
    m = _LAYER.fullmatch(name)
    net = _LEVELS[variant].get(m.group(1)) if m else None
    return f"{net}.blocks.{m.group(2)}.{_PART[m.group(3)]}.weight" if m and net else None


def reference_name(our_key: str, variant: str = "trm") -> str:
    """Our state_dict key -> the reference's (without wrapper prefixes), for messages."""
    top = {v: k for k, v in {**_TOP, **_INITS[variant]}.items()}
    if our_key == "z_init" and variant == "multiz":
        return f"inner.L1_init..L{MULTIZ_LATENTS}_init"
    if our_key in top:
        return f"inner.{top[our_key]}"
    m = re.fullmatch(r"(net(?:_y)?)\.blocks\.(\d+)\.(.+)\.weight", our_key)
    part = {v: k for k, v in _PART.items()}.get(m.group(3)) if m else None
    level = {v: k for k, v in _LEVELS[variant].items()}.get(m.group(1), "L") if m else "L"
    return f"inner.{level}_level.layers.{m.group(2)}.{part}.weight" if m and part else our_key


def convert_state_dict(state_dict: dict, where: str = "checkpoint", variant: str = "trm") -> dict[str, torch.Tensor]:
    """The reference's state_dict of `variant` (with or without `_orig_mod.`/`model.` prefixes) -> ours.

    Float tensors become float32 (the reference keeps its start values in bfloat16).
    Raises ReferenceImportError naming `where` and the key for a key that is unknown,
    unsupported or duplicated, or a value that is not a tensor."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        inner = _strip(key)
        if inner.startswith("inner.") and inner[len("inner.") :] in _DERIVED:
            continue
        name = _our_name(key, variant)
        if name is None:
            why = next((w for p, w in _UNSUPPORTED.items() if inner.startswith("inner." + p)), None)
            expected = (
                sorted(_TOP)
                + sorted(_INITS[variant])
                + [f"{lv}_level.layers.<i>.<{'|'.join(_PART)}>.weight" for lv in _LEVELS[variant]]
            )
            raise ReferenceImportError(
                f"{where}: key {key!r}: "
                + (
                    why
                    or "unknown; expected [_orig_mod.][model.]inner.<name> with <name> "
                    f"one of {expected} (variant {variant})"
                )
            )
        if name in out:
            raise ReferenceImportError(f"{where}: key {key!r}: appears twice (with and without a prefix)")
        if not isinstance(value, torch.Tensor):
            raise ReferenceImportError(f"{where}: key {key!r}: expected a tensor, found {type(value).__name__}")
        out[name] = value.detach().to(torch.float32 if value.is_floating_point() else value.dtype).contiguous()
    if variant == "trm":  # the one network is also registered as `net_y` (a second one with separate_nets)
        out.update({"net_y." + k[len("net.") :]: v for k, v in list(out.items()) if k.startswith("net.")})
    rows = [out.pop(f"z_init.{i}") for i in range(MULTIZ_LATENTS) if f"z_init.{i}" in out]
    if rows:  # six-z: L1_init..L6_init, all or none (a missing one is named by load_weights)
        if len(rows) != MULTIZ_LATENTS:
            raise ReferenceImportError(f"{where}: {len(rows)} of inner.L1_init..L{MULTIZ_LATENTS}_init; expected all")
        out["z_init"] = torch.stack(rows)
    return out


def load_weights(model: RecursiveModel, weights: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """`model.load_state_dict(weights, strict=True)` after checking keys and shapes, so that a
    mismatch is one ReferenceImportError naming the reference key and both shapes."""
    expected = model.state_dict()
    variant = model.cfg.variant
    missing = [k for k in expected if k not in weights]
    if missing:
        raise ReferenceImportError(
            f"{where}: missing key {reference_name(missing[0], variant)!r} (of {len(missing)} "
            f"missing); the config describes a model with it (shape "
            f"{tuple(expected[missing[0]].shape)})"
        )
    extra = [k for k in weights if k not in expected]
    if extra:
        raise ReferenceImportError(
            f"{where}: key {reference_name(extra[0], variant)!r} has no place in the model the "
            f"config describes (variant={variant}, arch={model.cfg.arch}, layers="
            f"{model.cfg.layers}, puzzle_emb_ndim={model.cfg.puzzle_emb_ndim})"
        )
    for k, v in weights.items():
        if v.shape != expected[k].shape:
            raise ReferenceImportError(
                f"{where}: {reference_name(k, variant)!r} has shape {tuple(v.shape)}; the "
                f"config expects {tuple(expected[k].shape)}"
            )
    model.load_state_dict(weights, strict=True)


def read_checkpoint(path: str | Path) -> tuple[dict, dict | None, int]:
    """(state_dict, EMA weights or None, step) from a reference checkpoint file.

    The reference writes a bare state_dict; some versions write {"model": ..., "step": ...,
    "ema_helper": {param name: EMA value}}. Loaded with weights_only (tensors, no code)."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceImportError(f"--checkpoint {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, or holding code
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ReferenceImportError(
            f"{path}: cannot be read as a torch checkpoint (truncated or not written by torch.save?): {first}"
        ) from e
    step = None
    ema = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        step, ema, obj = obj.get("step"), obj.get("ema_helper"), obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise ReferenceImportError(
            f"{path}: expected the reference's state_dict (a mapping of names to tensors), found {type(obj).__name__}"
        )
    if step is None:
        m = re.search(r"step_(\d+)", path.name)
        step = int(m.group(1)) if m else 0
    return obj, ema, int(step)


# ---------------------------------------------------------------- config
# (reference key under arch, ours) with the reference's default where it has one
_ARCH = [
    ("hidden_size", "model.hidden", None),
    ("num_heads", "model.heads", None),
    ("expansion", "model.expansion", None),
    ("halt_max_steps", "model.N_sup", None),
    ("halt_exploration_prob", "model.halt_exploration", None),
    ("rms_norm_eps", "model.norm_eps", 1e-5),
    ("rope_theta", "model.rope_theta", 10000.0),
]
_CYCLES = [("H_cycles", "model.T", None), ("L_cycles", "model.n", None), ("L_layers", "model.layers", None)]
# the transformer baseline: H_layers blocks once (its H_cycles is "kept for compatibility", unused)
_ARCH_OF = {
    "trm": _CYCLES + _ARCH,
    "singlez": _CYCLES + _ARCH,
    "multiz": _CYCLES + _ARCH,
    "hrm": _CYCLES + _ARCH,
    "transformer": [("H_layers", "model.layers", None)] + _ARCH,
}
_TRAIN = [
    ("lr", "train.lr"),
    ("lr_warmup_steps", "train.lr_warmup_steps"),
    ("beta1", "train.beta1"),
    ("beta2", "train.beta2"),
    ("weight_decay", "train.weight_decay"),
    ("puzzle_emb_lr", "train.puzzle_emb_lr"),
    ("puzzle_emb_weight_decay", "train.puzzle_emb_weight_decay"),
    ("global_batch_size", "train.batch_size"),
    ("seed", "train.seed"),
]


def _set(cfg: Config, ref_key: str, ours: str, value: Any) -> None:
    try:
        apply_overrides(cfg, {ours: value})
    except ConfigError as e:
        raise ReferenceImportError(f"{ref_key}={value!r}: {e}") from e


def variant_of(arch: dict) -> str:
    """model.variant of the reference's arch.name (`recursive_reasoning.<module>@<class>`)."""
    name = str(arch.get("name", TRM_CLASS))
    module, _, cls = name.rpartition("@")
    module = module.rsplit(".", 1)[-1]
    for (mod, klass), variant in VARIANT_OF.items():
        if cls == klass and module in (mod, ""):
            return variant
    known = ", ".join(f"recursive_reasoning.{m}@{c}" for m, c in VARIANT_OF)
    raise ReferenceImportError(f"arch.name={name!r}: expected one of {known}")


def config_from_reference(all_config: dict) -> Config:
    """Our Config from the reference's hydra config (its all_config.yaml, as a dict), for each of
    its models (`variant_of`): trm, trm_singlez, trm_hier6, hrm, transformers_baseline.

    arch.loss is not mapped (training here uses stable-max cross entropy), nor are epochs,
    names, paths of checkpoints and evaluators."""
    if not isinstance(all_config, dict) or not isinstance(all_config.get("arch"), dict):
        raise ReferenceImportError("arch: missing; expected the reference's all_config.yaml with an arch section")
    arch = all_config["arch"]
    variant = variant_of(arch)
    h_layers = arch.get("H_layers") or 0
    if variant == "hrm" and h_layers != arch.get("L_layers"):
        raise ReferenceImportError(
            f"arch.H_layers={h_layers}: expected arch.L_layers={arch.get('L_layers')}; the HRM "
            "here has one `layers` for f_H and f_L"
        )
    if variant in ("trm", "singlez", "multiz") and h_layers > 0:
        raise ReferenceImportError(
            f"arch.H_layers={h_layers}: expected 0; a separate H level (HRM-style, "
            "recursive_reasoning.hrm) cannot be represented by the TRM's one network"
        )
    mlp_t = bool(arch.get("mlp_t", False)) and variant != "transformer"  # the baseline's blocks are attention only
    pos = arch.get("pos_encodings", "rope")
    if pos == "learned" or (pos != "rope" and not mlp_t):
        raise ReferenceImportError(
            f"arch.pos_encodings={pos!r}: expected 'rope' ('none' only with arch.mlp_t: true, "
            "where no position encoding is used); learned position embeddings are not supported"
        )
    dtype = arch.get("forward_dtype", "bfloat16")
    if dtype not in ("bfloat16", "float32"):
        raise ReferenceImportError(f"arch.forward_dtype={dtype!r}: expected 'bfloat16' or 'float32'")

    cfg = apply_overrides(Config(), {"model.variant": variant})  # with the variant's own values
    for key, ours, default in _ARCH_OF[variant]:
        if key not in arch and default is None:
            raise ReferenceImportError(f"arch.{key}: missing; the reference config always has it")
        _set(cfg, f"arch.{key}", ours, arch.get(key, default))
    ndim = arch.get("puzzle_emb_ndim", 0)
    if ndim == "${.hidden_size}":  # an unresolved hydra interpolation (the reference default)
        ndim = arch["hidden_size"]
    _set(cfg, "arch.puzzle_emb_ndim", "model.puzzle_emb_ndim", ndim)
    # HRM and the baseline have no puzzle_emb_len: always the reference's "0", ceil(puzzle_emb_ndim / hidden_size)
    length = arch.get("puzzle_emb_len", 16) if variant in ("trm", "singlez", "multiz") else 0
    if length == 0:
        length = -(-cfg.model.puzzle_emb_ndim // cfg.model.hidden)
    _set(cfg, "arch.puzzle_emb_len", "model.puzzle_emb_len", length)
    cfg.model.arch = "mlp" if mlp_t else "attention"
    if variant in ("trm", "singlez", "multiz"):  # HRM and the baseline always learn Q (the variant's default)
        cfg.model.halting = "bce" if arch.get("no_ACT_continue", True) else "q_learning"
    cfg.train.bf16 = dtype == "bfloat16"

    for key, ours in _TRAIN:
        if key in all_config:
            _set(cfg, key, ours, all_config[key])
    ratio = all_config.get("lr_min_ratio", 1.0)
    if ratio < 1.0:  # the reference's schedule is cosine to lr_min_ratio; 1.0 makes it constant
        cfg.train.lr_schedule = "cosine"
        _set(cfg, "lr_min_ratio", "train.lr_min_ratio", ratio)
    if "ema" in all_config:
        _set(cfg, "ema_rate", "train.ema", all_config.get("ema_rate", 0.999) if all_config["ema"] else 0.0)
    paths = all_config.get("data_paths") or []
    if paths:
        cfg.data.path = str(paths[0])
    cfg.data.generate = "none"
    try:
        return cfg.validate()
    except ConfigError as e:  # name the reference's key: "model.heads=0: ..." -> "arch.num_heads: model.heads=0: ..."
        ours = re.split(r"[=:]", str(e), maxsplit=1)[0]
        names = (
            {o: f"arch.{r}" for r, o, _ in _ARCH_OF[variant]}
            | {o: r for r, o in _TRAIN}
            | {"model.puzzle_emb_ndim": "arch.puzzle_emb_ndim", "model.puzzle_emb_len": "arch.puzzle_emb_len"}
        )
        raise ReferenceImportError(f"{names.get(ours, 'all_config.yaml')}: {e}") from e


def read_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ReferenceImportError(
            f"--config {path}: no such file (the reference writes all_config.yaml beside "
            "its checkpoints; pass --config FILE)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ReferenceImportError(f"{path}: not a YAML file: {str(e).splitlines()[0]}") from e
    try:
        return config_from_reference(raw)
    except ReferenceImportError as e:
        raise ReferenceImportError(f"{path}: {e}") from e


# ---------------------------------------------------------------- meta
def _dataset_meta(folder: Path) -> dict | None:
    """{vocab_size, seq_len, num_puzzle_ids} of a dataset of ours or of the reference, if there."""
    if (folder / "meta.json").is_file():
        from trm.data.dataset import read_meta

        return read_meta(folder)
    ref = folder / "train" / "dataset.json"
    if ref.is_file():
        try:
            m = json.loads(ref.read_text())
            return {
                "vocab_size": m["vocab_size"],
                "seq_len": m["seq_len"],
                "num_puzzle_ids": m["num_puzzle_identifiers"],
            }
        except (ValueError, KeyError) as e:
            raise ReferenceImportError(f"{ref}: unreadable dataset metadata: {e}") from e
    return None


def infer_meta(
    weights: dict[str, torch.Tensor],
    cfg: Config,
    dataset: dict | None = None,
    where: str = "checkpoint",
    dataset_where: str = "dataset",
) -> dict[str, int]:
    """vocab_size, seq_len, num_puzzle_ids: from the weights' shapes where they tell (seq_len only
    with the MLP-mixer), else from the dataset's metadata; a disagreement is an error."""
    m = cfg.model
    if "embed.weight" not in weights:
        raise ReferenceImportError(f"{where}: missing key 'inner.embed_tokens.embedding_weight'")
    meta: dict[str, int | None] = {
        "vocab_size": weights["embed.weight"].shape[0],
        "seq_len": None,
        "num_puzzle_ids": None,
    }
    if m.puzzle_emb_ndim and "puzzle_emb.weight" in weights:
        meta["num_puzzle_ids"] = weights["puzzle_emb.weight"].shape[0]
    mixer = weights.get("net.blocks.0.mix.gate_up.weight")
    if m.arch == "mlp" and mixer is not None:
        meta["seq_len"] = mixer.shape[1] - (m.puzzle_emb_len if m.puzzle_emb_ndim else 0)
    for k in meta:
        if dataset is not None and meta[k] is not None and dataset.get(k) != meta[k]:
            raise ReferenceImportError(
                f"{dataset_where}: {k}={dataset.get(k)} but the checkpoint {where} has "
                f"{k}={meta[k]}; expected the dataset the model was trained on"
            )
        if meta[k] is None and dataset is not None:
            meta[k] = dataset.get(k)
    if meta["num_puzzle_ids"] is None and not m.puzzle_emb_ndim:
        meta["num_puzzle_ids"] = 1
    if meta["seq_len"] is None:
        raise ReferenceImportError(
            f"{where}: cannot tell the sequence length (an attention model's weights do not "
            f"show it, and {dataset_where} has no dataset metadata); pass --data DATASET_DIR"
        )
    if meta["num_puzzle_ids"] is None:
        raise ReferenceImportError(
            f"{where}: missing key 'inner.puzzle_emb.weights' (puzzle_emb_ndim={m.puzzle_emb_ndim})"
        )
    known: dict[str, int] = {}
    for k, v in meta.items():
        assert v is not None  # vocab_size comes from the weights; seq_len and num_puzzle_ids were checked above
        known[k] = int(v)
    return known


# ---------------------------------------------------------------- import
def import_checkpoint(
    checkpoint: str | Path, out: str | Path, config: str | Path | None = None, data: str | Path | None = None
) -> dict:
    """Write run folder `out` (config.yaml, checkpoints/step_N/state.pt) from a reference checkpoint.

    Everything is read and checked first, then written into a temporary folder renamed to
    `out` when complete: on any error nothing is left at `out`."""
    from trm.train import checkpoint as ckpt
    from trm.train.state import TrainingState

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists():
        raise ReferenceImportError(f"--out {out}: already exists; expected a new folder")
    if not checkpoint.is_file():
        raise ReferenceImportError(f"--checkpoint {checkpoint}: no such file")
    config = Path(config) if config else checkpoint.parent / "all_config.yaml"
    cfg = read_config(config)
    reference, ema_shadow, step = read_checkpoint(checkpoint)
    weights = convert_state_dict(reference, str(checkpoint), cfg.model.variant)
    dataset: dict | None
    if data is not None:
        from trm.data.dataset import read_meta

        dataset, dataset_where = read_meta(data), f"--data {data}"
        cfg.data.path = str(data)
    else:
        dataset, dataset_where = _dataset_meta(Path(cfg.data.path)), f"data_paths[0]={cfg.data.path}"
    meta = infer_meta(weights, cfg, dataset, str(checkpoint), dataset_where)
    # a fresh training state (optimiser too: `trm train` on the folder fine-tunes from here), the
    # reference's weights loaded, its EMA registered from them, then its EMA shadow where saved
    state = TrainingState(cfg, meta, torch.device("cpu"))
    load_weights(state.model, weights, str(checkpoint))
    state.reset_ema()
    if ema_shadow and state.ema is not None:  # the EMA of the parameters; buffers (puzzle table, inits) as in the model
        shadow = convert_state_dict(ema_shadow, f"{checkpoint} (ema_helper)", cfg.model.variant)
        ema_model = cast(RecursiveModel, state.ema.module)  # AveragedModel's deep copy of state.model
        load_weights(ema_model, {**weights, **shadow}, f"{checkpoint} (ema_helper)")
    state.step = step
    state.extra["imported_from"] = {
        "checkpoint": str(checkpoint.resolve()),
        "config": str(config.resolve()),
        "step": step,
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        folder = tmp / "checkpoints" / ckpt.step_dir_name(step)
        folder.mkdir(parents=True)
        cfg.save(tmp / "config.yaml")
        state.save(folder)
        ckpt.verify(folder)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "checkpoint": str(out / "checkpoints" / ckpt.step_dir_name(step)),
        "step": step,
        "arch": cfg.model.arch,
        **meta,
        "ema": bool(ema_shadow) and state.ema is not None,
        "data_path": cfg.data.path,
    }
