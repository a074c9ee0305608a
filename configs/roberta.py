"""RoBERTa: MLM only (no NSP) on full sentences packed across documents, masks drawn anew every epoch
(dynamic masking: the pipeline's default), Adam beta2 0.98; at scale, sequences of 512 throughout.

    bert-jax pretrain --config configs/roberta.py:base --workdir ...   (variants as in configs/pretrain.py)
"""
import os

from bert_jax.configlib import load_config_file


def _pretrain_config(variant):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py")
    return load_config_file(f"{path}:{variant or ''}")


def get_config(arg=None):
    c = _pretrain_config(arg)
    c.objectives = "mlm"
    c.data.mode = "full-sentences"
    c.optimizer.b2 = 0.98
    if (arg or "tiny") not in ("tiny", "mini"):  # the CPU variants keep their short sequences
        c.data.seq_len, c.data.max_predictions = 512, 80
    return c
