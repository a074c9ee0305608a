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


_SHUTDOWN_SCRIPT = """
import atexit, sys
import bert_jax.cli as cli

class Unflushable:  # what a stream on a full disk, or one a native thread holds, does at shutdown
    def write(self, text):
        return len(text)
    def flush(self):
        raise OSError(28, "No space left on device")

def late():  # stands in for a library thread that finishes (and prints) during the interpreter's shutdown
    sys.stderr.write("late library traceback\\n")
    sys.stderr.flush()
    if CODE:
        sys.stderr = Unflushable()

CODE = int(sys.argv[1])
atexit.register(late)
cli.main = lambda: (print("bert-jax pretrain: the one line", file=sys.stderr), CODE)[1]
cli.run()
"""


@pytest.mark.parametrize("code", [0, 4])
def test_a_command_exits_with_its_own_code_whatever_the_shutdown_does(code):
    """A failed command ends without the interpreter's shutdown (seen under load: tensorstore's threads printing
    tracebacks after a failed save's one line, and a failed stderr flush turning exit 4 into 120). A successful
    one shuts down normally, so libraries' exit handlers still run."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _SHUTDOWN_SCRIPT, str(code)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == code, proc.stderr
    if code:
        assert proc.stderr == "bert-jax pretrain: the one line\n"
    else:
        assert proc.stderr == "bert-jax pretrain: the one line\nlate library traceback\n"


def test_a_reader_that_goes_away_gets_no_traceback():
    """`bert-jax --help | head -1`: the rest of the output has nowhere to go; the command stops quietly."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "bert_jax.cli", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the usage is written
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
