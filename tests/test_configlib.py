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
