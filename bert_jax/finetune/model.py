"""The fine-tuning model: the encoder plus a task output layer, in the BERT paper's three variants.

- 'standard'  (Section 4): sentence tasks read the pooled [CLS] (the last real token for a left-to-right
  model, whose [CLS] sees only itself) through dropout and a linear layer; tagging and span tasks put a linear
  layer on every token.
- 'bilstm'    (Table 5, '+ BiLSTM'): a randomly initialised bidirectional LSTM on the encoder's sequence output,
  then the task's linear layer. Sentence tasks read the concatenated final states of both directions (forward
  at the last real token, backward at [CLS]): that summary has seen the whole input in both directions, which
  the BiLSTM output at one position has not. The pooler is not used.
- 'features'  (Table 7, feature-based NER): the encoder is frozen (its outputs pass through stop_gradient and it
  always runs without dropout, as features extracted once would be); features from one or several layers feed
  a two-layer BiLSTM and the linear layer. Use `masked_optimizer` (or `trainable_mask`) so the optimizer keeps
  no state for, and never moves (weight decay included), the encoder.

BiLSTM defaults: `lstm_size=0` means hidden_size // 2 per direction, so the BiLSTM output is as wide as the
encoder's (768 for base, the paper's "768-dimensional BiLSTM"); `lstm_layers=0` means 1 for 'bilstm' and 2 for
'features'. LSTM state, every output layer and all logits are float32 whatever the compute dtype.

The 'features' variant needs every layer's output, so its encoder always runs unscanned (speed.scan_layers=False);
`merge_pretrained` re-lays a scanned pretrained tree out to match the fresh one, so either layout loads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.encoder import Encoder
from bert_jax.model.heads import Classifier, Pooler
from bert_jax.model.layers import MASK_VALUE
from bert_jax.model.params import is_scanned, to_scanned, to_unscanned, unbox

KINDS = ("classification", "regression", "tagging", "span")
VARIANTS = ("standard", "bilstm", "features")
FEATURES = ("embeddings", "second_to_last", "last", "sum_last_four", "concat_last_four", "sum_all")
POOLS = ("auto", "cls", "last")
# The fewest transformer layers each feature choice makes sense with ('second_to_last' of one layer would be
# the embeddings, and 'last four' of three layers would include them).
_MIN_LAYERS = {"embeddings": 1, "second_to_last": 2, "last": 1, "sum_last_four": 4, "concat_last_four": 4,
               "sum_all": 1}


class HeadConfigError(ValueError):
    """A HeadConfig field that is unknown, out of range, or meaningless for the chosen kind/variant."""


class PretrainedMismatchError(ValueError):
    """Pretrained params whose tree or shapes do not fit the fine-tuning model."""


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    kind: str  # one of KINDS
    num_labels: int = 2  # classification/tagging classes; regression has 1 output and span 2, whatever this says
    variant: str = "standard"  # one of VARIANTS
    features: str = "last"  # one of FEATURES; only read by variant='features'
    lstm_size: int = 0  # units per direction; 0 = hidden_size // 2
    lstm_layers: int = 0  # 0 = 1 for 'bilstm', 2 for 'features'
    pool: str | None = "auto"  # 'cls' | 'last' | 'auto'/None = 'last' for causal (LTR) encoders, else 'cls'
    dropout: float | None = None  # None = the model config's dropout_rate

    def __post_init__(self):
        def check(ok, field, fix):
            if not ok:
                raise HeadConfigError(f"head.{field}={getattr(self, field)!r} is invalid: {fix}")

        check(self.kind in KINDS, "kind", f"choose one of {KINDS}")
        check(self.variant in VARIANTS, "variant", f"choose one of {VARIANTS}")
        check(self.features in FEATURES, "features", f"choose one of {FEATURES}")
        check(self.variant == "features" or self.features == "last", "features",
              "only variant='features' reads it; set variant='features' or leave features='last'")
        if self.kind in ("classification", "tagging"):
            check(isinstance(self.num_labels, int) and self.num_labels >= 2, "num_labels",
                  f"{self.kind} needs an int >= 2 (the number of labels)")
        for field in ("lstm_size", "lstm_layers"):
            check(isinstance(getattr(self, field), int) and getattr(self, field) >= 0, field,
                  "must be an int >= 0 (0 = the variant's default)")
            check(self.variant != "standard" or getattr(self, field) == 0, field,
                  "only variants 'bilstm'/'features' have an LSTM; leave it 0 or change variant")
        check(self.pool is None or self.pool in POOLS, "pool", f"choose one of {POOLS} or None")
        check(self.dropout is None or 0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1) or None")

    @property
    def sentence_level(self) -> bool:
        return self.kind in ("classification", "regression")

    @property
    def num_outputs(self) -> int:
        return {"regression": 1, "span": 2}.get(self.kind, self.num_labels)

    def lstm_units(self, config: ModelConfig) -> int:
        return self.lstm_size or max(1, config.hidden_size // 2)

    @property
    def num_lstm_layers(self) -> int:
        return self.lstm_layers or (2 if self.variant == "features" else 1)

    def pool_kind(self, config: ModelConfig) -> str:
        if self.pool in (None, "auto"):
            return "last" if config.causal else "cls"
        return self.pool

    def dropout_rate(self, config: ModelConfig) -> float:
        return config.dropout_rate if self.dropout is None else self.dropout


class BiLSTM(nn.Module):
    """Stacked bidirectional LSTM over [B, L, D] honouring per-row lengths; returns (outputs [B, L, 2U],
    final states [B, 2U] = forward h at the last real token ++ backward h at position 0), all float32."""

    units: int
    num_layers: int
    dropout_rate: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, lengths, deterministic: bool):
        x = x.astype(jnp.float32)
        for i in range(self.num_layers):
            x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
            (fwd, bwd), x = _BiLSTMLayer(self.units, self.param_dtype, name=f"layer_{i}")(x, lengths)
        return x, jnp.concatenate([fwd[1], bwd[1]], axis=-1)  # an LSTM carry is (c, h)


class _BiLSTMLayer(nn.Module):
    """One bidirectional layer; the cells are made here so their params sit at layer_i/{forward,backward}."""

    units: int
    param_dtype: Any

    @nn.compact
    def __call__(self, x, lengths):
        def rnn(name):
            return nn.RNN(nn.OptimizedLSTMCell(self.units, dtype=jnp.float32, param_dtype=self.param_dtype,
                                               name=name))

        # seq_lengths makes the backward direction start at the last real token and the returned carry be
        # the one at that token, so appended padding changes nothing at real positions.
        return nn.Bidirectional(rnn("forward"), rnn("backward"))(x, seq_lengths=lengths, return_carry=True)


class ScalarMix(nn.Module):
    """ELMo's scale * sum_j softmax(w)_j * layer_j, with w = 0 (a plain mean) and scale = 1 at init."""

    @nn.compact
    def __call__(self, layers):
        weights = self.param("mix_weights", nn.initializers.zeros_init(), (len(layers),), jnp.float32)
        scale = self.param("scale", nn.initializers.ones_init(), (), jnp.float32)
        stacked = jnp.stack([h.astype(jnp.float32) for h in layers])
        return scale * jnp.einsum("n,n...->...", jax.nn.softmax(weights), stacked)


