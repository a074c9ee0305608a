"""`--config configs/<file>.py[:arg] --config.a.b=value`, read by `ml_collections.config_flags`.

config_flags loads the file (its `get_config(arg)`) and applies the overrides, each parsed by the type of the value
it replaces. What it lacks, added here: errors of one line naming the input as typed (it reports an unknown key
by its last part in a two-line KeyError, and a failing `get_config` as a traceback inside the flag error), the
words yes/no for booleans, and a hint where a key of older configs went.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable

import ml_collections
from absl import flags
from ml_collections import config_flags

from bert_jax.model.config import SpeedConfig

FLAG = "config"
BOOL_WORDS = {"yes": "true", "no": "false"}  # absl's own bool words are true/false, t/f and 1/0
# Keys older configs had, and what replaced them (their config.json files still load; see ModelConfig.from_dict).
MOVED_KEYS = {
    "model.preset": "sizes come from the variant (configs/pretrain.py:large) or model.num_layers, hidden_size, "
                    "num_heads and intermediate_size",
    "optimizer.total_steps": "the schedule's length is train.steps",
    "model.dropout_bits": "16-bit draws were superseded by speed.dropout_rng=fused",
    **{f"model.{f.name}": f"it is speed.{f.name} now" for f in dataclasses.fields(SpeedConfig)},
}


class ConfigError(ValueError):
    """A config spec or override the user must fix; the message says how."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict of `path[:arg]` (`get_config(arg)`; no arg: `get_config()`)."""
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass --config configs/<file>.py[:variant]")
    # The flag's name names the module config_flags loads the file as: one per file, or configs/albert.py's
    # loading of configs/pretrain.py would run it inside albert's module.
    name = "bert_jax_" + "".join(ch if ch.isalnum() else "_" for ch in os.path.splitext(os.path.basename(path))[0])
    argv = ["bert-jax", f"--{name}={spec}"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(name, flag_values=flag_values, sys_argv=argv, lock_config=False)
    try:
        flag_values(argv)
    except flags.Error as e:
        raise ConfigError(f"--config {spec}: {_cause(e)}") from None
    config = flag_values[name].value
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict, got {type(config).__name__}")
    return config


def sibling_config(config_file: str, name: str, variant: str | None) -> ml_collections.ConfigDict:
    """The config `name` (a file beside `config_file`) at `variant`: how derived presets (configs/albert.py, ...)
    start from configs/pretrain.py."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    return load_config_file(f"{path}:{variant or ''}")


def objective_options(spec: str) -> ml_collections.ConfigDict:
    """The options of the objectives in `spec` ('electra', 'mlm+0.5*sop') at their defaults, `Objective.options`,
    which is where they are written: a config sets only what it changes, and every option can be overridden as
    --config.objective_options.NAME.KEY."""
    from bert_jax.objectives.base import get_objective  # the objectives import jax; plain configs need not

    objectives = [get_objective(term.rpartition("*")[2]) for term in spec.replace(" ", "").split("+")]
    return ml_collections.ConfigDict({o.name: dict(o.options) for o in objectives if o.options})


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`spec` is path[:arg]; `overrides` are '--config.a.b=value' or 'a.b=value' (or, as typed on a command
    line, '--config.a.b' followed by the value)."""
    config = load_config_file(spec)
    _add_options_of_overridden_objectives(config, list(overrides))
    argv = ["bert-jax", *_as_flags(config, list(overrides))]
    flag_values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict(FLAG, config, flag_values=flag_values, sys_argv=argv, lock_config=False)
        rest = flag_values(argv, known_only=True)
    except flags.Error as e:
        raise ConfigError(" ".join(str(e).split())) from None
    if rest[1:]:
        raise ConfigError(f"unexpected argument(s) {rest[1:]}; config overrides look like --config.a.b=value")
    return config


def _add_options_of_overridden_objectives(config: ml_collections.ConfigDict, items: list[str]) -> None:
    """An `objectives=SPEC` override brings SPEC's objectives' default options into `objective_options` (the config
    file filled them in for its own objectives only), so that `objective_options.NAME.KEY=...` of a newly named
    objective (e.g. objectives=distill with objective_options.distill.teacher=DIR) is a known key."""
    if "objective_options" not in config:
        return
    for item in items:
        key, given, value = item.removeprefix(f"--{FLAG}.").partition("=")
        if key == "objectives" and given and value:
            for name, options in objective_options(value).items():
                if name not in config.objective_options:
                    config.objective_options[name] = options


def _as_flags(config: ml_collections.ConfigDict, items: list[str]) -> list[str]:
    """Each override as '--config.KEY=VALUE' with KEY checked against `config` (so an unknown key is named as
    typed), and a bool's yes/no as absl's true/false."""
    prefix = f"--{FLAG}."
    out, i = [], 0
    while i < len(items):
        item = items[i]
        if not item.startswith("-") and "=" in item:
            item = prefix + item
        elif item.startswith(f"--no{FLAG}.") and "=" not in item:  # absl's --noKEY for a false bool
            item = f"{prefix}{item[len(f'--no{FLAG}.'):]}=false"
        if not item.startswith(prefix):
            out.append(item)  # not an override: absl leaves it over and load_config reports it
            i += 1
            continue
        key, given, text = item[len(prefix):].partition("=")
        parent, leaf = _check_key(config, key)
        is_bool = parent.get_type(leaf) is bool
        if not given:
            if i + 1 < len(items) and not items[i + 1].startswith("--"):
                text, i = items[i + 1], i + 1
            elif is_bool:
                text = "true"  # absl's --KEY for a true bool
            else:
                raise ConfigError(f"{item} needs a value: {item}=VALUE")
            item = f"{prefix}{key}={text}"
        if is_bool:
            word = BOOL_WORDS.get(text.strip().lower(), text)
            if word.strip().lower() not in ("true", "false", "t", "f", "1", "0"):
                raise ConfigError(f"{item}: cannot parse {text!r} as bool; use true or false")
            item = f"{prefix}{key}={word}"
        out.append(item)
        i += 1
    return out


def _check_key(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    """(the ConfigDict holding KEY's field, the field's name); an error naming KEY as typed and the valid keys beside
    it when KEY names no field of `config`."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            if i == len(parts) - 1:
                return node, part
            node = node[part]
            continue
        moved = MOVED_KEYS.get(key) or MOVED_KEYS.get(where)
        if moved:
            raise ConfigError(f"config key {key!r} is gone: {moved}")
        if i == len(parts) - 1 and isinstance(node, ml_collections.ConfigDict):
            parent = ".".join(parts[:-1]) or "<root>"
            raise ConfigError(f"unknown config key {key!r}; keys under {parent}: {', '.join(sorted(node))}")
        raise ConfigError(f"unknown config key {where!r} (in --{FLAG}.{key}); see the saved config.json for valid keys")


def _cause(error: BaseException) -> str:
    """What went wrong in the config file, as one line: config_flags wraps get_config's exception in a traceback
    dump, and absl that in a flag error."""
    while error.__context__ is not None and (isinstance(error, flags.Error)
                                             or str(error).startswith("Error whilst parsing config file")):
        error = error.__context__
    return " ".join(str(error).split())
