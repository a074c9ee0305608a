"""The objective interface and registry, and the pretraining model that composes objectives.

An objective is one module that calls `register(Objective(...))`. It declares
  - `data_modes`: the `make-data` modes it can train on, and `masking`: what the input pipeline must apply;
  - `denominators(batch)`: counts per loss/metric term computed from the batch alone, so a loss can be normalised
    by the count over the *whole global batch* (exact under gradient accumulation and data parallelism);
  - `forward(ctx)`: runs inside the flax module (so it may create its heads as submodules by name) and returns
    sums per term: `<term>` loss sums and metric sums, each divided by `denominators[<term>]`;
  - `loss_weights`: which terms are losses, with their weights inside the objective (a number, or the name of
    an option that holds it, so a config can change it);
  - optionally `positions(batch)`: the [B, P] positions of the final layer's output its forward reads, taken
    through `ctx.encode_at()`; when every objective of a run declares them, the encoder's last layer runs at
    those positions only (`speed.sparse_final_layer`);
  - optionally `prepare_options(options)` (run once when the set is parsed, e.g. to read a teacher's config)
    and `load_frozen(options)`: variable collections that are inputs, never trained (a distillation teacher);
    the steps take them as an argument and pass them to `model.apply` beside 'params'.
The training loop only ever sees sums and denominators: adding an objective never edits it.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.encoder import Encoder, EncoderOutput
from bert_jax.model.layers import gather_positions

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
    excludes: tuple[str, ...] = ()  # objectives it cannot be combined with (it already contains them)
    positions: Callable[[Batch], Array] | None = None  # the final-layer positions it reads; None: all of them
    prepare_options: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    load_frozen: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None


# 'span' masking emits everything 'mlm' does (masked_positions/ids/weights) plus the span boundaries, so an
# objective that needs token MLM inputs trains on span-masked batches too (SpanBERT's MLM + SBO).
_MASKING_PROVIDES = {"mlm": {"mlm"}, "span": {"mlm", "span"}}


def _pick_masking(needed: set[str]) -> str | None:
    """The one masking kind that gives every objective what it needs ('none' needs nothing); None if none does."""
    needed = needed - {"none"}
    if not needed:
        return "none"
    fits = [k for k, provides in _MASKING_PROVIDES.items() if needed <= provides]
    return min(fits, key=lambda k: len(_MASKING_PROVIDES[k])) if fits else None


_REGISTRY: dict[str, Objective] = {}
# Objectives shipped with the package, imported on first lookup so registration needs no central list edit
# beyond this name -> module table.
_BUILTIN_MODULES = ("mlm", "nsp", "sop", "ltr", "sbo", "electra", "distill", "corrupted")


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
        masking = {o.masking for o in objectives}
        if _pick_masking(masking) is None:
            raise ValueError(f"objectives {spec!r} need different maskings {sorted(masking)}; pick compatible ones")
        for o in objectives:
            clash = sorted(set(o.excludes) & set(names))
            if clash:
                raise ValueError(f"objectives {spec!r}: {o.name!r} already contains {clash}; drop {clash} from it")
        merged = {}
        for o in objectives:
            given = dict((options or {}).get(o.name, {}))
            bad = sorted(set(given) - set(o.options))
            if bad:
                raise ValueError(f"objective_options.{o.name} has unknown key(s) {bad}; valid: {sorted(o.options)}")
            merged[o.name] = {**o.options, **given}
            if o.prepare_options is not None:
                merged[o.name] = dict(o.prepare_options(merged[o.name]))
        return cls(tuple(objectives), tuple(weights), merged)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @property
    def causal(self) -> bool:
        return any(o.causal for o in self.objectives)

    @property
    def masking(self) -> str:
        return _pick_masking({o.masking for o in self.objectives})

    @property
    def data_modes(self) -> tuple[str, ...]:
        """Modes every objective accepts, in the preference order of the most specific objective (the
        first is the default data mode, e.g. 'single' for 'mlm+sbo')."""
        specific = min(self.objectives, key=lambda o: len(o.data_modes))
        return tuple(m for m in specific.data_modes if all(m in o.data_modes for o in self.objectives))

    def reads_final_layer_sparsely(self, speed: SpeedConfig) -> bool:
        """Whether `PretrainModel` asks the encoder for the objectives' positions only (every objective declares
        them and `speed.sparse_final_layer` is on)."""
        return speed.sparse_final_layer and all(o.positions is not None for o in self.objectives)

    def final_layer_positions(self, batch: Batch, speed: SpeedConfig) -> int | None:
        """How many positions the encoder's last layer computes per example: the objectives' `positions` summed
        when it reads them sparsely and the stack is not scanned (a scanned stack computes the layer whole),
        else None (all of them)."""
        if speed.scan_layers or not self.reads_final_layer_sparsely(speed):
            return None
        return sum(int(o.positions(batch).shape[1]) for o in self.objectives)

    def denominators(self, batch: Batch) -> dict[str, Array]:
        out = {}
        for o in self.objectives:
            out.update({k: jnp.asarray(v, jnp.float32) for k, v in o.denominators(batch).items()})
        return out

    @property
    def term_weights(self) -> dict[str, float]:
        """Each loss term's weight in the total: the objective's weight times the term's (number or option)."""
        out = {}
        for objective, weight in zip(self.objectives, self.weights):
            for term, term_weight in objective.loss_weights.items():
                if isinstance(term_weight, str):
                    term_weight = self.options[objective.name][term_weight]
                out[term] = weight * float(term_weight)
        return out

    def load_frozen(self) -> dict[str, Any]:
        """The run's frozen variable collections (host arrays): pass them to the train and eval steps."""
        frozen: dict[str, Any] = {}
        for o in self.objectives:
            if o.load_frozen is not None:
                frozen.update(o.load_frozen(self.options[o.name]))
        return frozen

    def total_loss(self, sums: Mapping[str, Array], denominators: Mapping[str, Array]) -> Array:
        total = jnp.zeros((), jnp.float32)
        for term, weight in self.term_weights.items():
            if weight:  # a term switched off by its weight option may not even be computed
                total = total + weight * sums[term] / jnp.maximum(denominators[term], 1.0)
        return total


