import torch
import pytest

from trm.config import ModelConfig
from trm.model import TRM, count_parameters


def small(**kw) -> ModelConfig:
    return ModelConfig(**{"hidden": 32, "heads": 4, "n": 3, "T": 3, "puzzle_emb_ndim": 32, "puzzle_emb_len": 2, **kw})


@pytest.mark.parametrize("arch", ["attention", "mlp"])
def test_shapes(arch):
    m = TRM(small(arch=arch), vocab_size=11, seq_len=81, num_puzzle_ids=5)
    carry = m.initial_carry(4)
    assert carry.y.shape == (4, 83, 32)
    carry, out = m(carry, torch.randint(0, 11, (4, 81)), torch.tensor([0, 1, 2, 4]))
    assert out.logits.shape == (4, 81, 11) and out.q_halt.shape == (4,) and out.q_continue is None
    assert not carry.y.requires_grad and not carry.z.requires_grad  # carried state is detached
    assert torch.all(out.q_halt == -5.0)  # halting head starts at "never halt"


def _grad_calls(cfg: ModelConfig) -> tuple[int, int]:
    """(net calls, net calls recorded by autograd) in one supervision step."""
    m = TRM(cfg, 11, 81)
    calls = []
    for net in {id(m.net): m.net, id(m.net_y): m.net_y}.values():
        net.register_forward_hook(lambda mod, inp, out: calls.append(out.requires_grad))
    m(m.initial_carry(2), torch.randint(0, 11, (2, 81)), torch.zeros(2, dtype=torch.long))
    return len(calls), sum(calls)


def test_gradients_flow_only_through_the_last_recursion():
    total, with_grad = _grad_calls(small(n=3, T=3))
    assert total == 3 * (3 + 1)  # T recursions of n z-updates and one y-update
    assert with_grad == 3 + 1  # only the last recursion is in the autograd graph


def test_one_step_gradient_keeps_only_the_last_two_calls():
    total, with_grad = _grad_calls(small(n=3, T=3, gradient="one_step"))
    assert (total, with_grad) == (12, 2)


def test_backward_reaches_parameters_through_last_pass_only():
    m = TRM(small(n=2, T=3), 11, 81)
    seen = []
    for block in m.net.blocks:
        block.mlp.down.weight.register_hook(lambda g: seen.append(g))
    _, out = m(m.initial_carry(2), torch.randint(0, 11, (2, 81)), torch.zeros(2, dtype=torch.long))
    out.logits.sum().backward()
    # the weight gradient hook fires once per parameter (accumulated over the n+1 graph uses)
    assert len(seen) == len(m.net.blocks)
    assert all(p.grad is not None for p in m.net.parameters())


def test_separate_nets_and_q_learning_heads():
    m = TRM(small(separate_nets=True, halting="q_learning"), 11, 81)
    assert m.net is not m.net_y
    _, out = m(m.initial_carry(2), torch.randint(0, 11, (2, 81)), torch.zeros(2, dtype=torch.long))
    assert out.q_continue is not None


def test_parameter_counts_match_the_paper():
    # paper Table 1: attention ~7M and MLP-mixer ~5M on Sudoku (reference: 6.83M / 5.03M)
    att = count_parameters(TRM(ModelConfig(arch="attention"), 11, 81, 1))
    mlp = count_parameters(TRM(ModelConfig(arch="mlp"), 11, 81, 1))
    assert abs(att - 6.83e6) < 0.01e6 and abs(mlp - 5.03e6) < 0.01e6


def test_mixer_normalises_over_the_sequence_axis():
    # reference: h^T = rms(h^T + mlp_t(h^T)) over the LAST axis of [B, D, L], i.e. over positions
    from trm.model import Block

    torch.manual_seed(0)
    cfg = small(arch="mlp", hidden=16, expansion=2.0)
    block = Block(cfg, seq_len=12, rotary=None)
    h = torch.randn(3, 12, 16)
    with torch.no_grad():
        t = h.permute(0, 2, 1)  # [B, D, L]
        mix = block.mix.gate_up.weight  # [2 * inner, L]
        gate, up = (t @ mix.T).chunk(2, dim=-1)
        t = t + (gate * torch.sigmoid(gate) * up) @ block.mix.down.weight.T
        t = t / torch.sqrt((t * t).mean(dim=2, keepdim=True) + cfg.norm_eps)  # mean over the L positions
        u = t.permute(0, 2, 1)  # back to [B, L, D]
        gate, up = (u @ block.mlp.gate_up.weight.T).chunk(2, dim=-1)
        u = u + (gate * torch.sigmoid(gate) * up) @ block.mlp.down.weight.T
        expected = u / torch.sqrt((u * u).mean(dim=2, keepdim=True) + cfg.norm_eps)  # over D here
        got = block(h)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_truncated_normal_init_has_the_nominal_std():
    # the reference's rule (JAX/flax): the std of what is drawn is the nominal std; torch's
    # nn.init.trunc_normal_ with the same std and +-2 std bounds gives ~0.88 of it
    from trm.model import lecun_linear, trunc_normal_

    torch.manual_seed(0)
    w = trunc_normal_(torch.empty(1_000_000), std=0.5)
    assert abs(w.std().item() / 0.5 - 1) < 0.01
    assert w.abs().max().item() <= 2 * 0.5 / 0.8796 + 1e-6  # cut at 2 of the raised std
    layer = lecun_linear(2048, 1024)  # a large linear layer: std 1/sqrt(fan_in)
    assert abs(layer.weight.std().item() * 2048 ** 0.5 - 1) < 0.02
    m = TRM(small(hidden=512, heads=8, layers=1, puzzle_emb_ndim=0), vocab_size=2000, seq_len=4)
    block = m.net.blocks[0]
    for name, w in [("lm_head", m.lm_head.weight), ("mlp", block.mlp.gate_up.weight), ("qkv", block.mix.qkv.weight),
                    ("embed", m.embed.weight)]:  # all std 1/sqrt(512): fan_in 512, and the embedding's 1/sqrt(hidden)
        assert abs(w.std().item() * 512 ** 0.5 - 1) < 0.02, name
    inits = []
    for seed in range(8):  # y_init / z_init (the reference's H_init / L_init): std 1, 512 values each
        torch.manual_seed(seed)
        m = TRM(small(hidden=512, heads=8, layers=1, puzzle_emb_ndim=0, arch="mlp"), vocab_size=11, seq_len=4)
        inits += [m.y_init, m.z_init]
    assert abs(torch.cat(inits).std().item() - 1) < 0.02


def test_swiglu_width_rounds_like_the_reference():
    # round(expansion * d * 2/3) up to a multiple of 256: 123 * 3.125 * 2/3 = 256.25 -> 256 (not 512)
    from trm.model import SwiGLU

    assert SwiGLU(123, 3.125).down.in_features == 256
    assert SwiGLU(97, 4.0).down.in_features == 512  # Sudoku mixer: 81 cells + 16 prefix positions
    assert SwiGLU(512, 4.0).down.in_features == 1536
