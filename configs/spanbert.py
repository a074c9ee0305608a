"""SpanBERT: span masking (geometric span lengths, whole words) with MLM + the span-boundary objective,
single contiguous segments, no NSP.

    bert-jax pretrain --config configs/spanbert.py:base --workdir ...   (variants as in configs/pretrain.py)
"""
import importlib.util
import os


def _pretrain_config(variant):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py")
    spec = importlib.util.spec_from_file_location("bert_jax_config_pretrain_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def get_config(arg=None):
    c = _pretrain_config(arg)
    c.objectives = "mlm+sbo"  # 'sbo' makes the run use span masking
    c.data.mode = "single"
    return c
