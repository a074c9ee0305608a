"""Knowledge distillation into the run's model (the student) from a frozen MLM teacher.

Terms, each with a weight option (0 switches a term off):
  distill_soft_loss    KL(teacher || student) of the MLM distributions at the masked positions, both softened
                       by `temperature` T, times T^2 (so its gradient scale does not depend on T);
  distill_hidden_loss  mean squared error between the last hidden states at real tokens, through a learned
                       projection `distill_projection` when the widths differ (weight 0 by default);
  mlm_loss             the ordinary (hard-label) MLM loss of the student, under the usual names and head, so the
                       student's params are a standard pretraining tree ('distill' replaces 'mlm').

The teacher is a BERT MLM model read from `teacher` by `bert_jax.weights.load_weights`: a pretraining
workdir[@STEP] (or one of its checkpoint step directories), a params file (`bert-jax convert`), or a transformers
checkpoint directory. It must share the student's vocabulary.

Design: the teacher is a *frozen variable collection* 'teacher' ({'encoder', 'mlm_head'} as in any pretraining
tree) that the train/eval steps take as an argument (`ObjectiveSet.load_frozen()` reads it once on the host).
It is never in `params`, so the optimiser never sees it, no gradient is taken with respect to it, and the
train state (what is checkpointed) does not contain it; passing it as an argument rather than closing over
it keeps a 100M-parameter teacher out of the compiled program. At init (no teacher given) the collection is
created from the teacher's config, only for shapes; that copy is dropped with everything but 'params'.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import model_flops
from bert_jax.model.config import ModelConfig
from bert_jax.model.encoder import Encoder
from bert_jax.model.heads import MLM_HEAD, MLMHead
from bert_jax.model.layers import dense
from bert_jax.objectives.base import Flops, Objective, register, weighted_cross_entropy
from bert_jax.objectives.mlm import ALL_MODES
from bert_jax.weights import ENCODER, WeightsError, load_weights

TEACHER = "teacher"  # the frozen collection's name


class TeacherError(ValueError):
    """A teacher path or setting the user must fix; the message says how."""


class Teacher(nn.Module):
    """The teacher's encoder and MLM head, named as in a pretraining params tree."""

    config: ModelConfig

    @nn.compact
    def __call__(self, batch):
        encoder = Encoder(self.config, name="encoder")
        out = encoder(batch["input_ids"], batch.get("token_type_ids"), batch.get("input_mask"),
                      batch.get("position_ids"), True)
        logits = MLMHead(self.config, name="mlm_head")(out.sequence, encoder.attend, batch["masked_positions"])
        return logits, out.sequence


# ----------------------------------------------------------------------------------------- loading


def read_teacher(path: str, with_params: bool = True) -> tuple[ModelConfig, dict | None]:
    """(teacher config, {'encoder', 'mlm_head'} numpy params or None) from any source `load_weights` reads."""
    if not path:
        raise TeacherError("distill needs a teacher: set objective_options.distill.teacher to a pretraining "
                           "workdir, a params file or a transformers checkpoint directory")
    try:
        weights = load_weights(path, "distill.teacher", params=with_params, scan_layers=False)  # the teacher runs per layer
    except WeightsError as e:
        raise TeacherError(str(e)) from None
    config, params = weights.config, weights.params
    if params is not None and not {ENCODER, "mlm_head"} <= set(params):
        raise TeacherError(f"distill.teacher={path!r} has no MLM head (params {sorted(params)}); "
                           "the teacher must be an MLM-pretrained model")
    params = None if params is None else {ENCODER: params[ENCODER], "mlm_head": params["mlm_head"]}
    return config.replace(dropout_rate=0.0, attention_dropout_rate=0.0, causal=False), params


def prepare_options(options):
    config, _ = read_teacher(options["teacher"], with_params=False)
    return {**options, "teacher_config": config.to_dict()}


def load_frozen(options):
    _, params = read_teacher(options["teacher"])
    return {TEACHER: {"params": params}}  # the collection holds one variable, 'params'; see teacher_outputs


# ----------------------------------------------------------------------------------------- objective


