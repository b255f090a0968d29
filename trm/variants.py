"""The reference's other recursions, as `model.variant` (SamsungSAILMontreal/TinyRecursiveModels,
models/recursive_reasoning/): each is its file's algorithm, with the blocks, embeddings, heads and
supervision step of `trm.model`, so that training, evaluation and the halting losses are the same.

    variant       reference file             per supervision step (x: input, n: L_cycles, T: H_cycles)
    trm           trm.py                     z <- net(z, x + y) n times, y <- net(y, z); T-1 of these no_grad
    singlez       trm_singlez.py             z <- net(z, x) n times, z <- net(z); T-1 of these no_grad; read z
    multiz        trm_hier6.py               z_i <- net(z_1+..+z_6, y + x) for i = 1..n, y <- net(y, z_1+..+z_6)
    hrm           hrm.py                     z <- f_L(z, y + x) n times, y <- f_H(y, z), T times; only the
                                             last z and y updates with gradients (the 1-step gradient)
    transformer   transformers_baseline.py   y <- net(y, x): one pass of `layers` blocks (direct prediction)

HRM is the TRM module with the HRM's options (two networks, `net` = f_L and `net_y` = f_H, of `layers`
blocks each; 1-step gradient; Q-learning halting with the extra forward pass): with those, the TRM's
deep recursion is, call for call, hrm.py's loop (tests/test_variants.py checks both against the
reference's files). Halting with Q-learning works for every variant (see `RecursiveModel`).
"""

from __future__ import annotations

import torch

from trm.config import MULTIZ_LATENTS, ModelConfig
from trm.model import TRM, RecursiveModel


class SingleZ(RecursiveModel):
    """Single z (paper Table 2): no separate answer y; the one latent z is refined and decoded."""

    readout = "z"

    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int, num_puzzle_ids: int = 1):
        super().__init__(cfg, vocab_size, seq_len, num_puzzle_ids)
        self.net = self.make_net()
        self.make_heads()
        self.register_buffer("y_init", None)
        self.make_init("z_init")

    def cycle(self, x, z):
        for _ in range(self.cfg.n):
            z = self.perturb(self.net(z, x))
        return self.net(z)  # the reference's extra refinement, without the input

    def recursion(self, x, y, z):
        with torch.no_grad():
            for _ in range(self.cfg.T - 1):
                z = self.cycle(x, z)
        return y, self.cycle(x, z)


class MultiZ(RecursiveModel):
    """Multi-scale z (paper Table 2, `trm_hier6`): six latents z_1..z_6 carried as z [B, 6, L, D];
    update i rewrites z_i from their sum (so n <= 6), and y reads the sum."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int, num_puzzle_ids: int = 1):
        super().__init__(cfg, vocab_size, seq_len, num_puzzle_ids)
        self.net = self.make_net()
        self.make_heads()
        self.make_init("y_init")
        self.make_init("z_init", MULTIZ_LATENTS)  # L1_init..L6_init

    @staticmethod
    def total(zs: list[torch.Tensor]) -> torch.Tensor:
        s = zs[0]
        for z in zs[1:]:  # left to right, as the reference's z_L[0] + ... + z_L[5]
            s = s + z
        return s

    def cycle(self, x, y, zs):
        for i in range(self.cfg.n):
            zs[i] = self.perturb(self.net(self.total(zs), y + x))
        return self.net(y, self.total(zs)), zs

    def recursion(self, x, y, z):
        zs = list(z.unbind(1))
        with torch.no_grad():
            for _ in range(self.cfg.T - 1):
                y, zs = self.cycle(x, y, zs)
        y, zs = self.cycle(x, y, zs)
        return y, torch.stack(zs, dim=1)


class Transformer(RecursiveModel):
    """The direct-prediction baseline: `layers` blocks once per supervision step (no recursion;
    deep supervision and halting as the others). The reference's config: 8 layers, 12 heads at 512.
    It has no latent z, so inference-time noise (`RecursiveModel.noise`) has nothing to perturb."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int, num_puzzle_ids: int = 1):
        super().__init__(cfg, vocab_size, seq_len, num_puzzle_ids)
        self.net = self.make_net()
        self.make_heads()
        self.make_init("y_init")  # H_init
        self.register_buffer("z_init", None)

    def recursion(self, x, y, z):
        return self.net(y, x), z


VARIANTS: dict[str, type[RecursiveModel]] = {
    "trm": TRM,
    "singlez": SingleZ,
    "multiz": MultiZ,
    "hrm": TRM,
    "transformer": Transformer,
}


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int, num_puzzle_ids: int = 1) -> RecursiveModel:
    """The model of `cfg.variant` (called as `build_model(cfg.model, **meta)`)."""
    return VARIANTS[cfg.variant](cfg, vocab_size, seq_len, num_puzzle_ids)