@dataclasses.dataclass
class Context:
    """What an objective's forward sees: the module (to create heads), the encoder, the batch, and the encoder's
    output over the batch's own inputs, computed once for all objectives: whole (`encode()`) or, when every
    objective declares `positions`, at those positions only (`encode_at()`, the sparse final layer)."""

    module: nn.Module
    config: ModelConfig
    encoder: Encoder
    batch: Batch
    deterministic: bool
    options: Mapping[str, Any]
    objective: Objective
    shared: dict  # the one encoder pass, memoised across the run's objectives

    def encode(self) -> EncoderOutput:
        if "sparse" in self.shared:
            raise RuntimeError(f"objective {self.objective.name!r} declares `positions`, so it must read the encoder "
                               "through ctx.encode_at(); ctx.encode() would run a second, whole encoder pass")
        if "encoded" not in self.shared:
            b = self.batch
            self.shared["encoded"] = self.encoder(b["input_ids"], b.get("token_type_ids"), b.get("input_mask"),
                                                  b.get("position_ids"), self.deterministic)
        return self.shared["encoded"]

    def encode_at(self) -> Array:
        """The final hidden states [B, P, H] at this objective's `positions(batch)`."""
        if self.objective.positions is None:
            raise RuntimeError(f"objective {self.objective.name!r} calls ctx.encode_at() but declares no positions")
        if "sparse" in self.shared:
            hidden, offsets = self.shared["sparse"]
            start, stop = offsets[self.objective.name]
            return hidden[:, start:stop]
        return gather_positions(self.encode().sequence, self.objective.positions(self.batch))


def _sparse_pass(ctx: Context, objectives: tuple[Objective, ...]) -> None:
    """One encoder pass whose last layer runs at the concatenated positions of all the objectives."""
    parts, offsets, start = [], {}, 0
    for o in objectives:
        positions = o.positions(ctx.batch).astype(jnp.int32)
        parts.append(positions)
        offsets[o.name] = (start, start + positions.shape[1])
        start += positions.shape[1]
    b = ctx.batch
    out = ctx.encoder(b["input_ids"], b.get("token_type_ids"), b.get("input_mask"), b.get("position_ids"),
                      ctx.deterministic, output_positions=jnp.concatenate(parts, axis=1))
    ctx.shared["sparse"] = (out.sequence, offsets)


class PretrainModel(nn.Module):
    """The encoder plus whatever heads the objectives create; returns sums per term."""

    config: ModelConfig
    objectives: ObjectiveSet
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, batch: Batch, deterministic: bool = True) -> dict[str, Array]:
        encoder = Encoder(self.config, speed=self.speed, name="encoder")
        sums: dict[str, Array] = {}
        shared: dict = {}
        objectives = self.objectives.objectives
        sparse = self.objectives.reads_final_layer_sparsely(self.speed)
        for i, objective in enumerate(objectives):
            ctx = Context(self, self.config, encoder, batch, deterministic, self.objectives.options[objective.name],
                          objective, shared)
            if sparse and i == 0:
                _sparse_pass(ctx, objectives)
            sums.update(objective.forward(ctx))
        return sums


def weighted_cross_entropy(logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
    """Sums of -log p(target) * weight and of correct * weight, in float32.

    Correct means the target's logit is the largest (a tie counts as correct, where argmax would pick the lower
    index): a max reduction instead of argmax, whose (value, index) reduction XLA:CPU runs ~90x slower over a
    30522-wide vocab (benchmarks/NOTES.md, section 14)."""
    logits = logits.astype(jnp.float32)
    top = jnp.max(logits, axis=-1)
    shifted = jax.lax.stop_gradient(top)
    log_z = shifted + jnp.log(jnp.sum(jnp.exp(logits - shifted[..., None]), axis=-1))
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    loss = jnp.sum((log_z - target_logit) * weights)
    correct = jnp.sum((target_logit >= top).astype(jnp.float32) * weights)
    return loss, correct
