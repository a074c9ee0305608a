"""The objective interface and registry.

An objective is one module, `bert_jax/objectives/<name>.py`, that calls `register(Objective(...))`; it is found
by its name (nothing else to edit). It declares
  - `data_modes`: the `make-data` modes it can train on, and `masking`: what the input pipeline must apply;
  - `reads`: what it reads of the encoder's final layer over the batch: a function batch -> [B, P] positions,
    "sequence" (all of it, the default) or "nothing" (it runs its own passes). The model (model/pretraining.py)
    runs the encoder once for all objectives and hands each its `ctx.hidden`;
  - `denominators(batch)`: counts per loss/metric term computed from the batch alone, so a loss can be normalised
    by the count over the *whole global batch* (exact under gradient accumulation and data parallelism);
  - `forward(ctx)`: runs inside the flax module (so it may create its heads as submodules by name) and returns
    sums per term: `<term>` loss sums and metric sums, each divided by `denominators[<term>]`;
  - `loss_weights`: which terms are losses, with their weights inside the objective (a number, or the name of
    an option that holds it, so a config can change it);
  - `options`: its options and their defaults (the only place they are written; configs set what they change);
  - optionally `prepare_options(options)` (run once when the set is parsed, e.g. to read a teacher's config)
    and `load_frozen(options)`: variable collections that are inputs, never trained (a distillation teacher);
    the steps take them as an argument and pass them to `model.apply` beside 'params';
  - optionally `masking_options(options)`: the fields of the pipeline's MaskingConfig its options set (plm's K,
    span_corruption's noise density), so an option of the objective reaches the host-side masking;
  - optionally `flops(config, seq_len, predictions, options)`: the forward matmul FLOPs per sequence of what it
    adds to the one encoder pass every run makes (its heads, ELECTRA's generator, PLM's query stream, T5's
    decoder, a teacher's forward): a number (trained: a step costs 3x) or `Flops` (trained and frozen parts).
    `bert_jax.train.flops` sums the encoder and every objective's term (`bert_jax.model_flops` has the parts);
    an objective without it adds nothing to the count.
The training loop only ever sees sums and denominators: adding an objective never edits it.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from bert_jax.model.pretraining import READS_NOTHING, READS_SEQUENCE, Context

Array = jax.Array
Batch = Mapping[str, Array]


@dataclasses.dataclass(frozen=True)
class Flops:
    """Forward FLOPs per sequence: `trained` runs forward and backward in a step (3x), `frozen` (a teacher) only
    forward."""

    trained: float = 0.0
    frozen: float = 0.0

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.trained + other.trained, self.frozen + other.frozen)

    @property
    def forward(self) -> float:
        return self.trained + self.frozen

    @property
    def train_step(self) -> float:
        """A training step's FLOPs: forward + backward (2x forward) of the trained part, forward of the frozen."""
        return 3.0 * self.trained + self.frozen


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    data_modes: tuple[str, ...]
    masking: str  # 'mlm' (token MLM; the data config may choose 'wwm'), 'span', 'permutation', 't5_spans' or 'none'
    denominators: Callable[[Batch], dict[str, Array]]
    forward: Callable[[Context], dict[str, Array]]
    loss_weights: Mapping[str, float]
    causal: bool = False  # needs left-to-right attention
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # defaults, overridable by config
    excludes: tuple[str, ...] = ()  # objectives it cannot be combined with (it already contains them)
    reads: Callable[[Batch], Array] | str = READS_SEQUENCE  # positions, READS_SEQUENCE or READS_NOTHING
    prepare_options: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    load_frozen: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    masking_options: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    flops: Callable[[Any, int, int, Mapping[str, Any]], "float | Flops"] | None = None  # (ModelConfig, L, P, options)


# 'span' masking emits everything 'mlm' does (masked_positions/ids/weights) plus the span boundaries, so an
# objective that needs token MLM inputs trains on span-masked batches too (SpanBERT's MLM + SBO).
_MASKING_PROVIDES = {"mlm": {"mlm"}, "span": {"mlm", "span"}, "permutation": {"permutation"},
                     "t5_spans": {"t5_spans"}}


def _pick_masking(needed: set[str]) -> str | None:
    """The one masking kind that gives every objective what it needs ('none' needs nothing); None if none does."""
    needed = needed - {"none"}
    if not needed:
        return "none"
    fits = [k for k, provides in _MASKING_PROVIDES.items() if needed <= provides]
    return min(fits, key=lambda k: len(_MASKING_PROVIDES[k])) if fits else None


_REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    if objective.name in _REGISTRY and _REGISTRY[objective.name] is not objective:
        raise ValueError(f"objective {objective.name!r} is registered twice")
    if not (callable(objective.reads) or objective.reads in (READS_SEQUENCE, READS_NOTHING)):
        raise ValueError(f"objective {objective.name!r}: reads={objective.reads!r} must be a positions function, "
                         f"{READS_SEQUENCE!r} or {READS_NOTHING!r}")
    _REGISTRY[objective.name] = objective
    return objective


def _import_all() -> None:
    """Every module of this package, so each registers its objectives (for the list in an error message)."""
    for info in pkgutil.iter_modules([os.path.dirname(__file__)]):
        importlib.import_module(f"{__package__}.{info.name}")


def get_objective(name: str) -> Objective:
    """The objective registered as `name`, imported from `bert_jax/objectives/<name>.py` on first use."""
    if name not in _REGISTRY and name.isidentifier():
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
    if name not in _REGISTRY:
        _import_all()
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
    def parse(cls, spec: str, options: Mapping[str, Mapping[str, Any]] | None = None,
              prepare: bool = True) -> "ObjectiveSet":
        """`prepare=False` skips `prepare_options` (it may read files that do not exist yet: planning a grid whose
        distillation teacher is still to be trained)."""
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
        if not cls(tuple(objectives), tuple(weights)).data_modes:
            modes = {o.name: list(o.data_modes) for o in objectives}
            raise ValueError(f"objectives {spec!r}: no make-data mode serves them all ({modes}); combine objectives "
                             "that share a data mode")
        merged = {}
        for o in objectives:
            given = dict((options or {}).get(o.name, {}))
            bad = sorted(set(given) - set(o.options))
            if bad:
                raise ValueError(f"objective_options.{o.name} has unknown key(s) {bad}; valid: {sorted(o.options)}")
            merged[o.name] = {**o.options, **given}
            if prepare and o.prepare_options is not None:
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
    def masking_options(self) -> dict[str, Any]:
        """MaskingConfig fields that the objectives' options set (e.g. plm's permutation_k)."""
        out: dict[str, Any] = {}
        for o in self.objectives:
            if o.masking_options is not None:
                out.update(o.masking_options(self.options[o.name]))
        return out

    @property
    def data_modes(self) -> tuple[str, ...]:
        """Modes every objective accepts, in the preference order of the most specific objective (the
        first is the default data mode, e.g. 'single' for 'mlm+sbo')."""
        specific = min(self.objectives, key=lambda o: len(o.data_modes))
        return tuple(m for m in specific.data_modes if all(m in o.data_modes for o in self.objectives))

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

    def flops(self, config: Any, seq_len: int, predictions: int) -> Flops:
        """The objectives' forward FLOPs per sequence beyond the shared encoder pass."""
        total = Flops()
        for o in self.objectives:
            if o.flops is not None:
                term = o.flops(config, seq_len, predictions, self.options[o.name])
                total = total + (term if isinstance(term, Flops) else Flops(trained=float(term)))
        return total

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
