"""What the model computes (ModelConfig, its identity, saved with every checkpoint and params file) and how it is
computed (SpeedConfig: execution choices that change speed and memory, never the function), and the named sizes."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

POSITION_KINDS = ("learned", "sinusoidal", "relative", "rotary")
POSITION_INITS = ("normal", "sinusoidal")
ACTIVATIONS = ("gelu", "geglu")
NORM_PLACEMENTS = ("post", "pre")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_qkv_out")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    # ALBERT: token embeddings of width `embedding_size` projected up to `hidden_size`; None means = hidden.
    embedding_size: int | None = None
    share_layers: bool = False
    position_embedding: str = "learned"
    relative_buckets: int = 32
    relative_max_distance: int = 128
    rotary_base: float = 10000.0
    activation: str = "gelu"
    norm: str = "post"
    layer_norm_eps: float = 1e-12
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    # True: one attention-dropout mask per layer of shape [Q, K], shared by every example and head (flax's
    # dot_product_attention_weights default, which transformers' FlaxBert uses); False: BERT's per-element
    # dropout of the attention probabilities (google-research/bert, transformers' PyTorch BERT).
    attention_dropout_broadcast: bool = False
    initializer_range: float = 0.02
    # How a learned position table starts: "normal" (BERT's N(0, initializer_range)) or "sinusoidal" (the Transformer's
    # sin/cos table scaled to the normal rows' norm), which gives attention relative offsets from step 0.
    position_init: str = "normal"
    causal: bool = False  # left-to-right attention (the paper's LTR ablation)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    pad_token_id: int = 0

    def __post_init__(self):
        def check(ok, field, fix):
            if not ok:
                raise ValueError(f"model.{field}={getattr(self, field)!r} is invalid: {fix}")

        check(self.hidden_size % self.num_heads == 0, "num_heads", f"must divide hidden_size {self.hidden_size}")
        check(self.position_embedding in POSITION_KINDS, "position_embedding", f"choose one of {POSITION_KINDS}")
        check(self.position_init in POSITION_INITS, "position_init", f"choose one of {POSITION_INITS}")
        check(self.activation in ACTIVATIONS, "activation", f"choose one of {ACTIVATIONS}")
        check(self.norm in NORM_PLACEMENTS, "norm", f"choose one of {NORM_PLACEMENTS}")
        check(self.position_embedding != "rotary" or self.head_dim % 2 == 0, "position_embedding",
              f"rotary needs an even head size, got {self.head_dim}")
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size"):
            check(getattr(self, field) > 0, field, "must be positive")
        for field in ("dropout_rate", "attention_dropout_rate"):  # 1 would drop everything: NaN at the first step
            check(0.0 <= getattr(self, field) < 1.0, field, "must lie in [0, 1); BERT uses 0.1")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def embed_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def factorized(self) -> bool:
        return self.embed_dim != self.hidden_size

    def replace(self, **kwargs) -> "ModelConfig":
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Build from a dict/ConfigDict (a config's `model` section, a saved config.json's, a params file's). The keys
        that older files stored there and that are no model property are read and dropped (`OLD_MODEL_KEYS`)."""
        values = {k: v for k, v in dict(values).items() if k not in OLD_MODEL_KEYS}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SpeedConfig:
    """Execution choices, given to the modules beside the ModelConfig: the same function (the same params tree up to
    the scanned layout, the same outputs and gradients; dropout masks differ by `dropout_rng`), so they stay out of
    the model's identity and a checkpoint trained one way is read any other way."""

    # Dropout mask generator: "fused" (Threefry-2x32 written out so XLA fuses the hash into the masking op; 1.04-1.06x
    # a CPU step, benchmarks/NOTES.md section 17) or "jax" (jax.random, which XLA:CPU runs as a rolled loop over
    # memory; the masks of runs trained before this option). Both draw each element independently at the rate.
    dropout_rng: str = "fused"
    # Pretraining: when every objective reads the final layer at a few positions (MLM: the masked ones; NSP/SOP:
    # [CLS]), the last layer computes only there (keys and values still from every position). The same function,
    # 1.03x a base step and 1.15x a mini step on 2 CPU cores (benchmarks/NOTES.md section 19). Scanned stacks ignore it.
    sparse_final_layer: bool = True
    attention_impl: str = "xla"  # "xla" (einsum + fp32 softmax) or "dot_product_attention" (cuDNN's on GPU)
    remat_policy: str = "none"
    # One layer compiled once and run by nn.scan: params stacked under encoder/layers/layer (model/params.py
    # to_scanned / to_unscanned convert; readers of saved params detect the layout with is_scanned).
    scan_layers: bool = False

    def __post_init__(self):
        def check(ok, field, fix):
            if not ok:
                raise ValueError(f"speed.{field}={getattr(self, field)!r} is invalid: {fix}")

        check(self.dropout_rng in ("jax", "fused"), "dropout_rng", "choose jax or fused")
        check(self.attention_impl in ("xla", "dot_product_attention"), "attention_impl",
              "choose 'xla' or 'dot_product_attention'")
        check(self.remat_policy in REMAT_POLICIES, "remat_policy", f"choose one of {REMAT_POLICIES}")

    def replace(self, **kwargs) -> "SpeedConfig":
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SpeedConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown speed config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys the `model` section of configs (and so config.json files) held before this split, read without error and
# dropped: every config.json also stores all the sizes a `preset` named; `dropout_bits` (16-bit draws) was
# superseded by dropout_rng=fused; the rest are SpeedConfig's, which a reader of saved params chooses for itself.
OLD_MODEL_KEYS = ("preset", "dropout_bits") + tuple(f.name for f in dataclasses.fields(SpeedConfig))


def _size(layers: int, hidden: int, heads: int) -> dict[str, int]:
    return dict(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=4 * hidden)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _size(2, 128, 2),
    "mini": _size(4, 256, 4),
    "small": _size(4, 512, 8),
    "medium": _size(8, 512, 8),
    "base": _size(12, 768, 12),
    "large": _size(24, 1024, 16),
    # The mini scale's BERT_BASE (experiments: #L / 3, #H / 4, the same #A).
    "L4_H192_A12": _size(4, 192, 12),
    # Its width with BERT's head size of 64: the model of configs/pretrain.py:mini_text (rotary positions need wide
    # heads; experiments/README.md, "Why the curve flattened").
    "L4_H192_A3": _size(4, 192, 3),
    # The BERT paper's Table 6 grid (#L/#H/#A).
    "L3_H768_A12": _size(3, 768, 12),
    "L6_H768_A3": _size(6, 768, 3),
    "L6_H768_A12": _size(6, 768, 12),
    "L12_H768_A12": _size(12, 768, 12),
    "L12_H1024_A16": _size(12, 1024, 16),
    "L24_H1024_A16": _size(24, 1024, 16),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
