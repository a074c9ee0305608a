"""Config files and `--config.a.b=value` overrides: parsing by the current value's type, one-line errors."""
import dataclasses
import os

import pytest

from bert_jax import configlib

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "pretrain.py")


@pytest.mark.parametrize("text,value", [("false", False), ("False", False), ("true", True), ("TRUE", True),
                                        ("0", False), ("1", True), ("no", False), ("yes", True)])
def test_bool_overrides_accept_common_spellings(text, value):
    c = configlib.load_config(CONFIG + ":tiny", [f"--config.train.progress_bar={text}"])
    assert c.train.progress_bar is value


@pytest.mark.parametrize("override,message", [
    ("--config.train.progress_bar=maybe", "true or false"),
    ("--config.train.steps=many", "int"),
    ("--config.train.stepz=3", "stepz"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(configlib.ConfigError, match=message):
        configlib.load_config(CONFIG + ":tiny", [override])


def test_types_follow_the_default():
    c = configlib.load_config(CONFIG + ":tiny", ["--config.optimizer.learning_rate=1", "--config.train.steps=7",
                                                 "--config.objectives=mlm"])
    assert c.optimizer.learning_rate == 1.0 and isinstance(c.optimizer.learning_rate, float)
    assert c.train.steps == 7 and c.objectives == "mlm"


def test_default_xla_flags_are_added_once_and_never_override_the_user():
    from bert_jax.xla_flags import DEFAULT_FLAGS, add_default_xla_flags

    (name, value), = DEFAULT_FLAGS.items()
    plain = set()  # a CPU without AVX-512
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert add_default_xla_flags(env, plain) == [f"--{name}={value}"]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 --{name}={value}"
    assert add_default_xla_flags(env, plain) == [] and env["XLA_FLAGS"].count(name) == 1
    user = {"XLA_FLAGS": f"--{name}=false"}
    assert add_default_xla_flags(user, plain) == [] and user["XLA_FLAGS"] == f"--{name}=false"
    empty = {}
    add_default_xla_flags(empty, plain)
    assert empty["XLA_FLAGS"] == f"--{name}={value}"
    avx512 = {}
    assert add_default_xla_flags(avx512, {"avx2", "avx512f"}) == [f"--{name}={value}",
                                                                  "--xla_cpu_prefer_vector_width=512"]
    mine = {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=256"}
    assert add_default_xla_flags(mine, {"avx512f"}) == [f"--{name}={value}"]
    assert "--xla_cpu_prefer_vector_width=256" in mine["XLA_FLAGS"] and "=512" not in mine["XLA_FLAGS"]
    opted_out = {"BERT_JAX_XLA_FLAGS": "0"}
    assert add_default_xla_flags(opted_out) == [] and "XLA_FLAGS" not in opted_out


# ------------------------------------------------------------------------------------ one source of truth


def _pretrain_main(tmp_path, *overrides):
    from bert_jax.train import pretrain

    return pretrain.main(["--config", CONFIG + ":tiny", "--workdir", str(tmp_path), *overrides])


def test_preset_is_gone_the_variant_sizes_the_model(tmp_path, capsys):
    from bert_jax.model.config import PRESETS, ModelConfig

    assert _pretrain_main(tmp_path, "--config.model.preset=large") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'model.preset'" in err and "configs/pretrain.py:large" in err, err
    assert not os.listdir(tmp_path)
    large = ModelConfig.from_dict({**configlib.load_config(CONFIG + ":large").model.to_dict(), "vocab_size": 100})
    assert {k: getattr(large, k) for k in PRESETS["large"]} == PRESETS["large"]
    tiny = configlib.load_config(CONFIG + ":tiny", ["--config.model.num_layers=3"]).model
    assert "preset" not in tiny and (tiny.num_layers, tiny.hidden_size) == (3, 128)


def test_variants_are_named_settings_that_the_config_uses():
    import importlib.util

    from bert_jax.model.config import PRESETS

    spec = importlib.util.spec_from_file_location("pretrain_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = set(module.VARIANTS["tiny"])
    for variant, v in module.VARIANTS.items():
        assert isinstance(v, dict) and set(v) == names, variant
        c = configlib.load_config(f"{CONFIG}:{variant}")
        assert (c.train.global_batch_size, c.train.steps, c.data.seq_len, c.data.max_predictions) == (
            v["global_batch_size"], v["steps"], v["seq_len"], v["max_predictions"])
        assert (c.optimizer.learning_rate, c.optimizer.warmup_steps) == (v["learning_rate"], v["warmup_steps"])
        assert all(c.model[k] == size for k, size in PRESETS[v["model_size"]].items())


def test_total_steps_is_train_steps(tmp_path, capsys):
    from bert_jax.train.run_setup import optimizer_config

    c = configlib.load_config(CONFIG + ":tiny", ["--config.train.steps=25"])
    assert "total_steps" not in c.optimizer
    opt = optimizer_config(c)
    assert opt.total_steps == 25 and opt.warmup_steps == 25  # the variant's 40-step warm-up, cut to the run
    assert optimizer_config(configlib.load_config(CONFIG + ":tiny")).total_steps == 400
    with pytest.raises(configlib.ConfigError, match="'optimizer.total_steps' is gone.*train.steps"):
        configlib.load_config(CONFIG + ":tiny", ["--config.optimizer.total_steps=5"])
    assert _pretrain_main(tmp_path, "--config.train.steps=-5") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.steps=-5" in err and "total_steps" not in err, err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("override, needles", [
    ("--config.optimizer.warmup_steps=-1", ["optimizer.warmup_steps=-1", "(train.steps)"]),
    ("--config.data.seq_len=4", ["data.seq_len=4", "--config.data.seq_len=8"]),
    ("--config.data.seq_len=1024", ["data.seq_len=1024", "model.max_position_embeddings=512",
                                    "--config.model.max_position_embeddings"]),
    ("--config.data.mode=bogus", ["data.mode='bogus'", "--config.data.mode"]),
    ("--config.data.mode=single", ["data.mode='single'", "'mlm+nsp'", "segment-pair"]),
    ("--config.data.builtin_vocab_size=3", ["data.builtin_vocab_size=3", "--config.data.builtin_vocab_size"]),
    ("--config.data.mask_rate=2", ["data.mask_rate=2"]),
    ("--config.data.max_predictions=-1", ["data.max_predictions=-1"]),
    ("--config.data.max_predictions=5", ["data.max_predictions=5", "data.mask_rate"]),
    ("--config.model.dropout_rate=1", ["model.dropout_rate=1"]),
    ("--config.train.global_batch_size=0", ["train.global_batch_size=0"]),
    ("--config.train.log_every=0", ["train.log_every=0"]),
    ("--config.train.on_nonfinite=skp", ["train.on_nonfinite='skp'", "stop or skip"]),
])
def test_errors_name_the_config_key_as_typed_before_any_data_is_made(override, needles, tmp_path, capsys):
    """Not make-data's flags (--seq_len, --mode), nor keys the user cannot type (optimizer.total_steps)."""
    assert _pretrain_main(tmp_path, "--config.train.steps=1", override) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    assert "total_steps" not in err and "--seq_len" not in err and "--mode" not in err, err
    assert not os.path.exists(tmp_path / "data")  # the built-in corpus was not generated


@pytest.mark.parametrize("name, key", [("electra", "rtd_weight"), ("distill", "temperature")])
def test_objective_options_are_the_objectives_own_defaults(name, key):
    from bert_jax.objectives.base import get_objective

    defaults = dict(get_objective(name).options)
    path = os.path.join(os.path.dirname(CONFIG), f"{name}.py")
    assert configlib.load_config(path + ":tiny").objective_options.to_dict() == {name: defaults}
    with open(path) as f:
        code = f.read().split('"""')[-1]  # after the docstring
    assert not [option for option in defaults if option in code]  # the config restates none of them
    changed = configlib.load_config(path + ":tiny", [f"--config.objective_options.{name}.{key}=7"])
    assert changed.objective_options[name].to_dict() == {**defaults, key: 7.0}


def test_speed_knobs_have_their_own_section():
    from bert_jax.model.config import ModelConfig, SpeedConfig

    speed_fields = {f.name for f in dataclasses.fields(SpeedConfig)}
    assert not speed_fields & {f.name for f in dataclasses.fields(ModelConfig)}
    plain = configlib.load_config(CONFIG + ":tiny")
    fast = configlib.load_config(CONFIG + ":tiny", ["--config.speed.scan_layers=true", "--config.speed.dropout_rng=jax",
                                                    "--config.speed.remat_policy=full"])
    assert set(fast.speed) == speed_fields and "dropout_bits" not in fast.speed
    assert fast.model.to_dict() == plain.model.to_dict()
    assert SpeedConfig.from_dict(fast.speed.to_dict()) == SpeedConfig(scan_layers=True, dropout_rng="jax",
                                                                      remat_policy="full")
    with pytest.raises(configlib.ConfigError, match="'model.scan_layers' is gone: it is speed.scan_layers"):
        configlib.load_config(CONFIG + ":tiny", ["--config.model.scan_layers=true"])


# What configs wrote to config.json before the speed section: a preset, dropout_bits and the speed knobs under model.
OLD_MODEL = {"preset": "tiny", "vocab_size": 99, "hidden_size": 128, "num_layers": 2, "num_heads": 2,
             "intermediate_size": 512, "max_position_embeddings": 512, "type_vocab_size": 2, "embedding_size": None,
             "share_layers": False, "position_embedding": "learned", "relative_buckets": 32,
             "relative_max_distance": 128, "rotary_base": 10000.0, "activation": "gelu", "norm": "post",
             "layer_norm_eps": 1e-12, "dropout_rate": 0.1, "attention_dropout_rate": 0.1, "dropout_bits": 32,
             "dropout_rng": "fused", "attention_dropout_broadcast": False, "initializer_range": 0.02, "causal": False,
             "dtype": "float32", "param_dtype": "float32", "remat_policy": "dots", "sparse_final_layer": True,
             "scan_layers": True, "attention_impl": "xla", "pad_token_id": 0}


def test_an_old_config_json_still_loads(tmp_path):
    import json

    from bert_jax.finetune.init import load_init
    from bert_jax.model.config import ModelConfig, preset
    from bert_jax.weights import model_config_from_saved

    want = preset("tiny", vocab_size=99)
    assert ModelConfig.from_dict(OLD_MODEL) == want
    assert model_config_from_saved({"model": OLD_MODEL, "objectives": "mlm+nsp"}) == want
    (tmp_path / "config.json").write_text(json.dumps({"model": OLD_MODEL, "objectives": "mlm+nsp",
                                                      "optimizer": {"total_steps": 10}}))
    init = load_init(f"random:{tmp_path}")  # a workdir's config.json, read for its architecture
    assert init.config == want and "layer_0" in init.params["encoder"]


def test_an_old_scanned_checkpoint_still_loads(tmp_path):
    """A checkpoint trained with the old model.scan_layers=True: finetune --init, the distillation teacher and export
    read it (the layout from its params, the model from its config.json) as the per-layer model it is."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bert_jax.finetune.init import load_init
    from bert_jax.interop import load_params
    from bert_jax.model import BertForPreTraining, SpeedConfig, preset
    from bert_jax.model.params import unbox
    from bert_jax.objectives.distill import read_teacher
    from bert_jax.train import checkpoint as ckpt
    from bert_jax.train import export

    cfg = preset("tiny", vocab_size=99)
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 99, (2, 8)), jnp.int32)
    scanned_model = BertForPreTraining(cfg, SpeedConfig(scan_layers=True))
    params = unbox(scanned_model.init(jax.random.key(0), ids))["params"]
    manager = ckpt.open_manager(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save_checkpoint(manager, 3, state={"params": params, "step": np.int32(3)}, data_iter={},
                         config={"model": OLD_MODEL, "objectives": "mlm+nsp"}, manifest={})
    ckpt.wait_for_saves(manager)
    want = scanned_model.apply({"params": params}, ids).mlm_logits

    init = load_init(str(tmp_path))
    assert init.config == cfg and "layer_1" in init.params["encoder"]
    got = BertForPreTraining(init.config).apply({"params": init.params}, ids).mlm_logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    teacher_cfg, teacher = read_teacher(str(tmp_path))
    assert teacher_cfg == cfg.replace(dropout_rate=0.0, attention_dropout_rate=0.0) and "layer_1" in teacher["encoder"]
    assert export.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "params.msgpack")]) == 0
    config, exported = load_params(str(tmp_path / "params.msgpack"))
    assert config == cfg and "layer_1" in exported["encoder"]


def test_max_predictions_follows_the_mask_rate_and_a_lower_cap_is_refused():
    """A mask_rate override alone changes how many positions are predicted (the variants derive the cap);
    an explicit cap below the rate is an error naming both keys, never a silently lower rate."""
    from bert_jax.objectives.base import ObjectiveSet
    from bert_jax.train.run_setup import masking_config
    from bert_jax.data.masking import num_predictions

    objectives = ObjectiveSet.parse("mlm+nsp")
    c = configlib.load_config(f"{CONFIG}:mini")
    assert num_predictions(masking_config(c, objectives), c.data.seq_len) == 20  # BERT's 20 at 0.15 x 128
    c.data.mask_rate = 0.3
    assert num_predictions(masking_config(c, objectives), c.data.seq_len) == 39
    c.data.max_predictions = 20
    with pytest.raises(ValueError, match=r"data.max_predictions=20 caps data.mask_rate=0.3 below its 39"):
        masking_config(c, objectives)
    c.data.max_predictions = 40
    assert num_predictions(masking_config(c, objectives), c.data.seq_len) == 40