class FineTuneModel(nn.Module):
    """`apply({'params': p}, batch, deterministic, rngs={'dropout': k})` -> dict of float32 logits (see the
    fine-tuning contract). Reads batch['input_ids'], 'token_type_ids', 'input_mask' (1 real, 0 pad)."""

    config: ModelConfig
    head: HeadConfig
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], deterministic: bool = True) -> dict[str, jax.Array]:
        cfg, head = self.config, self.head
        ids = jnp.asarray(batch["input_ids"])
        mask = jnp.asarray(batch["input_mask"]) if "input_mask" in batch else (ids != cfg.pad_token_id)
        mask = mask.astype(jnp.int32)
        types = batch.get("token_type_ids")
        lengths = mask.sum(-1)
        if head.variant == "features":
            x = self._features(ids, types, mask)
        else:
            x = Encoder(cfg, speed=self.speed, name="encoder")(ids, types, mask, deterministic=deterministic).sequence
        rate = head.dropout_rate(cfg)
        out_cfg = cfg.replace(dtype="float32")
        if head.variant == "standard":
            if head.sentence_level:
                positions = jnp.maximum(lengths - 1, 0) if head.pool_kind(cfg) == "last" else None
                x = Pooler(cfg, name="pooler")(x, positions)
            if head.kind != "span":  # BERT's SQuAD layer has no dropout of its own
                x = nn.Dropout(rate)(x, deterministic=deterministic)
        else:
            sequence, final = BiLSTM(head.lstm_units(cfg), head.num_lstm_layers, rate, cfg.param_dtype,
                                     name="bilstm")(x, lengths, deterministic)
            x = nn.Dropout(rate)(final if head.sentence_level else sequence, deterministic=deterministic)
        logits = Classifier(out_cfg, head.num_outputs, name="classifier")(x)
        if head.kind == "regression":
            return {"logits": logits[..., 0]}
        if head.kind == "span":
            # Padding can never be an answer; masking it also makes the span loss independent of bucket width.
            logits = jnp.where(mask[..., None] > 0, logits, MASK_VALUE)
            return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
        return {"logits": logits}

    def _features(self, ids, types, mask):
        cfg, head = self.config, self.head
        needed = _MIN_LAYERS[head.features]
        if cfg.num_layers < needed:
            raise HeadConfigError(f"head.features={head.features!r} needs num_layers >= {needed}, model has "
                                  f"{cfg.num_layers}; choose another features option or a deeper model")
        speed = self.speed.replace(scan_layers=False)  # it reads every layer's output
        out = Encoder(cfg, speed=speed, name="encoder")(ids, types, mask, deterministic=True, output_hidden_states=True)
        # The last entry is the encoder's output (after pre-LN's final norm), so 'last' is exactly `sequence`.
        layers = tuple(jax.lax.stop_gradient(h) for h in out.hidden_states[:-1] + (out.sequence,))
        if head.features == "embeddings":
            feats = layers[0]
        elif head.features == "second_to_last":
            feats = layers[-2]
        elif head.features == "last":
            feats = layers[-1]
        elif head.features == "concat_last_four":
            feats = jnp.concatenate(layers[-4:], axis=-1)
        else:
            feats = ScalarMix(name="layer_weights")(layers[-4:] if head.features == "sum_last_four" else layers)
        self.sow("intermediates", "features", feats)
        return feats


