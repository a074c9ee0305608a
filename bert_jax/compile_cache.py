"""JAX's persistent compilation cache for `bert-jax finetune` and `bert-jax pretrain`.

A fine-tuning command compiles its train and eval steps (one each per bucket width) and a hundred-odd small
eager ops (parameter init, the pretrained-weight merge), most of its start-up time on a CPU; a later command
with the same model and shapes loads them from disk instead. The directory is, in order:
`$BERT_JAX_COMPILE_CACHE`; else the one JAX was already given (`JAX_COMPILATION_CACHE_DIR`); else
`$XDG_CACHE_HOME/bert_jax/xla` (`~/.cache/bert_jax/xla`). `BERT_JAX_COMPILE_CACHE=off` (or 0) turns it off.
Entries never expire: delete the directory to reclaim the space. Treat it as trusted code (JAX's warning):
do not point it at a directory others can write to.
"""
from __future__ import annotations

import os
import warnings

ENV = "BERT_JAX_COMPILE_CACHE"
OFF = ("0", "off", "false", "no", "none")
_set_by_us: str | None = None  # the directory this module put into jax's config, if any


def cache_dir(environ=None, configured: str | None = None) -> str | None:
    """The directory bert_jax asks JAX to cache in, or None when $BERT_JAX_COMPILE_CACHE turns the cache off.
    `configured`: the directory JAX's config already holds (set by the user), used when the variable is unset."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in OFF or not value.strip() else os.path.expanduser(value)
    if configured or environ.get("JAX_COMPILATION_CACHE_DIR"):
        return configured or environ["JAX_COMPILATION_CACHE_DIR"]
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bert_jax", "xla")


def enable_compile_cache(environ=None) -> str | None:
    """Point JAX's persistent cache at `cache_dir()` and cache every compile; returns the directory (None: off).

    Call before the first compile that should be cached. Safe to call again with another environment: JAX opens
    its cache once per process, so a changed directory resets it.
    """
    global _set_by_us
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    environ = os.environ if environ is None else environ
    current = jax.config.jax_compilation_cache_dir
    path = cache_dir(environ, current if current != _set_by_us else None)
    if path is None:
        if current is not None and current == _set_by_us:  # undo only our own setting, never the user's
            jax.config.update("jax_compilation_cache_dir", None)
            compilation_cache.reset_cache()
        _set_by_us = None
        return None
    if current != path:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:  # a cache is never worth failing a run for
            warnings.warn(f"compile cache {path} cannot be created ({e.strerror}); compiling uncached. Set {ENV} "
                          "to a writable directory, or to off", stacklevel=2)
            return None
        jax.config.update("jax_compilation_cache_dir", path)
        compilation_cache.reset_cache()
    _set_by_us = path
    # JAX caches only compiles over 1 s by default; on a CPU the eager ops of parameter init take 20-100 ms
    # each and add up to seconds, so everything is cached unless the user chose a threshold.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor, whatever the filesystem
    return path
