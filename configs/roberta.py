"""RoBERTa: MLM only (no NSP) on full sentences packed across documents, masks drawn anew every epoch
(dynamic masking: the pipeline's default), Adam beta2 0.98; at scale, sequences of 512 throughout.

    bert-jax pretrain --config configs/roberta.py:base --workdir ...   (variants as in configs/pretrain.py)
"""
from bert_jax.configlib import sibling_config


def get_config(arg=None):
    c = sibling_config(__file__, "pretrain.py", arg)
    c.objectives = "mlm"
    c.data.mode = "full-sentences"
    c.optimizer.b2 = 0.98
    if (arg or "tiny") not in ("tiny", "mini"):  # the CPU variants keep their short sequences
        c.data.seq_len, c.data.max_predictions = 512, 80
    return c
