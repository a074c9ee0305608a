"""Distillation: a student learns from a frozen MLM teacher's softened predictions (temperature 2) plus the
hard MLM loss; set the teacher (a pretraining workdir, a params file or a transformers checkpoint dir):

    bert-jax pretrain --config configs/distill.py:base --workdir ... \\
        --config.objective_options.distill.teacher=/path/to/teacher

Variants as in configs/pretrain.py; at 'base' the student is DistilBERT's shape (6 layers of BERT-base).
Hidden-state matching is off by default (--config.objective_options.distill.hidden_weight=1.0 turns it on).
"""
from bert_jax.configlib import objective_options, sibling_config


def get_config(arg=None):
    c = sibling_config(__file__, "pretrain.py", arg)
    c.objectives = "distill"
    c.objective_options = objective_options(c.objectives)  # bert_jax/objectives/distill.py's defaults
    c.data.mode = "full-sentences"
    if arg in ("base", "base_phase2"):
        c.model.num_layers = 6
    return c
