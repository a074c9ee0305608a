"""ALBERT: factorised embeddings (E=128), one transformer layer shared by all, MLM + sentence-order prediction.

    bert-jax pretrain --config configs/albert.py:base --workdir ...   (variants as in configs/pretrain.py)

At CPU scale (tiny, mini) E is half the hidden width, since E=128 would not factorise a 128-wide model.
"""
import os

from bert_jax.configlib import load_config_file


def _pretrain_config(variant):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py")
    return load_config_file(f"{path}:{variant or ''}")


def get_config(arg=None):
    c = _pretrain_config(arg)
    c.objectives = "mlm+sop"
    c.data.mode = "sentence-order"
    c.model.embedding_size = min(128, c.model.hidden_size // 2)
    c.model.share_layers = True
    return c
