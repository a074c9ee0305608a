"""ELECTRA: a generator of 1/4 the discriminator's width fills 15% masked positions; the discriminator
learns replaced-token detection (loss = generator MLM + 50 x RTD).

    bert-jax pretrain --config configs/electra.py:small --workdir ...

Variants: 'small' (ELECTRA-Small: 12 layers, hidden 256, 4 heads, E=128, batch 128, lr 5e-4, 1M steps),
and every configs/pretrain.py variant (tiny, mini, base, large, ...) with ELECTRA's objective on top.
Masked positions are [MASK] 85% of the time and kept 15% (ELECTRA's pretraining helpers; no random tokens).
"""
from bert_jax.configlib import objective_options, sibling_config


def get_config(arg=None):
    small = arg == "small"
    c = sibling_config(__file__, "pretrain.py", "base" if small else arg)
    c.objectives = "electra"
    c.objective_options = objective_options(c.objectives)  # bert_jax/objectives/electra.py's defaults
    c.data.mode = "full-sentences"
    c.data.mask_ratio, c.data.random_ratio, c.data.keep_ratio = 0.85, 0.0, 0.15
    if small:
        c.model.num_layers, c.model.hidden_size, c.model.num_heads = 12, 256, 4
        c.model.intermediate_size, c.model.embedding_size = 1024, 128
        c.train.global_batch_size = 128
        c.optimizer.learning_rate, c.optimizer.warmup_steps = 5e-4, 10_000
        c.train.steps = 1_000_000
    return c
