"""The objective interface and registry, and the pretraining model that composes objectives.

An objective is one module that calls `register(Objective(...))`. It declares
  - `data_modes`: the `make-data` modes it can train on, and `masking`: what the input pipeline must apply;
  - `denominators(batch)`: counts per loss/metric term computed from the batch alone, so a loss can be normalised
    by the count over the *whole global batch* (exact under gradient accumulation and data parallelism);
  - `forward(ctx)`: runs inside the flax module (so it may create its heads as submodules by name) and returns
    sums per term: `<term>` loss sums and metric sums, each divided by `denominators[<term>]`;
  - `loss_weights`: which terms are losses, with their weights inside the objective.
The training loop only ever sees sums and denominators: adding an objective never edits it.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.model.config import ModelConfig
from bert_jax.model.encoder import Encoder, EncoderOutput

Array = jax.Array
Batch = Mapping[str, Array]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    data_modes: tuple[str, ...]
    masking: str  # 'mlm' (token MLM; the data config may choose 'wwm'), 'span', or 'none'
    denominators: Callable[[Batch], dict[str, Array]]
    forward: Callable[["Context"], dict[str, Array]]
    loss_weights: Mapping[str, float]
    causal: bool = False  # needs left-to-right attention
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # defaults, overridable by config


_REGISTRY: dict[str, Objective] = {}
# Objectives shipped with the package, imported on first lookup so registration needs no central list edit
# beyond this name -> module table.
_BUILTIN_MODULES = ("mlm", "nsp", "sop", "ltr", "sbo", "electra", "distill")


def register(objective: Objective) -> Objective:
    if objective.name in _REGISTRY and _REGISTRY[objective.name] is not objective:
        raise ValueError(f"objective {objective.name!r} is registered twice")
    _REGISTRY[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    if name not in _REGISTRY:
        for module in _BUILTIN_MODULES:
            try:
                importlib.import_module(f"bert_jax.objectives.{module}")
            except ModuleNotFoundError as e:
                if e.name != f"bert_jax.objectives.{module}":
                    raise
    if name not in _REGISTRY:
        raise ValueError(f"objective {name!r} is unknown; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class ObjectiveSet:
    """The weighted objectives of one run, parsed from a spec such as 'mlm+nsp' or 'mlm+0.5*sop'."""

    objectives: tuple[Objective, ...]
    weights: tuple[float, ...]
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str, options: Mapping[str, Mapping[str, Any]] | None = None) -> "ObjectiveSet":
        objectives, weights = [], []
        for term in spec.replace(" ", "").split("+"):
            weight, _, name = term.rpartition("*")
            try:
                weights.append(float(weight) if weight else 1.0)
            except ValueError:
                raise ValueError(f"objective term {term!r} in {spec!r}: write it as NAME or WEIGHT*NAME") from None
            objectives.append(get_objective(name))
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives {spec!r} name one objective twice")
        causal = {o.causal for o in objectives}
        if len(causal) > 1:
            raise ValueError(f"objectives {spec!r} mix causal and bidirectional attention; train them separately")
        masking = {o.masking for o in objectives} - {"none"}
        if len(masking) > 1:
            raise ValueError(f"objectives {spec!r} need different maskings {sorted(masking)}; pick compatible ones")
        merged = {o.name: {**o.options, **dict((options or {}).get(o.name, {}))} for o in objectives}
        return cls(tuple(objectives), tuple(weights), merged)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @property
    def causal(self) -> bool:
        return any(o.causal for o in self.objectives)

    @property
    def masking(self) -> str:
        kinds = {o.masking for o in self.objectives} - {"none"}
        return kinds.pop() if kinds else "none"

    @property
    def data_modes(self) -> tuple[str, ...]:
        modes = set(self.objectives[0].data_modes)
        for o in self.objectives[1:]:
            modes &= set(o.data_modes)
        return tuple(sorted(modes))

    def denominators(self, batch: Batch) -> dict[str, Array]:
        out = {}
        for o in self.objectives:
            out.update({k: jnp.asarray(v, jnp.float32) for k, v in o.denominators(batch).items()})
        return out

    def total_loss(self, sums: Mapping[str, Array], denominators: Mapping[str, Array]) -> Array:
        total = jnp.zeros((), jnp.float32)
        for objective, weight in zip(self.objectives, self.weights):
            for term, term_weight in objective.loss_weights.items():
                total = total + weight * term_weight * sums[term] / jnp.maximum(denominators[term], 1.0)
        return total


@dataclasses.dataclass
class Context:
    """What an objective's forward sees: the module (to create heads), the encoder, the batch, and a memoised
    encoder pass over the batch's own inputs (objectives sharing it pay for one encoder pass)."""

    module: nn.Module
    config: ModelConfig
    encoder: Encoder
    batch: Batch
    deterministic: bool
    options: Mapping[str, Any]
    _encoded: EncoderOutput | None = None

    def encode(self) -> EncoderOutput:
        if self._encoded is None:
            b = self.batch
            self._encoded = self.encoder(b["input_ids"], b.get("token_type_ids"), b.get("input_mask"),
                                         b.get("position_ids"), self.deterministic)
        return self._encoded


class PretrainModel(nn.Module):
    """The encoder plus whatever heads the objectives create; returns sums per term."""

    config: ModelConfig
    objectives: ObjectiveSet

    @nn.compact
    def __call__(self, batch: Batch, deterministic: bool = True) -> dict[str, Array]:
        encoder = Encoder(self.config, name="encoder")
        sums: dict[str, Array] = {}
        shared: dict[str, EncoderOutput] = {}
        for objective in self.objectives.objectives:
            ctx = Context(self, self.config, encoder, batch, deterministic, self.objectives.options[objective.name],
                          shared.get("encoded"))
            sums.update(objective.forward(ctx))
            if ctx._encoded is not None:
                shared["encoded"] = ctx._encoded
        return sums


def weighted_cross_entropy(logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
    """Sums of -log p(target) * weight and of correct * weight, in float32."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    loss = jnp.sum((log_z - target_logit) * weights)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights)
    return loss, correct
