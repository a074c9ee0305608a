"""Pretraining objectives, one module each, registered by name (see base.py and docs/objectives.md)."""
from bert_jax.objectives.base import Context, Objective, ObjectiveSet, PretrainModel, get_objective, register

__all__ = ["Context", "Objective", "ObjectiveSet", "PretrainModel", "get_objective", "register"]