def dummy_batch(seq_len: int = 8, batch_size: int = 1) -> dict[str, jnp.ndarray]:
    ids = jnp.ones((batch_size, seq_len), jnp.int32)
    return {"input_ids": ids, "token_type_ids": jnp.zeros_like(ids), "input_mask": jnp.ones_like(ids)}


def init_params(model: FineTuneModel, rng: jax.Array, seq_len: int = 8) -> dict:
    """Freshly initialised, unboxed `params` of `model` (for shardings, use jax.eval_shape(model.init, ...))."""
    return unbox(model.init(rng, dummy_batch(seq_len), deterministic=True))["params"]


def _log_softmax_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, labels.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def task_loss(head: HeadConfig, outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]):
    """(loss_sum, count), float32 scalars: mean loss = loss_sum / count. Rows with weight 0 add nothing;
    tagging counts tag_weights (times the row weight), the others count row weights."""
    weight = jnp.asarray(batch["weight"], jnp.float32)
    if head.kind == "classification":
        per_row = _log_softmax_ce(outputs["logits"], batch["label"])
    elif head.kind == "regression":
        per_row = jnp.square(outputs["logits"].astype(jnp.float32) - jnp.asarray(batch["label"], jnp.float32))
    elif head.kind == "span":
        per_row = 0.5 * (_log_softmax_ce(outputs["start_logits"], batch["start_position"])
                         + _log_softmax_ce(outputs["end_logits"], batch["end_position"]))
    else:
        token_weight = jnp.asarray(batch["tag_weights"], jnp.float32) * weight[:, None]
        per_token = _log_softmax_ce(outputs["logits"], batch["tag_ids"])
        # where, not a product: a padded row's logits may be anything, and 0 * inf would be nan
        return jnp.sum(jnp.where(token_weight > 0, per_token * token_weight, 0.0)), jnp.sum(token_weight)
    return jnp.sum(jnp.where(weight > 0, per_row * weight, 0.0)), jnp.sum(weight)


