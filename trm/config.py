"""Typed configuration with the paper's values as defaults.

Everything a run needs is one `Config` (model + train + data). It is built from
YAML and `key=value` overrides, validated once here, and flattened to unique
leaf names (`n`, `T`, `lr`, ...) for MLflow params and Tune search spaces.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trm.errors import TrmError


class ConfigError(TrmError, ValueError):
    """A config value is missing, unknown or out of range. The message names the field."""


@dataclass
class ModelConfig:
    arch: Literal["attention", "mlp"] = "attention"  # mlp = MLP-mixer over the sequence (paper 4.5)
    hidden: int = 512
    heads: int = 8
    expansion: float = 4.0  # SwiGLU width multiplier
    layers: int = 2  # blocks in the one tiny network `net`
    n: int = 6  # latent updates z <- net(x + y + z) per recursion
    T: int = 3  # recursions per supervision step; T-1 run without gradients
    N_sup: int = 16  # max deep-supervision steps per sample
    puzzle_emb_ndim: int = 512  # learned per-puzzle embedding width (0: none)
    puzzle_emb_len: int = 16  # prefix tokens it occupies (reference value)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    gradient: Literal["full", "one_step"] = "full"  # one_step = HRM's 1-step gradient
    halting: Literal["bce", "q_learning"] = "bce"  # q_learning = HRM's ACT continue loss
    separate_nets: bool = False  # HRM-style f_L / f_H split
    halt_exploration: float = 0.1  # prob. of a random minimum number of steps
    # the recursion (trm.variants): the TRM, or one of the reference's other models (single z, six z,
    # HRM, a plain transformer); setting it also sets that model's own values (VARIANT_DEFAULTS)
    variant: Literal["trm", "singlez", "multiz", "hrm", "transformer"] = "trm"


@dataclass
class TrainConfig:
    steps: int = 50_000  # optimizer steps (one supervision step each); derived from `epochs` when that is > 0
    # (then setting steps yourself is refused, never dropped: set epochs=0 to count steps; same for eval_every)
    # The reference counts training in epochs: one epoch = every puzzle group once, one augmentation,
    # all its examples. steps = floor(epochs * epoch_samples / batch_size), as the reference's total_steps.
    epochs: int = 0  # 0: train `steps`
    epoch_samples: float = 0.0  # samples in one training epoch; filled in from the dataset when training starts
    batch_size: int = 768  # global, split across DDP workers
    optimizer: Literal["adam_atan2", "adamw"] = "adam_atan2"  # the reference's AdamATan2, or torch's AdamW
    lr: float = 1e-4
    lr_warmup_steps: int = 2000
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min_ratio: float = 0.0  # cosine floor as a fraction of lr
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 1.0  # 1.0 puzzles, 0.1 ARC
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 1.0
    ema: float = 0.999  # 0 disables EMA
    grad_clip: float = 0.0  # 0 disables clipping
    bf16: bool = True  # bf16 autocast on CUDA (the reference's forward_dtype); no effect on CPU
    compile: bool = False  # torch.compile the whole supervision step (worth it on GPU)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 50
    eval_every: int = 1000  # steps; derived from `eval_every_epochs` when that is > 0
    eval_every_epochs: int = 0  # > 0: evaluate every this many epochs (the reference's eval_interval)
    eval_samples: int = 2048  # validation samples per evaluation (0 = all)
    # ARC: test tasks voted on per evaluation during training (0 = all); a subset seeded by `seed`, the whole
    # test split at the final evaluation (the vote over 1000 augmentations of every task takes hours on a CPU)
    eval_tasks: int = 0
    # The metric that picks the best checkpoint and ranks trials; "" = the dataset kind's
    # (trm.evaluate.objective: ARC task pass@2, maze path validity, else exact accuracy)
    objective: str = ""
    # Selection split (trm.data.selection): this fraction of the test split's groups (puzzles; ARC: tasks),
    # drawn with selection_seed, ranks the best checkpoint and the trials (select/* metrics); the rest is
    # reported (val/*, eval/*). select_on=test is the reference's behaviour: select on what you report.
    selection_fraction: float = 0.1
    selection_seed: int = 0
    select_on: Literal["selection", "test"] = "selection"
    checkpoint_every: int = 1000  # steps
    checkpoint_minutes: float = 30.0  # also checkpoint after this much wall time
    keep_checkpoints: int = 3  # the latest N are kept, and the best (by the dataset's primary metric) besides
    # Fine-tuning / test-time training: start from this checkpoint's weights (a checkpoint folder, or a run
    # folder: its best checkpoint); puzzle ids it lacks start at the mean of its trained puzzle embeddings
    init_from: str = ""
    freeze_weights: bool = False  # with init_from: train only the puzzle embeddings


@dataclass
class DataConfig:
    path: str = "data/sudoku"  # dataset folder built by `trm data ...`
    # When `path` holds no dataset, build it from this generator (embedded default):
    generate: Literal["none", "sudoku", "maze"] = "sudoku"
    num_train: int = 1000
    num_test: int = 1000
    augmentations: int = 1000  # augmented copies per training puzzle (paper: 1000)
    min_givens: int = 17  # generator difficulty knob: fewer givens = harder
    max_givens: int = 30
    min_rating: int = 0  # keep puzzles needing at least this many solver guesses (0: any)
    min_path: int = 110  # maze generator: shortest path longer than this (paper: 110)
    gen_seed: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> Config:
        """Types and choices (from the type hints, as `apply_overrides`), then ranges; returns self."""
        for section in SECTIONS:
            _check_types(section, getattr(self, section))
        m, t, d = self.model, self.train, self.data
        for name in ("hidden", "heads", "layers", "n", "T", "N_sup"):
            _range(f"model.{name}", getattr(m, name), lo=1)
        _range("model.puzzle_emb_ndim", m.puzzle_emb_ndim, lo=0)
        _range("model.puzzle_emb_len", m.puzzle_emb_len, lo=0)
        if m.arch == "attention" and m.hidden % m.heads and m.variant != "transformer":
            raise ConfigError(f"model.hidden={m.hidden}: expected a multiple of model.heads={m.heads}")
        if m.arch == "attention" and (m.hidden // m.heads) % 2:  # the reference's baseline: 12 heads of 42 at 512
            raise ConfigError(
                f"model.heads={m.heads}: expected hidden // heads even (RoPE rotates pairs); "
                f"{m.hidden} // {m.heads} = {m.hidden // m.heads}"
            )
        _check_variant(m)
        if m.puzzle_emb_ndim and m.puzzle_emb_len * m.hidden < m.puzzle_emb_ndim:
            raise ConfigError(
                f"model.puzzle_emb_len={m.puzzle_emb_len}: expected >= ceil(puzzle_emb_ndim/hidden)"
                f" = {-(-m.puzzle_emb_ndim // m.hidden)}"
            )
        _range("model.expansion", m.expansion, lo=0.5)
        _range("model.halt_exploration", m.halt_exploration, lo=0, hi=1)
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            _range(f"train.{name}", getattr(t, name), lo=1)
        _range("train.lr", t.lr, lo=0, lo_open=True)
        _range("train.puzzle_emb_lr", t.puzzle_emb_lr, lo=0)
        _range("train.lr_warmup_steps", t.lr_warmup_steps, lo=0)
        for name in ("epochs", "epoch_samples", "eval_every_epochs"):
            _range(f"train.{name}", getattr(t, name), lo=0)
        _range("train.lr_min_ratio", t.lr_min_ratio, lo=0, hi=1)
        _range("train.beta1", t.beta1, lo=0, hi=1, hi_open=True)
        _range("train.beta2", t.beta2, lo=0, hi=1, hi_open=True)
        _range("train.weight_decay", t.weight_decay, lo=0)
        _range("train.puzzle_emb_weight_decay", t.puzzle_emb_weight_decay, lo=0)
        _range("train.ema", t.ema, lo=0, hi=1, hi_open=True)
        _range("train.grad_clip", t.grad_clip, lo=0)
        _range("train.eval_samples", t.eval_samples, lo=0)
        _range("train.eval_tasks", t.eval_tasks, lo=0)
        from trm.evaluate.objective import METRIC_PREFIXES, SELECT, is_metric  # lazy: trm.evaluate imports the model

        if t.objective and not is_metric(t.objective):
            raise ConfigError(
                f'train.objective={t.objective!r}: expected "" (the dataset kind\'s) or a metric an '
                f"evaluation reports, named {' or '.join(p + '...' for p in METRIC_PREFIXES)} "
                f"(e.g. val/cell_accuracy; {SELECT}val/cell_accuracy: the same on the selection split)"
            )
        _range("train.selection_fraction", t.selection_fraction, lo=0, hi=1, lo_open=True, hi_open=True)
        if t.select_on == "test" and t.objective.startswith(SELECT):
            raise ConfigError(
                f"train.objective={t.objective!r}: a selection-split metric, but train.select_on=test "
                f"evaluates no selection split; expected the metric without {SELECT!r}"
            )
        _range("train.checkpoint_minutes", t.checkpoint_minutes, lo=0, lo_open=True)
        for name in ("num_train", "num_test", "augmentations"):
            _range(f"data.{name}", getattr(d, name), lo=0 if name == "augmentations" else 1)
        _range("data.min_givens", d.min_givens, lo=17, hi=81)
        _range("data.max_givens", d.max_givens, lo=d.min_givens, hi=81)
        _range("data.min_rating", d.min_rating, lo=0)
        _range("data.min_path", d.min_path, lo=1)
        return self

    # ---- epochs -> steps ----
    @property
    def counts_epochs(self) -> bool:
        """True when `steps` or `eval_every` come from epochs, which need the dataset's epoch size."""
        return self.train.epochs > 0 or self.train.eval_every_epochs > 0

    def resolve_epochs(self, epoch_samples: float) -> Config:
        """A copy with `steps` (from `epochs`) and `eval_every` (from `eval_every_epochs`) derived from
        the samples in one training epoch (`trm.data.dataset.epoch_size`), as the reference:
        steps = floor(epochs * epoch_samples / batch_size); evaluations every ceil(eval_every_epochs *
        epoch_samples / batch_size) steps, so that the last periodic one is the final step's.
        Unchanged (but for `epoch_samples`) when neither is set."""
        cfg = copy.deepcopy(self)
        t = cfg.train
        t.epoch_samples = float(epoch_samples)
        if t.epoch_samples <= 0 and self.counts_epochs:
            name = "epochs" if t.epochs > 0 else "eval_every_epochs"
            raise ConfigError(f"train.{name}={getattr(t, name)}: the training set yields no samples per epoch")
        if t.epochs > 0:
            t.steps = max(1, int(t.epochs * t.epoch_samples / t.batch_size))
        if t.eval_every_epochs > 0:
            t.eval_every = max(1, math.ceil(t.eval_every_epochs * t.epoch_samples / t.batch_size))
        return cfg.validate()

    # ---- flat view: unique leaf names for MLflow params and Tune spaces ----
    def flat(self) -> dict[str, Any]:
        """Every leaf by its bare name. While epochs are not yet resolved (`resolve_epochs`), the
        fields they determine are left out rather than shown with values the run will not use;
        the trainer logs them once it has read the dataset."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        out["data_path"] = out.pop("path")
        if self.counts_epochs and self.train.epoch_samples <= 0:
            del out["epoch_samples"]
            if self.train.epochs > 0:
                del out["steps"]
            if self.train.eval_every_epochs > 0:
                del out["eval_every"]
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @property
    def effective_depth(self) -> int:
        """Layers evaluated per supervision step: layers * (n + 1) * T (paper Table 3)."""
        return self.model.layers * (self.model.n + 1) * self.model.T


SECTIONS = ("model", "train", "data")
_SECTION_TYPES = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def _field_owner() -> dict[str, str]:
    """Bare leaf name -> section, e.g. 'n' -> 'model'. Leaf names are unique by design."""
    owner: dict[str, str] = {}
    for section, cls in _SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"duplicate config leaf {f.name}"
            owner[f.name] = section
    owner["data_path"] = "data"
    return owner


FIELD_OWNER = _field_owner()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_types(section: str, obj: Any) -> None:
    """Every field of a section against its type hint (choices included), coerced in place."""
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, _coerce(f"{section}.{f.name}", getattr(obj, f.name), type(obj)))


def _coerce(key: str, value: Any, cls: type) -> Any:
    name = key.split(".")[-1]
    hints = _hints(cls)
    if name not in hints:
        allowed = ", ".join(sorted(hints))
        raise ConfigError(f"{key}: unknown field; expected one of: {allowed}")
    hint = hints[name]
    if isinstance(value, str) and hint is not str:
        value = yaml.safe_load(value) if value else value  # "4" -> 4, "true" -> True, "1e-4" -> 1e-4
        if isinstance(value, str) and hint in (int, float):
            try:
                value = float(value)
            except ValueError:
                pass
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}={value!r}: expected one of {list(typing.get_args(hint))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        if not math.isfinite(value):  # nan passes every range check (all comparisons are False)
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return float(value)
    if hint is str:
        return str(value)
    return value


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set fields from `{'model.n': 4}` or bare `{'n': 4}`; values may be strings from a CLI."""
    for key, value in overrides.items():
        if "." in key:
            section, name = key.split(".", 1)
            if section not in _SECTION_TYPES:
                raise ConfigError(f"{key}: unknown section {section!r}; expected one of {list(SECTIONS)}")
        else:
            if key not in FIELD_OWNER:
                raise ConfigError(f"{key}: unknown field; expected one of: {', '.join(sorted(FIELD_OWNER))}")
            section, name = FIELD_OWNER[key], key
        if name == "data_path":
            name = "path"
        target = getattr(cfg, section)
        setattr(target, name, _coerce(f"{section}.{name}", value, type(target)))
    if any(_leaf(k) == "variant" for k in overrides):  # its own values, but for those set beside it
        given = {_leaf(k) for k in overrides}
        for name, value in variant_defaults(cfg.model).items():
            if name not in given:
                setattr(cfg.model, name, value)
    return cfg


