"""Messages name only flags that exist: every `--flag` written in bert_jax's string literals (errors, hints, help)
is an option of some `bert-jax` command (a message once said `--seq-len`; the flag is `--seq_len`)."""
import argparse
import ast
import importlib
import os
import re

import pytest

from bert_jax.cli import SUBCOMMANDS

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bert_jax")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
# Not argparse options: config overrides (checked against the config by configlib), absl's --noKEY, XLA's flags.
NOT_OPTIONS = re.compile(r"--(config\b|no$|xla_)")


class _Parsed(Exception):
    pass


def cli_options(monkeypatch) -> dict[str, set[str]]:
    """{command: its options}, read from the parser each command's main() builds (wherever it builds it)."""
    seen = {}

    def record(self, *args, **kwargs):
        seen[self] = {o for action in self._actions for o in action.option_strings}
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", record)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", record)
    options = {}
    for command, (module, _) in SUBCOMMANDS.items():
        seen.clear()
        with pytest.raises(_Parsed):
            importlib.import_module(module).main([])
        options[command] = set().union(*seen.values())
    return options


def flags_in_messages() -> list[tuple[str, int, str]]:
    found = []
    for directory, _, files in os.walk(PACKAGE):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found += [(os.path.relpath(path, PACKAGE), node.lineno, flag) for flag in FLAG.findall(node.value)
                              if not NOT_OPTIONS.match(flag)]
    return found


def test_every_flag_a_message_names_is_an_option_of_a_command(monkeypatch):
    options = cli_options(monkeypatch)
    assert options["make-data"] >= {"--seq_len", "--mode", "--input"} and "--max_seq_len" in options["finetune"]
    known = set().union(*options.values())
    found = flags_in_messages()
    assert len(found) > 100  # the scan sees the messages
    unknown = [f"{path}:{line}: {flag}" for path, line, flag in found if flag not in known]
    assert not unknown, unknown
