"""The Tiny Recursive Model (Jolicoeur-Martineau, 2025).

Names follow the paper:
  x  embedded question (tokens + learned puzzle-embedding prefix)
  y  embedded current answer; decoded by `lm_head` + argmax
  z  latent reasoning state
  n  latent updates per recursion:  z <- net(z, x + y)  n times, then  y <- net(y, z)
  T  recursions per supervision step; the first T-1 run under no_grad
  N_sup  supervision steps; (y, z) are detached and carried between them

`net` is `layers` post-norm blocks (RMSNorm without weights, SwiGLU, RoPE, no
biases) whose token mixer is self-attention or, for small fixed contexts, an
MLP over the sequence (MLP-mixer, paper 4.5).

With the same weights this gives the reference implementation's logits and
halting logits (SamsungSAILMontreal/TinyRecursiveModels, `trm.py` and `layers.py`;
`trm.official` maps its checkpoints here). Each choice follows it:
  - reference H_cycles = T, L_cycles = n, L_layers = layers; one network `L_level` (= `net`);
  - net(h, inj) = blocks(h + inj): the input is added to the state before the blocks;
  - post-norm: h = rms(h + mix(h)); h = rms(h + mlp(h)); RMSNorm in float32, no weights;
  - MLP-mixer (`mlp_t`): transpose to [B, D, L], h + mlp_t(h), RMSNorm there (over L), transpose back;
  - SwiGLU inner width: round(expansion * d * 2/3) rounded up to a multiple of 256;
  - attention: one fused qkv (q heads, k heads, v heads), non-causal SDPA, o_proj; no biases;
  - RoPE on (puzzle prefix + seq) positions, rotate-half, applied in float32;
  - init: truncated normal whose actual std is the nominal std (JAX/flax rule, `trunc_normal_`):
    linear layers std 1/sqrt(fan_in), token embedding 1/sqrt(hidden), y_init/z_init (H_init/L_init) 1;
  - q_head: zero weights, bias -5, read at position 0; lm_head without bias, on positions after the prefix;
  - puzzle embedding: zero init, padded to puzzle_emb_len * hidden, viewed as a prefix of tokens;
  - embeddings (tokens and prefix) scaled by sqrt(hidden) after concatenation;
  - dtype: under autocast the embeddings, residual stream and carry are in the autocast dtype (the
    reference's forward_dtype=bfloat16); the q logits are float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trm.config import ModelConfig


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)).to(dtype)


def trunc_normal_(t: torch.Tensor, std: float, bound: float = 2.0) -> torch.Tensor:
    """Truncated normal in [-bound*s, bound*s] whose *actual* std is `std` (the JAX/flax rule).

    torch's `nn.init.trunc_normal_(std=s)` cuts a normal of std s, so what it draws has a
    smaller std (0.88 s at 2 sigma); here s is raised by the truncated normal's std first.
    """
    with torch.no_grad():
        if std == 0:
            return t.zero_()
        mass = math.erf(bound / math.sqrt(2))  # P(|N(0,1)| < bound)
        pdf = math.exp(-(bound**2) / 2) / math.sqrt(2 * math.pi)
        s = std / math.sqrt(1 - 2 * bound * pdf / mass)  # var of N(0,1) cut at +-bound: 1 - 2 b pdf(b) / mass
        # inverse-CDF sampling: sqrt(2) erfinv(U(-mass, mass)) is N(0,1) restricted to (-bound, bound)
        return t.uniform_(-mass, mass).erfinv_().mul_(math.sqrt(2) * s).clamp_(-bound * s, bound * s)


def lecun_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=False)
    trunc_normal_(layer.weight, std=1.0 / math.sqrt(d_in))
    return layer


class SwiGLU(nn.Module):
    def __init__(self, dim: int, expansion: float):
        super().__init__()
        inner = 256 * math.ceil(round(expansion * dim * 2 / 3) / 256)  # reference rounding
        self.gate_up = lecun_linear(dim, 2 * inner)
        self.down = lecun_linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        freqs = torch.outer(torch.arange(seq_len).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def rotate(t):  # t: [B, H, L, head_dim], cos/sin: [L, head_dim], in their (float32) dtype
            x = t.to(self.cos.dtype)
            x1, x2 = x.chunk(2, dim=-1)
            return (x * self.cos + torch.cat((-x2, x1), dim=-1) * self.sin).to(t.dtype)

        return rotate(q), rotate(k)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, rotary: Rotary):
        super().__init__()
        # head_dim = dim // heads as the reference, so heads * head_dim may be < dim (its baseline: 12 x 42 at 512)
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = lecun_linear(dim, 3 * heads * self.head_dim)
        self.out = lecun_linear(heads * self.head_dim, dim)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, k)
        y = F.scaled_dot_product_attention(q, k, v)  # non-causal: the whole grid sees itself
        return self.out(y.transpose(1, 2).reshape(B, L, self.heads * self.head_dim))


class Block(nn.Module):
    """Post-norm block: h = norm(h + mix(h)); h = norm(h + mlp(h))."""

    def __init__(self, cfg: ModelConfig, seq_len: int, rotary: Rotary | None):
        super().__init__()
        self.eps = cfg.norm_eps
        self.arch = cfg.arch
        self.mix: nn.Module
        if cfg.arch == "attention":
            assert rotary is not None  # `make_net` builds one whenever arch is attention
            self.mix = Attention(cfg.hidden, cfg.heads, rotary)
        else:  # MLP-mixer: a SwiGLU across positions, one per channel
            self.mix = SwiGLU(seq_len, cfg.expansion)
        self.mlp = SwiGLU(cfg.hidden, cfg.expansion)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.arch == "attention":
            h = rms_norm(h + self.mix(h), self.eps)
        else:  # as the reference: the norm runs while h is [B, D, L], i.e. over the sequence
            t = h.transpose(1, 2)
            h = rms_norm(t + self.mix(t), self.eps).transpose(1, 2)
        return rms_norm(h + self.mlp(h), self.eps)


class Net(nn.Module):
    """The one tiny network: net(state, injection) = blocks(state + injection)."""

    def __init__(self, cfg: ModelConfig, seq_len: int, rotary: Rotary | None):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, seq_len, rotary) for _ in range(cfg.layers))

    def forward(self, state: torch.Tensor, injection: torch.Tensor | None = None) -> torch.Tensor:
        h = state if injection is None else state + injection
        for block in self.blocks:
            h = block(h)
        return h


class PuzzleEmbedding(nn.Module):
    """One learned vector per puzzle id (per (task, augmentation) on ARC).

    The table is a buffer, not a Parameter: it can hold a million rows, so it is
    kept out of AdamW, DDP's all-reduce and the EMA. In training, the rows a
    batch touches are gathered into a leaf tensor whose gradient the sparse
    sign-SGD step (`trm.train.optim.PuzzleEmbeddingSGD`) applies to the table.
    """

    weight: torch.Tensor  # [num_ids, ndim], a buffer

    def __init__(self, num_ids: int, ndim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_ids, ndim))  # zero init, as the reference
        self.last_ids: torch.Tensor | None = None
        self.last_rows: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.training:
            return self.training_rows(ids)
        return self.weight[ids]

    def training_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of `ids` as a leaf tensor, remembered for the sign-SGD step. The trainer calls it
        before a compiled forward (and passes the rows in): a leaf made inside would break the graph."""
        rows = self.weight[ids].detach().requires_grad_(True)
        self.last_ids, self.last_rows = ids, rows
        return rows


