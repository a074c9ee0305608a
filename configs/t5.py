"""T5's span corruption on our encoder: 15% of the tokens in spans of mean length 3 replaced by sentinels, a shallow
decoder owned by the objective predicting the sentinels followed by their spans.

    bert-jax pretrain --config configs/t5.py:base --workdir ...   (variants as in configs/pretrain.py)

Contiguous text (no sentence-pair loss) and T5's bucketed relative position bias (`model.position_embedding=
relative`). `objective_options.span_corruption.{noise_density, mean_span_length, decoder_layers}` change the
corruption and the decoder; `bert-jax export` writes the encoder alone.
"""
from bert_jax.configlib import objective_options, sibling_config


def get_config(arg=None):
    c = sibling_config(__file__, "pretrain.py", arg)
    c.objectives = "span_corruption"
    c.objective_options = objective_options(c.objectives)  # bert_jax/objectives/span_corruption.py's defaults
    c.data.mode = "full-sentences"
    c.model.position_embedding = "relative"
    return c
