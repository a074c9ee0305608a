"""Training machinery: optimiser chain, gradient accumulation, checkpointing, train step and loop."""
