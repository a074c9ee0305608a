"""ALBERT: factorised embeddings (E=128), one transformer layer shared by all, MLM + sentence-order prediction.

    bert-jax pretrain --config configs/albert.py:base --workdir ...   (variants as in configs/pretrain.py)

At CPU scale (tiny, mini) E is half the hidden width, since E=128 would not factorise a 128-wide model.
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
    c.objectives = "mlm+sop"
    c.data.mode = "sentence-order"
    c.model.embedding_size = min(128, c.model.hidden_size // 2)
    c.model.share_layers = True
    return c
