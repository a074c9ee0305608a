"""bert_jax: BERT-family encoder pretraining in JAX/Flax."""

__version__ = "0.1.0"