# What each variant's reference file fixes (refused otherwise) ...
VARIANT_FIXED: dict[str, dict[str, Any]] = {
    "singlez": {"separate_nets": False, "gradient": "full"},
    "multiz": {"separate_nets": False, "gradient": "full"},
    "hrm": {"separate_nets": True, "gradient": "one_step"},  # f_L and f_H, the 1-step gradient
    "transformer": {"separate_nets": False, "gradient": "full", "n": 1, "T": 1},  # one pass, no recursion
}
# ... and its reference config's values where they differ from the TRM's (set with the variant)
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "hrm": {"layers": 4, "n": 2, "T": 2, "halting": "q_learning"},  # H_layers = L_layers = 4, H/L_cycles = 2
    "transformer": {"layers": 8, "halting": "q_learning"},  # H_layers = 8
}
MULTIZ_LATENTS = 6  # trm_hier6: z_1..z_6, one updated per latent step


def variant_defaults(m: ModelConfig) -> dict[str, Any]:
    """The values `model.variant` sets: fixed ones, its reference config's, and (HRM, transformer: no
    such option in the reference) a puzzle prefix of ceil(puzzle_emb_ndim / hidden) positions."""
    out = {**VARIANT_FIXED.get(m.variant, {}), **VARIANT_DEFAULTS.get(m.variant, {})}
    if m.variant in ("hrm", "transformer") and m.puzzle_emb_ndim:
        out["puzzle_emb_len"] = -(-m.puzzle_emb_ndim // m.hidden)
    return out


def _check_variant(m: ModelConfig) -> None:
    for name, value in VARIANT_FIXED.get(m.variant, {}).items():
        if getattr(m, name) != value:
            raise ConfigError(f"model.{name}={getattr(m, name)!r}: variant={m.variant} expects {name}={value!r}")
    if m.variant == "multiz" and m.n > MULTIZ_LATENTS:
        raise ConfigError(f"model.n={m.n}: variant=multiz expects n <= {MULTIZ_LATENTS} (one latent z_i per update)")


def parse_set(items: list[str]) -> dict[str, str]:
    """['model.n=4', 'lr=3e-4'] -> {'model.n': '4', 'lr': '3e-4'}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML file <- overrides, then validate."""
    cfg = Config()
    levels: dict[str, int] = {}  # leaf name -> where it was set last: 1 the file, 2 an override
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        raw = _read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections {list(SECTIONS)}")
        flat: dict[str, Any] = {}
        for section, values in raw.items():
            if section not in _SECTION_TYPES:
                raise ConfigError(f"{path}: unknown section {section!r}; expected one of {list(SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        apply_overrides(cfg, flat)
        levels.update({_leaf(k): 1 for k in flat})
    apply_overrides(cfg, overrides or {})
    levels.update({_leaf(k): 2 for k in overrides or {}})
    _refuse_overridden(cfg, levels, path)
    return cfg.validate()


# a value the user sets that another field would replace: (field, the field it is derived from)
DERIVED = (("steps", "epochs"), ("eval_every", "eval_every_epochs"))


def _leaf(key: str) -> str:
    name = key.split(".")[-1]
    return "path" if name == "data_path" else name


def refuse_replaced(cfg: Config, base: dict[str, Any], user: dict[str, Any], base_name: str) -> None:
    """`_refuse_overridden` for a config built from `base` (a sweep preset) then `user` (--set)."""
    levels = {_leaf(k): 1 for k in base}
    levels.update({_leaf(k): 2 for k in user})
    _refuse_overridden(cfg, levels, base_name)


def _refuse_overridden(cfg: Config, levels: dict[str, int], path: Path | str | None) -> None:
    """Refuse `steps` (or `eval_every`) set where a count of epochs would silently replace it:
    the epochs come from the same or an earlier source (the file, then --set). A later source
    wins: `--set epochs=5` on a file that sets steps counts epochs, as asked."""
    t = cfg.train
    for name, source in DERIVED:
        if getattr(t, source) > 0 and levels.get(name, 0) >= max(levels.get(source, 0), 1):
            where = "--set" if levels[name] == 2 else str(path)
            raise ConfigError(
                f"train.{name}={getattr(t, name)} ({where}): {name} is derived from train.{source}="
                f"{getattr(t, source)} here; set {source}=0 to count {name} yourself, or set {source}=... instead"
            )


def _read_yaml(path: Path) -> Any:
    """A YAML file; a syntax error names the file and line (YAML's own message is several lines)."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None


def config_from_dict(d: dict[str, dict[str, Any]]) -> Config:
    """Inverse of `Config.to_dict` (used by checkpoints)."""
    cfg = Config()
    apply_overrides(cfg, {f"{s}.{k}": v for s, vals in d.items() for k, v in vals.items()})
    return cfg.validate()


def _range(
    name: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad:
        lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
        hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
        raise ConfigError(f"{name}={value!r}: expected {lo_s}{name.split('.')[-1]}{hi_s}")
