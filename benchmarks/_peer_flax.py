"""Peer worker for benchmarks/train_step.py: transformers 4.x FlaxBertForPreTraining, jitted step with optax.adamw.

    <flax-peer-venv>/bin/python benchmarks/_peer_flax.py INPUTS.npz SPEC_JSON

Runs in its own virtualenv (transformers<5; v5 dropped Flax), so it imports nothing from bert_jax. Same line
protocol as _peer_torch.py; the "ready" line also carries the compile time and XLA's memory analysis.
The HF Flax model computes the vocab projection at every position; the loss then keeps masked positions
(labels != -100) only, as transformers' run_mlm_flax example does, plus next-sentence cross-entropy.
"""
from __future__ import annotations

import functools
import json
import sys
import time


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


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
