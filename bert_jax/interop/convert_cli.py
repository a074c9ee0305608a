"""`bert-jax convert`: a transformers BERT checkpoint to a bert_jax params file (bert_jax/interop/params_file.py),
or back.

    bert-jax convert --from-hf HF_DIR --to PARAMS.msgpack [--heads init|require] [--seed N] [--scan-layers]
    bert-jax convert --from PARAMS.msgpack --to-hf HF_DIR

Exit codes: 0 written; 2 bad input (a missing, damaged or foreign input, an output that exists without --force or
cannot be written), one line naming it; 4 the output could not be written (e.g. disk full), nothing partial left
under its name (files are replaced atomically).
"""
from __future__ import annotations

import argparse
import os
import sys

from bert_jax import outputs
from bert_jax.interop.hf_bert import load_hf_checkpoint, save_hf_checkpoint
from bert_jax.interop.params_file import ParamsFileError, load_params, save_params


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-jax convert",
        description="Convert a transformers BERT checkpoint to a bert_jax params file, or back.")
    parser.add_argument("--from-hf", metavar="DIR", help="transformers checkpoint directory to read")
    parser.add_argument("--to", metavar="PATH", help="bert_jax params file to write (with --from-hf)")
    parser.add_argument("--from", dest="from_path", metavar="PATH", help="bert_jax params file to read")
    parser.add_argument("--to-hf", metavar="DIR", help="transformers checkpoint directory to write (with --from)")
    parser.add_argument("--heads", choices=("init", "require"), default="init",
                        help="heads missing from the checkpoint: initialise freshly (default) or fail")
    parser.add_argument("--seed", type=int, default=0, help="seed for freshly initialised heads")
    parser.add_argument("--scan-layers", action="store_true", help="write params in the nn.scan layer layout")
    parser.add_argument("--force", action="store_true", help="overwrite existing output")
    return parser


def _from_hf(args) -> str:
    outputs.writable_file(args.to, "--to")
    if os.path.exists(args.to) and not args.force:
        raise ParamsFileError(f"--to {args.to!r} exists; pass --force to overwrite it")
    config, params = load_hf_checkpoint(args.from_hf, heads=args.heads, seed=args.seed, scan_layers=args.scan_layers)
    with outputs.write_errors_as_one_line(f"writing --to {args.to}", _KEPT):
        save_params(args.to, config, params)
    return args.to


def _to_hf(args) -> str:
    existing = [n for n in ("config.json", "model.safetensors") if os.path.exists(os.path.join(args.to_hf, n))]
    if existing and not args.force:
        raise ParamsFileError(f"--to-hf {args.to_hf!r} already holds {existing}; pass --force to overwrite")
    outputs.writable_directory(args.to_hf, "--to-hf")
    try:
        config, params = load_params(args.from_path)
    except ParamsFileError as e:
        raise ParamsFileError(f"--from {e}") from None
    with outputs.write_errors_as_one_line(f"writing --to-hf {args.to_hf}", _KEPT):
        save_hf_checkpoint(args.to_hf, config, params)
    return args.to_hf


_KEPT = "no partial file was left under its name (each file is replaced atomically)"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.from_hf) == bool(args.to_hf):
        parser.error("give exactly one direction: --from-hf DIR --to PATH, or --from PATH --to-hf DIR")
    if args.from_hf and (not args.to or args.from_path):
        parser.error("--from-hf DIR needs --to PATH (and no --from)")
    if args.to_hf and (not args.from_path or args.to):
        parser.error("--to-hf DIR needs --from PATH (and no --to)")
    try:
        written = _from_hf(args) if args.from_hf else _to_hf(args)
    except ValueError as e:  # ConversionError, ParamsFileError, OutputError, bad ModelConfig: one line, no traceback
        print(f"bert-jax convert: error: {e}", file=sys.stderr)
        return outputs.EXIT_BAD_INPUT
    except outputs.WriteError as e:
        print(f"bert-jax convert: error: {e}", file=sys.stderr)
        return outputs.EXIT_WRITE_FAILED
    except OSError as e:  # an input it could not read
        print(f"bert-jax convert: error: {e.filename}: {outputs.reason(e)}; {outputs.fix(e)}", file=sys.stderr)
        return outputs.EXIT_BAD_INPUT
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
