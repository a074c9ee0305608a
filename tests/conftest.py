"""Test-wide setup: 8 simulated CPU devices, set before jax is first imported."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never write to the user's XLA cache (~/.cache/bert_jax/xla); a test that wants the cache names its own.
os.environ.setdefault("BERT_JAX_COMPILE_CACHE", "off")
# The flags `bert-jax` starts XLA with: in-process runs here must compile as the CLI's subprocesses do (the
# vector width changes float rounding), or a resumed CLI run could not match an in-process one bit for bit.
from bert_jax.xla_flags import add_default_xla_flags  # noqa: E402  (imports no jax)

add_default_xla_flags()

import jax  # noqa: E402

assert jax.device_count() == 8, "conftest must run before anything imports jax"
