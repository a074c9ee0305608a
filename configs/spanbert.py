"""SpanBERT: span masking (geometric span lengths, whole words) with MLM + the span-boundary objective,
single contiguous segments, no NSP.

    bert-jax pretrain --config configs/spanbert.py:base --workdir ...   (variants as in configs/pretrain.py)
"""
import os

from bert_jax.configlib import load_config_file


def _pretrain_config(variant):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py")
    return load_config_file(f"{path}:{variant or ''}")


def get_config(arg=None):
    c = _pretrain_config(arg)
    c.objectives = "mlm+sbo"  # 'sbo' makes the run use span masking
    c.data.mode = "single"
    return c
