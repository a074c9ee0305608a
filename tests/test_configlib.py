"""Config files and `--config.a.b=value` overrides: parsing by the current value's type, one-line errors."""
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
