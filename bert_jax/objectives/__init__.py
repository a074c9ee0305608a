"""Pretraining objectives, one module each, registered by name (see base.py and docs/objectives.md)."""
from bert_jax.objectives.base import Objective, ObjectiveSet, get_objective, register

__all__ = ["Objective", "ObjectiveSet", "get_objective", "register"]
