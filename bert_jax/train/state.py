"""Creating the train state already sharded: abstract init -> shardings from logical names -> jit(init)."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from bert_jax.parallel.sharding import LOGICAL_RULES, mesh_shardings, replicated
from bert_jax.train.step import TrainState


def example_batch(global_batch_size: int, seq_len: int, max_predictions: int) -> dict[str, np.ndarray]:
    """A batch of the contract's shapes and dtypes, for tracing init (values do not matter)."""
    b, l, p = global_batch_size, seq_len, max(max_predictions, 1)
    return {"input_ids": np.zeros((b, l), np.int32), "token_type_ids": np.zeros((b, l), np.int32),
            "input_mask": np.ones((b, l), np.int32), "position_ids": np.tile(np.arange(l, dtype=np.int32), (b, 1)),
            "masked_positions": np.zeros((b, p), np.int32), "masked_ids": np.zeros((b, p), np.int32),
            "masked_weights": np.zeros((b, p), np.float32), "sentence_label": np.zeros((b,), np.int32),
            "span_left": np.zeros((b, p), np.int32), "span_right": np.zeros((b, p), np.int32),
            "span_offset": np.zeros((b, p), np.int32)}


def _dict_path(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def opt_state_shardings(abstract_opt_state: Any, param_shardings: Any, replicated: Any) -> Any:
    """Optimiser moments mirror the params: give each leaf whose dict path is a param's path that param's
    sharding; everything else (counts, scalars) is replicated."""
    by_path = {_dict_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

    def pick(path, leaf):
        return by_path.get(_dict_path(path), replicated) if len(leaf.shape) else replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def make_init_fn(model: nn.Module, optimizer: optax.GradientTransformation, batch: Mapping[str, np.ndarray]):
    def init(rng: jax.Array) -> TrainState:
        params_rng, state_rng = jax.random.split(rng)
        params = nn.unbox(model.init({"params": params_rng, "dropout": params_rng}, batch)["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          rng=state_rng)

    return init


def state_shardings(model: nn.Module, optimizer: optax.GradientTransformation, batch, mesh: Mesh,
                    rules=LOGICAL_RULES) -> tuple[TrainState, TrainState]:
    """(abstract state, shardings) for a state laid out on `mesh` by the logical rules."""
    rng = jax.random.PRNGKey(0)
    boxed = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, batch)["params"], rng)
    param_shardings = mesh_shardings(boxed, mesh, rules)
    abstract = jax.eval_shape(make_init_fn(model, optimizer, batch), rng)
    whole = replicated(mesh)
    shardings = TrainState(step=whole, params=param_shardings,
                           opt_state=opt_state_shardings(abstract.opt_state, param_shardings, whole),
                           rng=whole)
    return abstract, shardings


def create_sharded_state(model, optimizer, batch, mesh: Mesh, seed: int, rules=LOGICAL_RULES):
    """The train state created directly in its shards (never whole on one device)."""
    abstract, shardings = state_shardings(model, optimizer, batch, mesh, rules)
    init = jax.jit(make_init_fn(model, optimizer, batch), out_shardings=shardings)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = init(jax.random.PRNGKey(seed))
    return state, abstract, shardings
