"""SpanBERT: span masking (geometric span lengths, whole words) with MLM + the span-boundary objective,
single contiguous segments, no NSP.

    bert-jax pretrain --config configs/spanbert.py:base --workdir ...   (variants as in configs/pretrain.py)
"""
from bert_jax.configlib import sibling_config


def get_config(arg=None):
    c = sibling_config(__file__, "pretrain.py", arg)
    c.objectives = "mlm+sbo"  # 'sbo' makes the run use span masking
    c.data.mode = "single"
    return c
