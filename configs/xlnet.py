"""XLNet: the permutation language model (`plm`) on contiguous text, with relative positions.

    bert-jax pretrain --config configs/xlnet.py:base --workdir ...   (variants as in configs/pretrain.py)

Each example gets a random factorisation order; the query stream predicts the last 1/K of it (K =
objective_options.plm.partial_prediction_k, 6 as in XLNet) from the content stream of the tokens before it in the
order. XLNet has no next-sentence loss and uses relative positions (Transformer-XL's; here the encoder's bucketed
relative bias, `model.position_embedding=relative`, shared by every layer).
"""
from bert_jax.configlib import objective_options, sibling_config


def get_config(arg=None):
    c = sibling_config(__file__, "pretrain.py", arg)
    c.objectives = "plm"
    c.objective_options = objective_options(c.objectives)  # bert_jax/objectives/plm.py's defaults
    c.data.mode = "full-sentences"
    c.model.position_embedding = "relative"
    return c
