"""Load `configs/<file>.py[:arg]` and apply `--config.a.b=value` overrides.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. Overrides are
typed by the existing value (an unknown key is an error naming the key and its nearest parent).
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Iterable

import ml_collections


class ConfigError(ValueError):
    """A config spec or override the user must fix; the message says how."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass --config configs/<file>.py[:variant]")
    module_name = "bert_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg); add one returning a ConfigDict")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict, got {type(config).__name__}")
    return config


BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def sibling_config(config_file: str, name: str, variant: str | None) -> ml_collections.ConfigDict:
    """The config `name` (a file beside `config_file`) at `variant`: how derived presets (configs/albert.py, ...)
    start from configs/pretrain.py."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    return load_config_file(f"{path}:{variant or ''}")


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.strip().lower() not in BOOL_WORDS:
            raise ConfigError(f"cannot parse {text!r} as bool; use true or false")
        return BOOL_WORDS[text.strip().lower()]
    if isinstance(current, str) or current is None and not _looks_literal(text):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, (bool, int, float, tuple, list)):
            raise ConfigError(f"cannot parse {text!r} as {type(current).__name__}")
        return text
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"expected True/False, got {text!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, tuple) and not isinstance(value, tuple):
        value = (value,)
    return value


def _looks_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
        return True
    except (ValueError, SyntaxError):
        return False


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"unknown config key {where!r} (in --config.{key}); see the saved config.json for valid keys")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        parent = ".".join(parts[:-1]) or "<root>"
        choices = ", ".join(sorted(node.keys()))
        raise ConfigError(f"unknown config key {key!r}; keys under {parent}: {choices}")
    current = node[leaf]
    try:
        value = _parse_value(text, current)
        with node.ignore_type():
            node[leaf] = value
    except ConfigError as e:
        raise ConfigError(f"--config.{key}={text}: {e}") from None


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`overrides` are strings 'a.b=value' (the `--config.` prefix already stripped or not)."""
    config = load_config_file(spec)
    for item in overrides:
        item = item[len("--config."):] if item.startswith("--config.") else item
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} needs the form --config.a.b=value")
        apply_override(config, key, text)
    return config


def split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.x=y` (or `--config.x y`) overrides from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            if "=" not in arg:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value")
                arg = f"{arg}={argv[i + 1]}"
                i += 1
            overrides.append(arg[len("--config."):])
        else:
            rest.append(arg)
        i += 1
    return rest, overrides
