"""Knowledge distillation into the run's model (the student) from a frozen MLM teacher.

Terms, each with a weight option (0 switches a term off):
  distill_soft_loss    KL(teacher || student) of the MLM distributions at the masked positions, both softened
                       by `temperature` T, times T^2 (so its gradient scale does not depend on T);
  distill_hidden_loss  mean squared error between the last hidden states at real tokens, through a learned
                       projection `distill_projection` when the widths differ (weight 0 by default);
  mlm_loss             the ordinary (hard-label) MLM loss of the student, under the usual names and head, so the
                       student's params are a standard pretraining tree ('distill' replaces 'mlm').

The teacher is a BERT MLM model read from `teacher`: a pretraining workdir (or one of its checkpoint step
directories), a params file (`bert-jax convert`, `bert_jax.interop.load_params`), or a transformers checkpoint
directory (`bert_jax.interop.load_hf_checkpoint`). It must share the student's vocabulary.

Design: the teacher is a *frozen variable collection* 'teacher' ({'encoder', 'mlm_head'} as in any pretraining
tree) that the train/eval steps take as an argument (`ObjectiveSet.load_frozen()` reads it once on the host).
It is never in `params`, so the optimiser never sees it, no gradient is taken with respect to it, and the
train state (what is checkpointed) does not contain it; passing it as an argument rather than closing over
it keeps a 100M-parameter teacher out of the compiled program. At init (no teacher given) the collection is
created from the teacher's config, only for shapes; that copy is dropped with everything but 'params'.
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.model.config import ModelConfig
from bert_jax.model.encoder import Encoder
from bert_jax.model.heads import MLMHead
from bert_jax.model.layers import dense
from bert_jax.model.params import is_scanned, to_unscanned
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy
from bert_jax.objectives.mlm import ALL_MODES

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


def _checkpoint_dir(path: str) -> tuple[str, int | None]:
    """(checkpoints directory, step or None for the newest) of a workdir or a step directory inside one."""
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    name = os.path.basename(os.path.normpath(path))
    return os.path.dirname(os.path.normpath(path)), int(name)


def _is_checkpoint(path: str) -> bool:
    name = os.path.basename(os.path.normpath(path))
    return os.path.isdir(os.path.join(path, "checkpoints")) or (name.isdigit() and os.path.isdir(path))


def _restore(path: str, with_params: bool) -> tuple[ModelConfig, dict | None]:
    from bert_jax.train import checkpoint as ckpt

    directory, step = _checkpoint_dir(path)
    complete = ckpt.complete_steps(directory)
    step = step if step is not None else (complete[-1] if complete else None)
    if step is None or step not in complete:
        raise TeacherError(f"distill.teacher={path!r} holds no complete checkpoint; point it at a pretraining workdir")
    manager = ckpt.open_manager(directory, async_save=False)
    args = {"config": ckpt.ocp.args.JsonRestore()}
    if with_params:
        meta = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), meta)
        args["state"] = ckpt.ocp.args.StandardRestore(target)
    restored = manager.restore(step, args=ckpt.ocp.args.Composite(**args))
    config = ModelConfig.from_dict({**restored["config"]["model"], "causal": False})
    params = None
    if with_params:
        params = restored["state"]["params"]
        params = {k: jax.tree.map(np.asarray, params[k]) for k in ("encoder", "mlm_head") if k in params}
        if is_scanned(params):  # the teacher runs the per-layer stack (SpeedConfig's default)
            params = to_unscanned(params)
    return config, params


def read_teacher(path: str, with_params: bool = True) -> tuple[ModelConfig, dict | None]:
    """(teacher config, {'encoder', 'mlm_head'} numpy params or None) from any of the supported sources."""
    if not path:
        raise TeacherError("distill needs a teacher: set objective_options.distill.teacher to a pretraining "
                           "workdir, a params file or a transformers checkpoint directory")
    if os.path.isfile(path):
        from bert_jax.interop import load_params
        config, params = load_params(path)
    elif _is_checkpoint(path):
        config, params = _restore(path, with_params)
    elif os.path.isfile(os.path.join(path, "config.json")):
        from bert_jax.interop import config_from_hf, load_hf_checkpoint
        if not with_params:
            with open(os.path.join(path, "config.json")) as f:
                return config_from_hf(json.load(f)), None
        config, params = load_hf_checkpoint(path)
    else:
        raise TeacherError(f"distill.teacher={path!r} is neither a params file, a pretraining workdir nor a "
                           "transformers checkpoint directory; check the path")
    if params is not None and not {"encoder", "mlm_head"} <= set(params):
        raise TeacherError(f"distill.teacher={path!r} has no MLM head (params {sorted(params)}); "
                           "the teacher must be an MLM-pretrained model")
    params = None if params is None else {"encoder": params["encoder"], "mlm_head": params["mlm_head"]}
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
    encoded = ctx.encode()
    logits = MLMHead(cfg, name="mlm_head")(encoded.sequence, ctx.encoder.attend, b["masked_positions"])
    loss, correct = weighted_cross_entropy(logits, b["masked_ids"], b["masked_weights"])
    out = {"mlm_loss": loss, "mlm_accuracy": correct,
           "distill_soft_loss": soft_cross_entropy(logits, t_logits, float(opts["temperature"]), b["masked_weights"])}
    hidden = jnp.zeros((), jnp.float32)
    if float(opts["hidden_weight"]):
        student = encoded.sequence
        if cfg.hidden_size != teacher_cfg.hidden_size:
            student = dense(cfg, teacher_cfg.hidden_size, -1, ("embed", "mlp"), ("mlp",), "distill_projection")(student)
        err = jnp.mean(jnp.square(student.astype(jnp.float32) - t_hidden.astype(jnp.float32)), axis=-1)
        hidden = jnp.sum(err * (b["input_mask"] != 0))
    out["distill_hidden_loss"] = hidden
    return out


DISTILL = register(Objective(
    name="distill", data_modes=ALL_MODES, masking="mlm", denominators=denominators, forward=forward,
    loss_weights={"distill_soft_loss": "soft_weight", "distill_hidden_loss": "hidden_weight",
                  "mlm_loss": "hard_weight"},
    options={"teacher": "", "temperature": 2.0, "soft_weight": 1.0, "hidden_weight": 0.0, "hard_weight": 1.0},
    excludes=("mlm",), prepare_options=prepare_options, load_frozen=load_frozen))