def soft_cross_entropy(student_logits, teacher_logits, temperature, weights):
    """Sum over weighted positions of KL(softmax(t/T) || softmax(s/T)) * T^2."""
    t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    p_t = jax.nn.softmax(t, axis=-1)
    kl = jnp.sum(p_t * (jax.nn.log_softmax(t, axis=-1) - jax.nn.log_softmax(s, axis=-1)), axis=-1)
    return jnp.sum(kl * weights) * temperature ** 2


def denominators(batch):
    masked = batch["masked_weights"].sum()
    tokens = (batch["input_mask"] != 0).sum()
    return {"distill_soft_loss": masked, "distill_hidden_loss": tokens, "mlm_loss": masked, "mlm_accuracy": masked}


def teacher_outputs(ctx, teacher_cfg: ModelConfig):
    module, batch = ctx.module, ctx.batch
    if module.is_initializing() and not module.has_variable(TEACHER, "params"):
        module.variable(TEACHER, "params", lambda: Teacher(teacher_cfg, parent=None).init(
            module.make_rng("params"), batch)["params"])
    if not module.has_variable(TEACHER, "params"):
        raise TeacherError("distill: the step got no teacher; pass objectives.load_frozen() to the train/eval "
                           "step (its `frozen` argument)")
    params = module.get_variable(TEACHER, "params")
    logits, hidden = Teacher(teacher_cfg, parent=None).apply({"params": params}, batch)
    return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(hidden)


def forward(ctx):
    b, opts, cfg = ctx.batch, ctx.options, ctx.config
    teacher_cfg = ModelConfig.from_dict(opts["teacher_config"])
    if teacher_cfg.vocab_size != cfg.vocab_size:
        raise TeacherError(f"distill: the teacher's vocab_size {teacher_cfg.vocab_size} != the student's "
                           f"{cfg.vocab_size}; distil over the same vocabulary")
    t_logits, t_hidden = teacher_outputs(ctx, teacher_cfg)
    logits = MLMHead(cfg, name=MLM_HEAD)(ctx.hidden, ctx.encoder.attend, b["masked_positions"])
    loss, correct = weighted_cross_entropy(logits, b["masked_ids"], b["masked_weights"])
    out = {"mlm_loss": loss, "mlm_accuracy": correct,
           "distill_soft_loss": soft_cross_entropy(logits, t_logits, float(opts["temperature"]), b["masked_weights"])}
    hidden = jnp.zeros((), jnp.float32)
    if float(opts["hidden_weight"]):
        student = ctx.hidden
        if cfg.hidden_size != teacher_cfg.hidden_size:
            student = dense(cfg, teacher_cfg.hidden_size, -1, ("embed", "mlp"), ("mlp",), "distill_projection")(student)
        err = jnp.mean(jnp.square(student.astype(jnp.float32) - t_hidden.astype(jnp.float32)), axis=-1)
        hidden = jnp.sum(err * (b["input_mask"] != 0))
    out["distill_hidden_loss"] = hidden
    return out


def flops(cfg, seq_len, predictions, options):
    """The student's MLM head (and the hidden-state projection when used), trained; the teacher's forward (its
    encoder and MLM head at the masked positions), frozen: forward only. Before the teacher exists (planning a
    grid: `ObjectiveSet.parse(..., prepare=False)` leaves no teacher_config) it is taken to be the student's size."""
    teacher = ModelConfig.from_dict(options["teacher_config"]) if "teacher_config" in options else cfg
    trained = model_flops.lm_head(cfg, predictions)
    if float(options["hidden_weight"]) and cfg.hidden_size != teacher.hidden_size:
        trained += 2.0 * seq_len * cfg.hidden_size * teacher.hidden_size
    return Flops(trained=trained, frozen=model_flops.encoder(teacher, seq_len) + model_flops.lm_head(teacher, predictions))


DISTILL = register(Objective(
    name="distill", data_modes=ALL_MODES, masking="mlm", denominators=denominators, forward=forward,
    loss_weights={"distill_soft_loss": "soft_weight", "distill_hidden_loss": "hidden_weight",
                  "mlm_loss": "hard_weight"},
    options={"teacher": "", "temperature": 2.0, "soft_weight": 1.0, "hidden_weight": 0.0, "hard_weight": 1.0},
    excludes=("mlm",), prepare_options=prepare_options, load_frozen=load_frozen, flops=flops))
