"""Fine-tuning and evaluation: task readers, featurizers, metrics, models, the multi-seed protocol."""
