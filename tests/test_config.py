import pytest

from trm.config import Config, ConfigError, apply_overrides, config_from_dict, load_config, parse_set


def test_defaults_are_the_papers():
    c = Config().validate()
    m, t = c.model, c.train
    assert (m.hidden, m.heads, m.expansion, m.layers, m.n, m.T, m.N_sup) == (512, 8, 4.0, 2, 6, 3, 16)
    assert (t.lr, t.weight_decay, t.ema, t.batch_size, t.beta1, t.beta2, t.puzzle_emb_lr) == \
        (1e-4, 1.0, 0.999, 768, 0.9, 0.95, 1e-2)
    assert c.effective_depth == 2 * 7 * 3 == 42


@pytest.mark.parametrize("key,value,needle", [
    ("n", "0", "model.n=0: expected 1 <= n"),
    ("T", "-1", "model.T=-1"),
    ("ema", "1.0", "train.ema=1.0: expected 0 <= ema < 1"),
    ("arch", "rnn", "model.arch='rnn': expected one of ['attention', 'mlp']"),
    ("hidden", "abc", "model.hidden='abc': expected an integer"),
    ("bf16", "maybe", "train.bf16='maybe': expected true or false"),
    ("heads", "7", "model.hidden=512: expected a multiple of model.heads=7"),
    ("nope", "1", "nope: unknown field"),
    ("model.nope", "1", "model.nope: unknown field"),
    ("optim.lr", "1", "unknown section 'optim'"),
])
def test_bad_values_name_the_field(key, value, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: value})
    assert needle in str(e.value)


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  n: 4\n  arch: mlp\ntrain:\n  lr: 3.0e-4\n")
    c = load_config(f, parse_set(["T=2", "train.ema=0"]))
    assert (c.model.n, c.model.arch, c.model.T, c.train.lr, c.train.ema) == (4, "mlp", 2, 3e-4, 0.0)
    f.write_text("modle:\n  n: 4\n")
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        load_config(f)
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set(["n4"])


def test_flat_names_round_trip():
    c = apply_overrides(Config(), {"n": 3, "lr": 2e-4, "data_path": "x"}).validate()
    flat = c.flat()
    assert flat["n"] == 3 and flat["lr"] == 2e-4 and flat["data_path"] == "x"
    assert config_from_dict(c.to_dict()) == c
