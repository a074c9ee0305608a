"""XLNet's permutation language model: predict tokens in a random factorisation order, with two-stream attention.

The pipeline's 'permutation' masking (bert_jax/data/permutation.py) draws one order per row and marks its last
1/K tokens as targets (XLNet's partial prediction; `partial_prediction_k`, 6 as in the paper's base models). The
encoder runs in two streams that share every layer's weights (model/encoder.py, `QueryStream`):
  - the content stream h: position i attends to every j with rank[j] <= rank[i] (itself included), so h_i
    encodes its token and what precedes it in the order;
  - the query stream g, at the targets only: g starts from a learned vector (`plm_query`, standing in
    for the token) plus the position and segment embeddings, and at each layer attends to the content stream's
    input of that layer at every j with rank[j] < rank[i]: it knows where it is, never what it is.
The targets' logits come from the final g through an MLM-shaped head (`plm_head`: dense, GELU, LayerNorm, the
decoder tied to the token embeddings). Input tokens are never replaced, so fine-tuning sees the same kind of input
as pretraining, with plain bidirectional attention (the content stream with every mask open).
Positions: whatever the encoder uses (`learned` as BERT; `relative`, XLNet's choice, and `rotary` work too, as
the query stream carries its positions into each layer's attention).
"""
import flax.linen as nn

from bert_jax import model_flops
from bert_jax.model.encoder import QueryStream
from bert_jax.model.heads import MLMHead
from bert_jax.model.layers import normal_init
from bert_jax.model.pretraining import READS_NOTHING
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy

PLM_HEAD, QUERY_EMBEDDING = "plm_head", "plm_query"
# Single-segment text first (XLNet trains on it); pairs work too.
MODES = ("full-sentences", "doc-sentences", "single", "segment-pair", "sentence-order", "sentence-pair")


def permutation_masks(perm_rank):
    """(content, query) bool [B, 1, L, L] over (query position i, key position j): the content stream sees
    rank[j] <= rank[i], the query stream rank[j] < rank[i] (not itself)."""
    earlier_or_same = perm_rank[:, None, :] <= perm_rank[:, :, None]
    earlier = perm_rank[:, None, :] < perm_rank[:, :, None]
    return earlier_or_same[:, None], earlier[:, None]


class QueryEmbedding(nn.Module):
    """XLNet's w: the one learned vector the query stream starts from wherever a token is hidden."""

    config: object  # ModelConfig

    @nn.compact
    def __call__(self):
        cfg = self.config
        axis = "embed_factor" if cfg.factorized else "embed"
        return self.param("embedding", normal_init(cfg, (axis,)), (cfg.embed_dim,), cfg.param_dtype)


def two_stream(ctx):
    """(logits [B, P, V] at the targets, the encoder's output) from one two-stream pass."""
    cfg, b = ctx.config, ctx.batch
    stand_in = QueryEmbedding(cfg, name=QUERY_EMBEDDING)()
    content, query = permutation_masks(b["perm_rank"])
    stream = QueryStream(positions=b["masked_positions"], content_mask=content, query_mask=query, embedding=stand_in)
    out = ctx.encoder(b["input_ids"], b.get("token_type_ids"), b.get("input_mask"), b.get("position_ids"),
                      ctx.deterministic, query_stream=stream)
    return MLMHead(cfg, name=PLM_HEAD)(out.query, ctx.encoder.attend), out


def denominators(batch):
    n = batch["masked_weights"].sum()
    return {"plm_loss": n, "plm_accuracy": n}


def forward(ctx):
    if "perm_rank" not in ctx.batch:
        raise ValueError("plm needs permutation-masked batches (perm_rank); the run must use masking 'permutation'")
    logits, _ = two_stream(ctx)
    loss, correct = weighted_cross_entropy(logits, ctx.batch["masked_ids"], ctx.batch["masked_weights"])
    return {"plm_loss": loss, "plm_accuracy": correct}


def masking_options(options):
    return {"permutation_k": int(options["partial_prediction_k"])}


def flops(cfg, seq_len, predictions, options):
    """Beyond the content stream (the shared encoder count): the query stream, whose `predictions` target
    positions run each layer's query side against every key (keys and values are the content stream's), and the
    head at the targets."""
    stream = cfg.num_layers * predictions * model_flops.per_query(cfg, seq_len)
    return stream + model_flops.projection(cfg, predictions) + model_flops.lm_head(cfg, predictions)


PLM = register(Objective(name="plm", data_modes=MODES, masking="permutation", denominators=denominators,
                         forward=forward, loss_weights={"plm_loss": 1.0}, options={"partial_prediction_k": 6},
                         masking_options=masking_options, reads=READS_NOTHING, flops=flops))
