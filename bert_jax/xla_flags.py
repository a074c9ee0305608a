"""XLA flags that bert_jax's own processes start with (the `bert-jax` command, the benchmark harness).

Only flags measured to help are here, each with its measurement (benchmarks/NOTES.md). They are appended to
`XLA_FLAGS` before jax creates its backends; a flag the user already set keeps the user's value, and
`BERT_JAX_XLA_FLAGS=0` adds none.
"""
from __future__ import annotations

import os

# Copy insertion with region analysis: XLA:CPU otherwise copies each donated parameter before the step (its
# buffer is also the updated parameter's), 0.7 GB of traffic per base step; 2.00 -> 1.93 s per base step on
# 2 cores (NOTES.md section 18). Ignored by backends that do not read it.
DEFAULT_FLAGS = {"xla_cpu_copy_insertion_use_region_analysis": "true"}
OPT_OUT = "BERT_JAX_XLA_FLAGS"


def add_default_xla_flags(environ=None) -> list[str]:
    """Append DEFAULT_FLAGS missing from environ['XLA_FLAGS']; returns what was added."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no"):
        return []
    current = environ.get("XLA_FLAGS", "")
    present = {item.split("=", 1)[0].lstrip("-") for item in current.split()}
    added = [f"--{name}={value}" for name, value in DEFAULT_FLAGS.items() if name not in present]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
