"""Logical axis names on parameters, and the rules that place them on an 8-device mesh."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec as P

from bert_jax.model import BertForPreTraining, SpeedConfig, preset
from bert_jax.parallel.sharding import LOGICAL_RULES, batch_sharding, make_mesh, mesh_shardings

CFG = preset("tiny", vocab_size=256, hidden_size=64, num_heads=4, intermediate_size=128, max_position_embeddings=32)


def abstract_init(cfg, speed=SpeedConfig()):
    ids = jnp.zeros((8, 16), jnp.int32)
    return jax.eval_shape(BertForPreTraining(cfg, speed).init, jax.random.key(0), ids)


def test_every_param_has_logical_names_the_rules_know():
    known = {name for name, _ in LOGICAL_RULES}
    flat = flatten_dict(nn.get_partition_spec(abstract_init(CFG))["params"])
    for path, spec in flat.items():
        assert isinstance(spec, P) and len(spec) > 0, path
        assert set(spec) <= known, (path, spec)
    expect = {
        ("encoder", "embeddings", "token", "embedding"): P("vocab", "embed"),
        ("encoder", "layer_0", "attention", "qkv", "kernel"): P("embed", "qkv", "heads", "kv"),
        ("encoder", "layer_0", "attention", "out", "kernel"): P("heads", "kv", "embed"),
        ("encoder", "layer_0", "mlp", "wi", "kernel"): P("embed", "mlp"),
        ("encoder", "layer_0", "mlp", "wo", "kernel"): P("mlp", "embed"),
        ("encoder", "layer_0", "attention_norm", "scale"): P("embed"),
        ("mlm_head", "bias"): P("vocab"),
    }
    for path, spec in expect.items():
        assert flat[path] == spec, (path, flat[path])


@pytest.mark.parametrize("spec, mode", [("mlm+nsp", None), ("mlm+sop", None), ("ltr", None), ("mlm+sbo", "span"),
                                        ("electra", None), ("corrupted", None), ("plm", None),
                                        ("span_corruption", None)])
def test_every_objective_head_param_has_logical_names_the_rules_know(spec, mode):
    """The heads objectives create (and ELECTRA's generator) shard by the same rules as the encoder."""
    from bert_jax.data.masking import MaskingConfig, example_fields
    from bert_jax.model.pretraining import PretrainModel
    from bert_jax.objectives import ObjectiveSet
    from bert_jax.train.state import example_batch

    known = {name for name, _ in LOGICAL_RULES}
    objectives = ObjectiveSet.parse(spec)
    batch = {k: jnp.asarray(v) for k, v in example_batch(8, 16, 3).items()}
    if objectives.masking == "span":
        batch.update(span_left=jnp.zeros((8, 3), jnp.int32), span_right=jnp.ones((8, 3), jnp.int32),
                     span_offset=jnp.zeros((8, 3), jnp.int32))
    masking = MaskingConfig(kind=objectives.masking, **objectives.masking_options)
    batch.update({k: jnp.asarray(v) for k, v in example_fields(masking, 8, 16).items()})
    model = PretrainModel(CFG.replace(causal=objectives.causal), objectives)
    abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, batch))
    flat = flatten_dict(nn.get_partition_spec(abstract)["params"])
    heads = {path: spec for path, spec in flat.items() if path[0] != "encoder"}
    assert heads, f"{spec}: no head params"
    for path, axes in heads.items():
        assert isinstance(axes, P) and len(axes) > 0, (path, axes)
        assert set(axes) <= known, (path, axes)


def test_scanned_layers_carry_a_layers_axis():
    flat = flatten_dict(nn.get_partition_spec(abstract_init(CFG, SpeedConfig(scan_layers=True)))["params"])
    assert flat[("encoder", "layers", "layer", "attention", "qkv", "kernel")] == P(
        "layers", "embed", "qkv", "heads", "kv")


def test_mesh_placement_and_sharded_forward_equals_single_device():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    abstract = abstract_init(CFG)
    shardings = mesh_shardings(abstract, mesh)
    flat = flatten_dict(shardings["params"])
    assert flat[("encoder", "layer_0", "attention", "qkv", "kernel")].spec == P("fsdp", None, "tensor", None)
    assert flat[("encoder", "embeddings", "token", "embedding")].spec == P("tensor", "fsdp")
    model = BertForPreTraining(CFG)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 256, (8, 16)), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), ids))
    single = model.apply(params, ids)

    @jax.jit
    def forward(p, x):
        with nn.logical_axis_rules(LOGICAL_RULES):
            return model.apply(p, x).mlm_logits

    with jax.set_mesh(mesh):
        init_sharded = jax.jit(lambda k: nn.unbox(model.init(k, ids)), out_shardings=nn.unbox(shardings))
        sharded_params = init_sharded(jax.random.key(0))
        leaf = sharded_params["params"]["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]
        assert leaf.sharding.spec == P("fsdp", "tensor") and len(leaf.addressable_shards) == 8
        out = forward(sharded_params, jax.device_put(ids, batch_sharding(mesh)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(single.mlm_logits), atol=1e-5)


def test_mesh_errors_name_the_fix():
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh({"data": 3, "fsdp": 2, "tensor": 2})
    assert make_mesh({"data": -1, "tensor": 2}).shape["data"] == 4
