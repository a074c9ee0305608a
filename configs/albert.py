"""ALBERT: factorised embeddings (E=128), one transformer layer shared by all, MLM + sentence-order prediction.

    bert-jax pretrain --config configs/albert.py:base --workdir ...   (variants as in configs/pretrain.py)

At CPU scale (tiny, mini) E is half the hidden width, since E=128 would not factorise a 128-wide model.
"""
from bert_jax.configlib import sibling_config


def get_config(arg=None):
    c = sibling_config(__file__, "pretrain.py", arg)
    c.objectives = "mlm+sop"
    c.data.mode = "sentence-order"
    c.model.embedding_size = min(128, c.model.hidden_size // 2)
    c.model.share_layers = True
    return c
