"""The `bert-jax` command line: every flag of every subcommand says what it is for."""
import argparse
import importlib

import pytest

from bert_jax.cli import SUBCOMMANDS


class _Parsed(Exception):
    """Raised instead of parsing, carrying the parser the subcommand built."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_flag_of_every_subcommand_has_help(command, monkeypatch):
    def capture(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    module = importlib.import_module(SUBCOMMANDS[command][0])
    with pytest.raises(_Parsed) as parsed:
        module.main([])
    for parser in _parsers(parsed.value.parser):
        missing = [action.option_strings or action.dest for action in parser._actions
                   if not (action.help or "").strip()]
        assert not missing, f"bert-jax {command} ({parser.prog}): no help text for {missing}"
