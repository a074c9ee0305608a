"""Peer worker for benchmarks/train_step.py: transformers 4.x FlaxBertForPreTraining, jitted step with optax.adamw.

    <flax-peer-venv>/bin/python benchmarks/_peer_flax.py INPUTS.npz SPEC_JSON

Runs in its own virtualenv (transformers<5; v5 dropped Flax), so it imports nothing from bert_jax;
`ensure_venv` (used by the harness, stdlib only) makes that venv. Same line
protocol as _peer_torch.py; the "ready" line also carries the compile time and XLA's memory analysis.
The HF Flax model computes the vocab projection at every position; the loss then keeps masked positions
(labels != -100) only, as transformers' run_mlm_flax example does, plus next-sentence cross-entropy.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def ensure_venv(path: str, default_path: str, pins: dict[str, str]) -> tuple[str | None, str]:
    """For the harness: (python of a venv at `path` that imports FlaxBertForPreTraining, '') or (None, why not).
    Made once with transformers<5 and `pins` (jax/flax/optax versions, ours); a venv at `default_path` left
    half-made by an interrupted run is rebuilt, any other path is only created when it does not exist."""
    python = os.path.join(path, "bin", "python")
    check = [python, "-c", "import jax, optax, flax; from transformers import FlaxBertForPreTraining"]

    def works() -> str:
        if not os.path.exists(python):
            return f"{python} does not exist"
        r = subprocess.run(check, capture_output=True, text=True, timeout=300)
        return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["import failed"])[-1]

    problem = works()
    if not problem:
        return python, ""
    if os.path.exists(path) and os.path.abspath(path) != os.path.abspath(default_path):
        return None, f"peer venv {path}: {problem}"
    shutil.rmtree(path, ignore_errors=True)
    print(f"creating the Flax peer venv at {path} (transformers<5, {pins}) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", path], check=True, capture_output=True, timeout=300)
        r = subprocess.run([python, "-m", "pip", "install", "-q", "transformers>=4.46,<5",
                            *(f"{name}=={version}" for name, version in pins.items())],
                           capture_output=True, text=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as e:
        return None, f"could not create the Flax peer venv at {path}: {e}"
    if r.returncode != 0:
        lines = [s for s in r.stderr.splitlines() if s.startswith("ERROR")] or r.stderr.splitlines() or ["?"]
        return None, f"pip could not install the Flax peer into {path}: {lines[-1][:300]}"
    problem = works()
    return (python, "") if not problem else (None, f"Flax peer venv {path} still fails: {problem}")


def main(inputs_path: str, spec_json: str) -> int:
    spec = json.loads(spec_json)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import transformers
    from transformers import BertConfig, FlaxBertForPreTraining

    data = np.load(inputs_path)
    batch = {k: jnp.asarray(data[k]) for k in ("input_ids", "token_type_ids", "input_mask", "position_ids",
                                               "mlm_labels", "sentence_label")}
    config = BertConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
                        num_attention_heads=spec["heads"], intermediate_size=spec["ffn"],
                        max_position_embeddings=max(512, spec["seq"]))
    model = FlaxBertForPreTraining(config, seed=int(spec["seed"]), dtype=jnp.float32)
    tx = optax.adamw(spec["lr"], b1=0.9, b2=0.999, eps=spec["eps"], weight_decay=spec["weight_decay"])
    params = model.params
    opt_state = tx.init(params)

    def loss_fn(params, batch, rng):
        out = model.module.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                                 batch["token_type_ids"], batch["position_ids"], None, deterministic=False,
                                 rngs={"dropout": rng})
        labels = batch["mlm_labels"]
        valid = (labels != -100).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(out.prediction_logits, jnp.maximum(labels, 0))
        mlm = jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)
        nsp = optax.softmax_cross_entropy_with_integer_labels(out.seq_relationship_logits,
                                                              batch["sentence_label"]).mean()
        return mlm + nsp, mlm

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, batch, rng):
        (loss, mlm), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, mlm

    rng = jax.random.PRNGKey(int(spec["seed"]))
    start = time.perf_counter()
    lowered = train_step.lower(params, opt_state, batch, rng)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    memory = None if mem is None else {k: int(getattr(mem, k)) for k in (
        "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
        "generated_code_size_in_bytes") if hasattr(mem, k)}
    emit(event="ready", framework="flax", jax=jax.__version__, transformers=transformers.__version__,
         params=int(sum(x.size for x in jax.tree.leaves(params))), lower_s=lower_s, compile_s=compile_s,
         memory=memory)

    first, step = True, 0
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        times, loss = [], float("nan")
        for _ in range(int(command[1])):
            key = jax.random.fold_in(rng, step)
            start = time.perf_counter()
            params, opt_state, loss_a, mlm_a = compiled(params, opt_state, batch, key)
            jax.block_until_ready((params, opt_state, loss_a))
            times.append(time.perf_counter() - start)
            step += 1
            loss = float(loss_a)
            if first:
                first = False
                emit(event="first", loss0=loss, mlm_loss0=float(mlm_a))
        emit(event="times", times=times, loss=loss)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
