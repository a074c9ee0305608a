"""Sentence-order prediction (ALBERT): are segments A and B in their original order (0) or swapped (1)?

Same head shape as NSP and the same pooler (so a checkpoint's pooler serves either), trained on
`make-data --mode sentence-order`, where B always follows A in the document and the pair is swapped
with probability 0.5: the topic is the same either way, so the model must learn coherence, not topic.
"""
from bert_jax.objectives.base import Objective, register
from bert_jax.objectives.nsp import first_position, pooler_flops, sentence_pair_denominators, sentence_pair_forward

SOP = register(Objective(name="sop", data_modes=("sentence-order",), masking="none",
                         denominators=sentence_pair_denominators("sop"), forward=sentence_pair_forward("sop"),
                         loss_weights={"sop_loss": 1.0}, reads=first_position, flops=pooler_flops))
