"""ELECTRA: replaced-token detection with a small MLM generator, both trained jointly in one param tree.

The generator (params under 'generator': an encoder of `generator_fraction` of the discriminator's hidden,
heads and feed-forward widths, and its MLM head) fills the masked positions with samples from its own
MLM distribution (a categorical draw from the 'sample' rng stream; no gradient flows through the draw). The
discriminator -- the run's main 'encoder', so export and fine-tuning take it as for any other objective --
sees the original text with those samples in place and predicts, at every real token, whether it was
replaced. A sampled token equal to the original counts as original (label 0), as in the paper.
Token embeddings are shared: the generator uses the discriminator's table (its own, narrower, layers read it
through a projection), so the discriminator's RTD gradient also reaches the generator's input and output
embeddings. Loss = generator MLM + rtd_weight (50) x RTD.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import model_flops
from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.encoder import Encoder
from bert_jax.model.heads import MLMHead
from bert_jax.model.layers import dense
from bert_jax.model.pretraining import READS_NOTHING
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy
from bert_jax.objectives.mlm import ALL_MODES

EVAL_SAMPLE_SEED = 0  # evaluation (no 'sample' rng given) draws with a fixed key, so eval is reproducible


def generator_config(config: ModelConfig, fraction: float) -> ModelConfig:
    """The discriminator's config with widths scaled by `fraction`; embeddings stay the discriminator's width."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"electra.generator_fraction={fraction} must lie in (0, 1]; ELECTRA uses 0.25")
    hidden = max(1, round(config.hidden_size * fraction))
    heads = max(1, round(config.num_heads * fraction))
    if hidden % heads:
        raise ValueError(f"electra.generator_fraction={fraction} gives a generator hidden size {hidden} that "
                         f"{heads} heads do not divide; pick a fraction that keeps them divisible")
    return config.replace(hidden_size=hidden, num_heads=heads,
                          intermediate_size=max(1, round(config.intermediate_size * fraction)),
                          embedding_size=config.embed_dim, causal=False)


class Generator(nn.Module):
    """Encoder + MLM head of the generator, reading (and decoding with) another module's token table."""

    config: ModelConfig
    shared_token: nn.Module
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, batch, deterministic: bool):
        encoder = Encoder(self.config, self.shared_token, self.speed, name="encoder")
        out = encoder(batch["input_ids"], batch.get("token_type_ids"), batch.get("input_mask"),
                      batch.get("position_ids"), deterministic)
        return MLMHead(self.config, name="mlm_head")(out.sequence, encoder.attend, batch["masked_positions"])


class ReplacedTokenHead(nn.Module):
    """ELECTRA's discriminator head: dense + GELU, then one logit per token (replaced?)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, sequence):
        cfg = self.config
        h = jax.nn.gelu(dense(cfg, cfg.hidden_size, -1, ("embed", "mlp"), ("mlp",), "dense")(sequence),
                        approximate=False)
        return dense(cfg, 1, -1, ("mlp", "classes"), ("classes",), "logit")(h)[..., 0].astype(jnp.float32)


def corrupt(input_ids, masked_positions, masked_ids, masked_weights, sampled):
    """(discriminator input ids, replaced labels [B, L]): the original text with `sampled` at the masked
    positions; label 1 exactly where the token placed there differs from the original."""
    length = input_ids.shape[1]
    hit = (masked_positions[:, :, None] == jnp.arange(length)[None, None, :]) & (masked_weights[:, :, None] > 0)
    at_mask = hit.any(axis=1)  # [B, L]; a one-hot sum, not a scatter, so padding slots (position 0) do nothing
    original = jnp.where(at_mask, jnp.einsum("bpl,bp->bl", hit.astype(jnp.int32), masked_ids), input_ids)
    placed = jnp.einsum("bpl,bp->bl", hit.astype(jnp.int32), sampled.astype(jnp.int32))
    corrupted = jnp.where(at_mask, placed, original)
    return corrupted.astype(input_ids.dtype), (corrupted != original).astype(jnp.float32)


def sigmoid_cross_entropy(logits, labels, weights):
    """Sums of the binary cross-entropy and of correct decisions, weighted."""
    loss = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    correct = ((logits > 0).astype(jnp.float32) == labels).astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(correct * weights)


def denominators(batch):
    masked = batch["masked_weights"].sum()
    tokens = (batch["input_mask"] != 0).sum()
    return {"generator_loss": masked, "generator_accuracy": masked, "rtd_loss": tokens, "rtd_accuracy": tokens,
            "rtd_replaced": tokens}


def forward(ctx):
    b = ctx.batch
    gen_cfg = generator_config(ctx.config, float(ctx.options["generator_fraction"]))
    generator = Generator(gen_cfg, ctx.encoder.embeddings.token, ctx.encoder.speed, name="generator")
    gen_logits = generator(b, ctx.deterministic)
    gen_loss, gen_correct = weighted_cross_entropy(gen_logits, b["masked_ids"], b["masked_weights"])

    module = ctx.module
    key = module.make_rng("sample") if module.has_rng("sample") else jax.random.key(EVAL_SAMPLE_SEED)
    sampled = jax.random.categorical(key, jax.lax.stop_gradient(gen_logits), axis=-1)
    corrupted, replaced = corrupt(b["input_ids"], b["masked_positions"], b["masked_ids"], b["masked_weights"],
                                  sampled)
    disc = ctx.encoder(corrupted, b.get("token_type_ids"), b.get("input_mask"), b.get("position_ids"),
                       ctx.deterministic)
    logits = ReplacedTokenHead(ctx.config, name="rtd_head")(disc.sequence)
    tokens = (b["input_mask"] != 0).astype(jnp.float32)
    rtd_loss, rtd_correct = sigmoid_cross_entropy(logits, replaced, tokens)
    return {"generator_loss": gen_loss, "generator_accuracy": gen_correct, "rtd_loss": rtd_loss,
            "rtd_accuracy": rtd_correct, "rtd_replaced": jnp.sum(replaced * tokens)}


def flops(cfg, seq_len, predictions, options):
    """Beyond the discriminator's pass (the shared encoder count): the generator's encoder over the sequence and
    its MLM head at the masked positions, at its own widths; the RTD head (dense + logit) at every position."""
    gen = generator_config(cfg, float(options["generator_fraction"]))
    rtd_head = 2.0 * seq_len * (cfg.hidden_size * cfg.hidden_size + cfg.hidden_size)
    return model_flops.encoder(gen, seq_len) + model_flops.lm_head(gen, predictions) + rtd_head


ELECTRA = register(Objective(
    name="electra", data_modes=ALL_MODES, masking="mlm", denominators=denominators, forward=forward,
    loss_weights={"generator_loss": 1.0, "rtd_loss": "rtd_weight"},
    options={"generator_fraction": 0.25, "rtd_weight": 50.0}, excludes=("mlm",),
    reads=READS_NOTHING, flops=flops))  # the discriminator reads its own pass over the corrupted input
