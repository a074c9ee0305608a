"""Parity and round trips between transformers' PyTorch BERT and bert_jax (CPU, random weights, no downloads)."""
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from bert_jax import cli  # noqa: E402
from bert_jax.interop import (ConversionError, config_from_hf, convert_hf_state_dict,  # noqa: E402
                              hf_config_from_model, hf_state_dict, load_hf_checkpoint, load_params,
                              read_hf_checkpoint, save_hf_checkpoint, save_params)
from bert_jax.interop.params_file import expected_param_shapes, host_params  # noqa: E402
from bert_jax.model import BertForPreTraining, ModelConfig, SpeedConfig, preset  # noqa: E402
from bert_jax.model.params import is_scanned  # noqa: E402

SHAPES = {
    "L3_H96_A3": dict(vocab_size=1000, hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                      intermediate_size=384, max_position_embeddings=64),
    "L2_H64_A4_I100": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=100, max_position_embeddings=40, type_vocab_size=3, layer_norm_eps=1e-7),
}
TINY = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            max_position_embeddings=32)
ATOL = 1e-4


def _hf_model(cls, shape: dict, seed: int = 0):
    """A transformers model with every weight random (LayerNorm scales around 1), so no slot hides as 0/1."""
    torch.manual_seed(seed)
    model = cls(transformers.BertConfig(**shape)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
    return model


def _batch(shape: dict, seed: int = 0, batch: int = 3, length: int = 16) -> dict:
    rng = np.random.RandomState(seed)
    mask = (np.arange(length)[None, :] < np.array([length, 11, 5])[:batch, None]).astype(np.int64)
    ids = rng.randint(1, shape["vocab_size"], (batch, length)) * mask
    types = rng.randint(0, shape.get("type_vocab_size", 2), (batch, length)) * mask
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def _torch_outputs(model, batch):
    with torch.no_grad():
        return model(**{k: torch.tensor(v) for k, v in batch.items()})


def _ours(config: ModelConfig, params, batch):
    @jax.jit
    def apply(p, ids, types, mask):
        speed = SpeedConfig(scan_layers=is_scanned(p))
        out = BertForPreTraining(config, speed).apply({"params": p}, ids, types, mask)  # masked_positions=None: all
        return out.mlm_logits, out.sentence_logits, out.sequence

    outputs = apply(params, *(jnp.asarray(batch[k]) for k in ("input_ids", "token_type_ids", "attention_mask")))
    return tuple(np.asarray(x) for x in outputs)


def _save_bin(model, directory):
    """The pre-safetensors layout: torch.save of the full state dict, tied aliases and position_ids included."""
    directory.mkdir()
    state = model.state_dict()
    state["bert.embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings)[None]
    torch.save(state, directory / "pytorch_model.bin")
    model.config.to_json_file(directory / "config.json")
    return directory


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def hf_case(request, tmp_path_factory):
    shape = SHAPES[request.param]
    model = _hf_model(transformers.BertForPreTraining, shape)
    root = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(root / "safetensors")
    out = _torch_outputs(model, _batch(shape))
    dirs = {"safetensors": root / "safetensors", "bin": _save_bin(model, root / "bin")}
    return dict(shape=shape, model=model, dirs=dirs, mlm=out.prediction_logits.numpy(),
                nsp=out.seq_relationship_logits.numpy())


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_logits_match_transformers(hf_case, fmt, scan):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete checkpoint converts without any head being initialised
        config, params = load_hf_checkpoint(str(hf_case["dirs"][fmt]), heads="require", scan_layers=scan)
    assert is_scanned(params) == scan and config.intermediate_size == hf_case["shape"]["intermediate_size"]
    mlm, nsp, _ = _ours(config, params, _batch(hf_case["shape"]))
    assert mlm.shape == hf_case["mlm"].shape  # every position, padding included
    np.testing.assert_allclose(mlm, hf_case["mlm"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(nsp, hf_case["nsp"], rtol=0, atol=ATOL)


def test_hf_to_bert_jax_to_hf_state_is_identical(hf_case):
    config, params = load_hf_checkpoint(str(hf_case["dirs"]["safetensors"]), scan_layers=True)
    original = load_file(str(hf_case["dirs"]["safetensors"] / "model.safetensors"))
    exported = hf_state_dict(config, params)
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def _our_random_params(config: ModelConfig, seed: int = 0, scan: bool = False):
    """Our init with every leaf perturbed (biases and LayerNorm would otherwise be exactly 0 and 1)."""
    model = BertForPreTraining(config, SpeedConfig(scan_layers=scan))
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
    leaves, tree = jax.tree_util.tree_flatten(host_params(variables))
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_unflatten(tree, [x + rng.normal(0, 0.1, x.shape).astype(np.float32) for x in leaves])


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_export_loads_in_transformers_with_same_logits(tmp_path, scan):
    shape = SHAPES["L2_H64_A4_I100"]
    config = config_from_hf(shape)
    params = _our_random_params(config, scan=scan)
    save_hf_checkpoint(str(tmp_path), config, params)
    model, info = transformers.BertForPreTraining.from_pretrained(str(tmp_path), output_loading_info=True)
    assert all(not v for v in info.values()), info  # no missing/unexpected/mismatched keys, no errors
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    batch = _batch(shape, seed=1)
    out = _torch_outputs(model.eval(), batch)
    mlm, nsp, _ = _ours(config, params, batch)
    np.testing.assert_allclose(mlm, out.prediction_logits.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(nsp, out.seq_relationship_logits.numpy(), rtol=0, atol=ATOL)
    reloaded_config, reloaded = load_hf_checkpoint(str(tmp_path), heads="require", scan_layers=scan)
    assert reloaded_config == config
    want, got = _flat(params), _flat(reloaded)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _state(hf_case):
    return read_hf_checkpoint(str(hf_case["dirs"]["bin"]))


def test_unexpected_and_missing_keys_are_named(hf_case):
    hf_config, state = _state(hf_case)
    config = config_from_hf(hf_config)
    extra = {**state, "bert.encoder.layer.0.attention.self.rotary.weight": np.zeros(3, np.float32)}
    with pytest.raises(ConversionError, match=r"unexpected key\(s\) bert\.encoder\.layer\.0\.attention\.self\.rotary"):
        convert_hf_state_dict(extra, config)
    damaged = {k: v for k, v in state.items() if k != "bert.encoder.layer.1.output.dense.bias"}
    with pytest.raises(ConversionError, match=r"missing key\(s\) bert\.encoder\.layer\.1\.output\.dense\.bias"):
        convert_hf_state_dict(damaged, config)
    partial_head = {k: v for k, v in state.items() if k != "cls.seq_relationship.bias"}
    with pytest.raises(ConversionError, match=r"cls\.seq_relationship\.bias"):
        convert_hf_state_dict(partial_head, config)  # a head with some keys gone is damage, never re-initialised
    a_layer_too_many = {**state, **{k.replace("layer.1.", "layer.9."): v for k, v in state.items() if "layer.1." in k}}
    with pytest.raises(ConversionError, match=r"bert\.encoder\.layer\.9\."):
        convert_hf_state_dict(a_layer_too_many, config)
    untied = {**state, "cls.predictions.decoder.weight": state["cls.predictions.decoder.weight"] + 1}
    with pytest.raises(ConversionError, match="cls.predictions.decoder.weight"):
        convert_hf_state_dict(untied, config)
    wrong_shape = {**state, "bert.pooler.dense.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(ConversionError, match="bert.pooler.dense.weight"):
        convert_hf_state_dict(wrong_shape, config)


def test_unexpected_key_in_a_checkpoint_file_is_named(hf_case, tmp_path):
    hf_config, state = _state(hf_case)
    save_file({**state, "bert.embeddings.extra_table": np.ones(4, np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ConversionError, match="bert.embeddings.extra_table"):
        load_hf_checkpoint(str(tmp_path))


def test_masked_lm_checkpoint_gets_fresh_pooler_and_nsp(tmp_path):
    model = _hf_model(transformers.BertForMaskedLM, TINY, seed=3)
    model.save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match=r"nsp, pooler head\(s\).*bert\.pooler\.dense\.weight"):
        load_hf_checkpoint(str(tmp_path), heads="require")
    with pytest.warns(UserWarning, match="nsp, pooler"):
        config, params = load_hf_checkpoint(str(tmp_path), heads="init")
    batch = _batch(TINY, seed=2)
    mlm, _, _ = _ours(config, params, batch)
    np.testing.assert_allclose(mlm, _torch_outputs(model, batch).logits.numpy(), rtol=0, atol=ATOL)


def test_bare_bert_model_converts_encoder_and_inits_all_heads():
    model = _hf_model(transformers.BertModel, TINY, seed=4)
    state = {k: v.numpy() for k, v in model.state_dict().items()}  # no "bert." prefix
    config = config_from_hf(model.config.to_dict())
    with pytest.raises(ConversionError, match=r"cls\.predictions\.bias"):
        convert_hf_state_dict(state, config, heads="require")
    with pytest.warns(UserWarning, match="mlm, nsp"):
        result = convert_hf_state_dict(state, config, heads="init", seed=5)
    assert result.initialised == ("mlm", "nsp") and result.task_head is None
    batch = _batch(TINY, seed=3)
    _, _, sequence = _ours(config, result.params, batch)
    np.testing.assert_allclose(sequence, _torch_outputs(model, batch).last_hidden_state.numpy(), rtol=0, atol=ATOL)


def test_sequence_classification_checkpoint_yields_encoder_and_task_head(tmp_path):
    model = _hf_model(transformers.BertForSequenceClassification, {**TINY, "num_labels": 3}, seed=6)
    model.save_pretrained(tmp_path)
    hf_config, state = read_hf_checkpoint(str(tmp_path))
    with pytest.warns(UserWarning, match="mlm, nsp"):
        result = convert_hf_state_dict(state, config_from_hf(hf_config))
    np.testing.assert_array_equal(result.task_head["dense"]["kernel"], state["classifier.weight"].T)
    np.testing.assert_array_equal(result.params["pooler"]["dense"]["kernel"], state["bert.pooler.dense.weight"].T)
    with pytest.warns(UserWarning) as caught:
        load_hf_checkpoint(str(tmp_path))
    assert any("dropping the sequence-classification layer" in str(w.message) for w in caught)


def test_config_round_trip_and_rejections():
    config = ModelConfig(vocab_size=777, hidden_size=96, num_layers=3, num_heads=3, intermediate_size=200,
                         max_position_embeddings=128, type_vocab_size=4, layer_norm_eps=1e-6,
                         initializer_range=0.03, dropout_rate=0.05, attention_dropout_rate=0.0, pad_token_id=1)
    hf = hf_config_from_model(config)
    assert config_from_hf(hf) == config
    assert config_from_hf(transformers.BertConfig(**hf).to_dict()) == config  # as transformers writes it
    for field, value in [("hidden_act", "gelu_new"), ("position_embedding_type", "relative_key"),
                         ("model_type", "roberta"), ("is_decoder", True)]:
        with pytest.raises(ConversionError, match=field):
            config_from_hf({**hf, field: value})
    for override, word in [(dict(share_layers=True), "share_layers"), (dict(embedding_size=32), "embedding_size"),
                           (dict(position_embedding="rotary"), "rotary"), (dict(norm="pre"), "post-LN")]:
        with pytest.raises(ConversionError, match=word):
            hf_config_from_model(config.replace(**override))


def test_base_param_count_equals_transformers():
    ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(expected_param_shapes(preset("base"))))
    with torch.device("meta"):
        reference = transformers.BertForPreTraining(transformers.BertConfig())
    assert ours == sum(p.numel() for p in reference.parameters())


def test_cli_round_trip(tmp_path, capsys):
    model = _hf_model(transformers.BertForPreTraining, TINY, seed=7)
    model.save_pretrained(tmp_path / "hf")
    params_path = str(tmp_path / "tiny.msgpack")
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", params_path]) == 0
    config, params = load_params(params_path)
    want_config, want = load_hf_checkpoint(str(tmp_path / "hf"))
    assert config == want_config and not is_scanned(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want)))
    scanned_config, scanned = load_params(params_path, scan_layers=True)
    assert scanned["encoder"]["layers"]["layer"]["mlp"]["wi"]["kernel"].shape == (2, 32, 48)

    assert cli.main(["convert", "--from", params_path, "--to-hf", str(tmp_path / "back")]) == 0
    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[k], original[k]) for k in original)

    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", params_path]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["convert", "--from-hf", str(tmp_path / "hf")])  # no --to

    save_params(params_path, scanned_config, scanned)  # a scanned file loads back unscanned on request
    config2, params2 = load_params(params_path, scan_layers=False)
    assert config2 == config and _flat(params2).keys() == _flat(params).keys()
