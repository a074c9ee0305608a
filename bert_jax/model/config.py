"""Model hyperparameters: one frozen dataclass, the named presets, and conversion from a ConfigDict."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

POSITION_KINDS = ("learned", "sinusoidal", "relative", "rotary")
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
    # 16: dropout masks from 16 random bits per element (half of threefry's work for 32-bit draws), the rate
    # rounded to a multiple of 1/65536 (0.1 -> 0.100006); 32: jax.random.bernoulli / nn.Dropout.
    dropout_bits: int = 32
    # Mask generator: "fused" (Threefry-2x32 written out so XLA fuses the hash into the masking op; 1.04-1.06x a
    # CPU step, benchmarks/NOTES.md section 17) or "jax" (jax.random, which XLA:CPU runs as a rolled loop over
    # memory; the masks of runs trained before this option). Both draw each element independently at `rate`.
    dropout_rng: str = "fused"
    # True: one attention-dropout mask per layer of shape [Q, K], shared by every example and head (flax's
    # dot_product_attention_weights default, which transformers' FlaxBert uses); False: BERT's per-element
    # dropout of the attention probabilities (google-research/bert, transformers' PyTorch BERT).
    attention_dropout_broadcast: bool = False
    initializer_range: float = 0.02
    causal: bool = False  # left-to-right attention (the paper's LTR ablation)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"
    # Pretraining: when every objective reads the final layer at a few positions (MLM: the masked ones; NSP/SOP:
    # [CLS]), the last layer computes only there (keys and values still from every position). The same function,
    # 1.03x a base step and 1.15x a mini step on 2 CPU cores (benchmarks/NOTES.md section 19). Scanned stacks ignore it.
    sparse_final_layer: bool = True
    scan_layers: bool = False
    attention_impl: str = "xla"  # "xla" (einsum + fp32 softmax) or "cudnn"/"dot_product_attention"
    pad_token_id: int = 0

    def __post_init__(self):
        def check(ok, field, fix):
            if not ok:
                raise ValueError(f"model.{field}={getattr(self, field)!r} is invalid: {fix}")

        check(self.hidden_size % self.num_heads == 0, "num_heads", f"must divide hidden_size {self.hidden_size}")
        check(self.position_embedding in POSITION_KINDS, "position_embedding", f"choose one of {POSITION_KINDS}")
        check(self.activation in ACTIVATIONS, "activation", f"choose one of {ACTIVATIONS}")
        check(self.norm in NORM_PLACEMENTS, "norm", f"choose one of {NORM_PLACEMENTS}")
        check(self.remat_policy in REMAT_POLICIES, "remat_policy", f"choose one of {REMAT_POLICIES}")
        check(self.dropout_bits in (16, 32), "dropout_bits", "choose 16 or 32")
        check(self.dropout_rng in ("jax", "fused"), "dropout_rng", "choose jax or fused")
        check(self.dropout_bits == 32 or self.dropout_rng == "jax", "dropout_bits",
              "16-bit draws apply to dropout_rng=jax only (fused draws 32 bits at no extra cost)")
        check(self.attention_impl in ("xla", "dot_product_attention"), "attention_impl",
              "choose 'xla' or 'dot_product_attention'")
        check(self.position_embedding != "rotary" or self.head_dim % 2 == 0, "position_embedding",
              f"rotary needs an even head size, got {self.head_dim}")
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size"):
            check(getattr(self, field) > 0, field, "must be positive")

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
        """Build from a dict/ConfigDict: `preset` (optional) first, then explicit fields over it."""
        values = dict(values)
        preset = values.pop("preset", None)
        if preset and preset not in PRESETS:
            raise ValueError(f"model.preset={preset!r} is unknown; choose one of {sorted(PRESETS)}")
        merged = {**(PRESETS[preset] if preset else {}), **values}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _size(layers: int, hidden: int, heads: int) -> dict[str, int]:
    return dict(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=4 * hidden)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _size(2, 128, 2),
    "mini": _size(4, 256, 4),
    "small": _size(4, 512, 8),
    "medium": _size(8, 512, 8),
    "base": _size(12, 768, 12),
    "large": _size(24, 1024, 16),
    # The mini scale's BERT_BASE (experiments: #L / 3, #H / 4, the same #A) and the recipe of configs/pretrain.py:mini_text.
    "L4_H192_A12": _size(4, 192, 12),
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
