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
# On CPUs with AVX-512, XLA:CPU's code generator still prefers 256-bit vectors; 512-bit ones make the base step
# 1.045x faster on the 2-core AMD EPYC here (fusions: LayerNorm, GELU, dropout, AdamW; NOTES.md section 20).
# Only a preference: without AVX-512 it could not be honoured, so it is only added where the CPU has it.
AVX512_FLAGS = {"xla_cpu_prefer_vector_width": "512"}
OPT_OUT = "BERT_JAX_XLA_FLAGS"


def cpu_features() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or an empty set where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_flags(features: set[str] | None = None) -> dict[str, str]:
    features = cpu_features() if features is None else features
    return {**DEFAULT_FLAGS, **(AVX512_FLAGS if "avx512f" in features else {})}


def add_default_xla_flags(environ=None, features: set[str] | None = None) -> list[str]:
    """Append the default flags missing from environ['XLA_FLAGS']; returns what was added."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no"):
        return []
    current = environ.get("XLA_FLAGS", "")
    present = {item.split("=", 1)[0].lstrip("-") for item in current.split()}
    added = [f"--{name}={value}" for name, value in default_flags(features).items() if name not in present]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