def predict(head: HeadConfig, outputs: Mapping[str, jax.Array]):
    """classification: int32 labels [B]; regression: float32 values [B]; tagging: int32 tags [B, W];
    span: the start/end logits unchanged (answer selection needs the n-best across windows)."""
    if head.kind == "regression":
        return outputs["logits"].astype(jnp.float32)
    if head.kind == "span":
        return {"start_logits": outputs["start_logits"], "end_logits": outputs["end_logits"]}
    return jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)


def trainable_mask(params: Mapping, head: HeadConfig) -> dict:
    """True for every leaf the optimizer should update: all but `encoder` for 'features', else all."""
    frozen = head.variant == "features"
    return {name: jax.tree.map(lambda _, f=(frozen and name == "encoder"): not f, sub)
            for name, sub in params.items()}


def masked_optimizer(optimizer: optax.GradientTransformation, params: Mapping,
                     head: HeadConfig) -> optax.GradientTransformation:
    """`optimizer` on the trainable leaves, zero updates (and no optimizer state) for frozen ones."""
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask(params, head))
    return optax.partition({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


@dataclasses.dataclass(frozen=True)
class MergeReport:
    loaded: tuple[str, ...]  # top-level modules copied from the pretrained tree
    fresh: tuple[str, ...]  # top-level modules left at their fresh initialisation
    unused: tuple[str, ...]  # pretrained modules the fine-tuning model has no place for (mlm_head, nsp_head)

    def __str__(self) -> str:
        return f"loaded {list(self.loaded)}, fresh {list(self.fresh)}, unused {list(self.unused)}"


def _copy_checked(fresh: Mapping, pretrained: Mapping, name: str) -> dict:
    want = traverse_util.flatten_dict(dict(fresh), sep="/")
    have = traverse_util.flatten_dict(dict(pretrained), sep="/")
    for path in sorted(set(want) | set(have)):
        if path not in have:
            raise PretrainedMismatchError(f"pretrained {name}/{path} is missing; the pretrained model config "
                                          "must match the fine-tuning model config")
        if path not in want:
            raise PretrainedMismatchError(f"pretrained {name}/{path} is unexpected; the pretrained model config "
                                          "must match the fine-tuning model config")
        if np.shape(have[path]) != np.shape(want[path]):
            raise PretrainedMismatchError(f"pretrained {name}/{path} has shape {np.shape(have[path])}, the model "
                                          f"wants {np.shape(want[path])}; use the pretraining model config")
    return traverse_util.unflatten_dict(
        {path: jnp.asarray(np.asarray(have[path]), dtype=want[path].dtype) for path in want}, sep="/")


def merge_pretrained(fresh_params: Mapping, pretrained: Mapping) -> tuple[dict, MergeReport]:
    """Copy `encoder` (and `pooler` where the model has one) from a BertForPreTraining / exported params tree
    (boxed or not, optionally wrapped in {'params': ...}) into `fresh_params`; other modules stay fresh. The
    pretrained encoder is re-laid out (scanned <-> per-layer) to match the fresh tree."""
    pretrained = unbox(dict(pretrained))
    if set(pretrained) == {"params"}:
        pretrained = dict(pretrained["params"])
    if "encoder" not in pretrained:
        raise PretrainedMismatchError(f"pretrained params have no 'encoder' (top level: {sorted(pretrained)}); "
                                      "pass a BertForPreTraining params tree or an exported params file's tree")
    fresh_params = unbox(dict(fresh_params))
    encoder = pretrained["encoder"]
    if is_scanned(encoder) and not is_scanned(fresh_params["encoder"]):
        encoder = to_unscanned({"encoder": encoder})["encoder"]
    elif is_scanned(fresh_params["encoder"]) and not is_scanned(encoder):
        encoder = to_scanned({"encoder": encoder})["encoder"]
    merged = dict(fresh_params)
    merged["encoder"] = _copy_checked(fresh_params["encoder"], encoder, "encoder")
    loaded = ["encoder"]
    if "pooler" in fresh_params and "pooler" in pretrained:
        merged["pooler"] = _copy_checked(fresh_params["pooler"], pretrained["pooler"], "pooler")
        loaded.append("pooler")
    fresh = tuple(sorted(set(fresh_params) - set(loaded)))
    unused = tuple(sorted(set(pretrained) - set(loaded)))
    return merged, MergeReport(loaded=tuple(loaded), fresh=fresh, unused=unused)