@dataclass
class Carry:
    """Per-sample state carried across supervision steps (detached). A variant without y (single z)
    or without z (the transformer) carries an empty [B, 0, D] there; six-z carries z as [B, 6, L', D]."""

    y: torch.Tensor  # [B, L', D]
    z: torch.Tensor  # [B, L', D]


@dataclass
class LatentNoise:
    """Gaussian noise of scale `sigma` added to z after each latent update: PTRM's (2026) noisy
    trajectories at inference. Set on a model only by evaluation (`trm.evaluate.predict`, `trm eval
    --noise`); drawn in float32 from `generator` (seeded there, so a result is reproducible), then
    cast to z's dtype. z is RMS-normed by the net's last block, so sigma is relative to a unit scale."""

    sigma: float
    generator: torch.Generator

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        draw = torch.randn(z.shape, generator=self.generator, device=z.device, dtype=torch.float32)
        return z + (self.sigma * draw).to(z.dtype)


@dataclass
class StepOutput:
    logits: torch.Tensor  # [B, L, vocab]
    q_halt: torch.Tensor  # [B] halting logit: "the answer is already right"
    q_continue: torch.Tensor | None  # [B] only with halting=q_learning


class RecursiveModel(nn.Module):
    """What every variant shares (`trm.variants`): the input embedding (tokens and the puzzle prefix),
    the heads, the carry's start values, and one supervision step `forward`; a subclass builds its
    networks and start buffers (`y_init`, `z_init`; None where it has no such state) and `recursion`.

    Halting: with halting=q_learning the trainer bootstraps the continue target from one more
    gradient-free step on the new carry, as the reference's hrm.py. Its trm.py, trm_singlez.py and
    trm_hier6.py mean the same (no_ACT_continue=False) but crash there (five values unpacked from
    three); here every variant gets the intended behaviour, since it lives in the trainer."""

    readout = "y"  # the state the heads read: y, or z for the single-z variant
    y_init: torch.Tensor | None  # registered by the subclass (None: it has no such state)
    z_init: torch.Tensor | None
    lm_head: nn.Linear
    q_head: nn.Linear
    # inference-time noise on z (`LatentNoise`); None, its only value in training, leaves every
    # update untouched: `perturb` returns z itself, so the forward is bit for bit the plain one
    noise: LatentNoise | None = None

    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int, num_puzzle_ids: int = 1):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.prefix = cfg.puzzle_emb_len if cfg.puzzle_emb_ndim > 0 else 0
        self.embed_scale = math.sqrt(cfg.hidden)
        self.embed = nn.Embedding(vocab_size, cfg.hidden)
        trunc_normal_(self.embed.weight, std=1 / self.embed_scale)
        self.puzzle_emb = PuzzleEmbedding(num_puzzle_ids, cfg.puzzle_emb_ndim) if self.prefix else None

    # ---- built by the subclass, in its order (it fixes which random draws each weight gets) ----
    def make_net(self) -> Net:
        """A fresh network of `layers` blocks over the prefix + sequence."""
        cfg, total_len = self.cfg, self.seq_len + self.prefix
        if not hasattr(self, "_rotary"):  # one RoPE table (a non-persistent buffer) shared by every block
            self._rotary = (
                Rotary(cfg.hidden // cfg.heads, total_len, cfg.rope_theta) if cfg.arch == "attention" else None
            )
        return Net(cfg, total_len, self._rotary)

    def make_heads(self) -> None:
        D = self.cfg.hidden
        self.lm_head = lecun_linear(D, self.vocab_size)
        self.q_head = nn.Linear(D, 2)  # [halt, continue] logits, read at position 0
        nn.init.zeros_(self.q_head.weight)
        nn.init.constant_(self.q_head.bias, -5.0)  # start by never halting

    def make_init(self, name: str, *shape: int) -> None:
        """A start value per position-independent state (y_init, z_init), truncated normal std 1."""
        self.register_buffer(name, trunc_normal_(torch.empty(*shape, self.cfg.hidden), std=1.0))

    def recursion(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def perturb(self, z: torch.Tensor) -> torch.Tensor:
        """z after a latent update: itself, or with `noise` added when evaluation set one."""
        if self.noise is None:  # a Python branch, not z + 0 * noise: nothing is drawn or added
            return z
        return self.noise(z)

    # ---- pieces ----
    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The autocast dtype when autocast is on (the reference's forward_dtype), else the weights'."""
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.embed.weight.dtype

    def embed_input(
        self,
        tokens: torch.Tensor,
        puzzle_ids: torch.Tensor,
        dtype: torch.dtype | None = None,
        puzzle_rows: torch.Tensor | None = None,
    ):
        dtype = dtype or self.compute_dtype(tokens.device)
        x = self.embed(tokens).to(dtype)
        if self.prefix:  # puzzle_rows: the rows of puzzle_ids, gathered by the caller
            if puzzle_rows is None:
                assert self.puzzle_emb is not None  # built whenever there is a prefix
                puzzle_rows = self.puzzle_emb(puzzle_ids)
            p = puzzle_rows.to(dtype)  # [B, ndim]
            p = F.pad(p, (0, self.prefix * self.cfg.hidden - p.shape[-1])).view(-1, self.prefix, self.cfg.hidden)
            x = torch.cat((p, x), dim=1)
        return self.embed_scale * x

    def _start(self, init: torch.Tensor | None, batch_size: int, device) -> torch.Tensor:
        shape = (self.seq_len + self.prefix, self.cfg.hidden)
        if init is None:  # a variant without this state
            return torch.zeros(batch_size, 0, self.cfg.hidden, device=device)
        init = init.to(device)
        return init[..., None, :].expand(batch_size, *init.shape[:-1], *shape).clone()

    def initial_carry(self, batch_size: int, device: torch.device | None = None) -> Carry:
        device = device or self.embed.weight.device
        return Carry(self._start(self.y_init, batch_size, device), self._start(self.z_init, batch_size, device))

    def reset_carry(self, carry: Carry, reset: torch.Tensor) -> Carry:
        """Slots where `reset` is True start again from (y_init, z_init)."""

        def restart(state, init):
            if init is None:
                return state
            return torch.where(reset.view(-1, *[1] * (state.dim() - 1)), init[..., None, :].to(state.dtype), state)

        return Carry(restart(carry.y, self.y_init), restart(carry.z, self.z_init))

    def heads(self, h: torch.Tensor) -> StepOutput:
        logits = self.lm_head(h[:, self.prefix :])
        q = self.q_head(h[:, 0]).float()
        return StepOutput(logits, q[:, 0], q[:, 1] if self.cfg.halting == "q_learning" else None)

    def forward(
        self, carry: Carry, tokens: torch.Tensor, puzzle_ids: torch.Tensor, puzzle_rows: torch.Tensor | None = None
    ) -> tuple[Carry, StepOutput]:
        """One supervision step. Returns the detached carry to feed the next step.
        `puzzle_rows`: the puzzle embeddings of `puzzle_ids` when the caller gathered them
        (`PuzzleEmbedding.training_rows`), so that a compiled forward has no graph break."""
        dtype = self.compute_dtype(tokens.device)
        x = self.embed_input(tokens, puzzle_ids, dtype, puzzle_rows)
        y, z = self.recursion(x, carry.y.to(dtype), carry.z.to(dtype))
        return Carry(y.detach(), z.detach()), self.heads(z if self.readout == "z" else y)


class TRM(RecursiveModel):
    """The TRM (`variant=trm`); with the HRM's values it is also `variant=hrm` (see `trm.variants`)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int, num_puzzle_ids: int = 1):
        if cfg.variant not in ("trm", "hrm"):
            raise ValueError(f"TRM: model.variant={cfg.variant!r} is another model; use trm.variants.build_model")
        super().__init__(cfg, vocab_size, seq_len, num_puzzle_ids)
        self.net = self.make_net()
        self.net_y = self.make_net() if cfg.separate_nets else self.net  # f_H when split (HRM's H level)
        self.make_heads()
        self.make_init("y_init")
        self.make_init("z_init")

    def latent_recursion(self, x, y, z):
        for _ in range(self.cfg.n):
            z = self.perturb(self.net(z, x + y))
        y = self.net_y(y, z)
        return y, z

    def recursion(self, x, y, z):
        """Deep recursion: T-1 recursions without gradients, then one with them (or, with
        gradient=one_step, HRM's approximation: only the last z and y updates)."""
        with torch.no_grad():
            for _ in range(self.cfg.T - 1):
                y, z = self.latent_recursion(x, y, z)
            if self.cfg.gradient == "one_step":
                for _ in range(self.cfg.n - 1):
                    z = self.perturb(self.net(z, x + y))
        if self.cfg.gradient == "one_step":
            z = self.perturb(self.net(z, x + y))
            y = self.net_y(y, z)
        else:
            y, z = self.latent_recursion(x, y, z)
        return y, z

    deep_recursion = recursion  # the paper's name


def count_parameters(model: nn.Module) -> int:
    """The one parameter count (`trm params`, the training log, the benchmarks): the network's
    nn.Parameters, as the reference and the paper count them. The puzzle-embedding table is a
    buffer trained by sign-SGD and is left out: its size is the number of puzzle ids (one row on
    Sudoku and Maze, one per task and augmentation on ARC), not the model's."""
    return sum(p.numel() for p in model.parameters())
