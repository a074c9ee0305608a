"""Pretraining configs: `--config configs/pretrain.py:<variant>`.

Variants: tiny and mini (CPU, the built-in corpus); mini_text (CPU, real text: the recipe that experiments/README.md
"The mini recipe on real text" chose by measured learning curves; pass --config.data.path and data.eval_path, make-data
directories built with an 8k WordPiece vocab trained on the corpus); base and large (the BERT paper's recipe: batch 256,
lr 1e-4, 10k warm-up, linear decay, weight decay 0.01, dropout 0.1, 1M steps; phase 1 at seq 128 for 90% of
steps, phase 2 at seq 512 from phase 1's checkpoint: base_phase2 / large_phase2).
"""
import ml_collections

from bert_jax.configlib import objective_options
from bert_jax.model.config import PRESETS, ModelConfig, SpeedConfig

VARIANTS = {
    "tiny": dict(model_size="tiny", global_batch_size=32, seq_len=128, steps=400, learning_rate=1e-3,
                 warmup_steps=40, max_predictions=0),
    "mini": dict(model_size="mini", global_batch_size=32, seq_len=128, steps=2000, learning_rate=5e-4,
                 warmup_steps=200, max_predictions=0),
    # 8192 x 32 x 128 = 32M tokens
    "mini_text": dict(model_size="L4_H192_A3", global_batch_size=32, seq_len=128, steps=8192, learning_rate=2e-3,
                      warmup_steps=819, max_predictions=0),
    "base": dict(model_size="base", global_batch_size=256, seq_len=128, steps=900_000, learning_rate=1e-4,
                 warmup_steps=10_000, max_predictions=0),
    "large": dict(model_size="large", global_batch_size=256, seq_len=128, steps=900_000, learning_rate=1e-4,
                  warmup_steps=10_000, max_predictions=0),
    # Phase two: 10% of the paper's 1M steps at seq 512 (set train.init_from to phase one's workdir).
    "base_phase2": dict(model_size="base", global_batch_size=256, seq_len=512, steps=100_000, learning_rate=1e-4,
                        warmup_steps=1_000, max_predictions=80),
    "large_phase2": dict(model_size="large", global_batch_size=256, seq_len=512, steps=100_000, learning_rate=1e-4,
                         warmup_steps=1_000, max_predictions=80),
}


def model_config(size: str, **overrides) -> ml_collections.ConfigDict:
    """Every ModelConfig field, sized by the named size in PRESETS: the model section holds the model as built, so
    each field is overridden by itself (--config.model.num_layers=4) and no size is stated twice."""
    c = ml_collections.ConfigDict({**ModelConfig(**PRESETS[size]).to_dict(), **overrides})
    if c.embedding_size is None:  # None (= hidden_size) typed as int, so --config.model.embedding_size=128 parses
        c.embedding_size = ml_collections.config_dict.placeholder(int)
    return c


def speed_config() -> ml_collections.ConfigDict:
    """How the model is computed (never what it computes): bert_jax.model.config.SpeedConfig's fields."""
    return ml_collections.ConfigDict(SpeedConfig().to_dict())


def get_config(arg=None):
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/pretrain.py; choose one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    on_cpu = variant in ("tiny", "mini", "mini_text")
    c = ml_collections.ConfigDict()
    c.objectives = "mlm+nsp"
    c.objective_options = objective_options(c.objectives)  # per objective, e.g. electra.generator_fraction
    # vocab_size 0 = take it from the dataset's manifest (the built-in corpus trains its own vocab).
    c.model = model_config(v["model_size"], vocab_size=0 if on_cpu else 30522)
    c.speed = speed_config()
    c.data = ml_collections.ConfigDict(dict(
        path="builtin",  # a `make-data` output dir, or "builtin" (generated, tokenised and cached in the workdir)
        eval_path="",  # "" with builtin: a held-out generated set; "" otherwise: no eval
        seq_len=v["seq_len"],
        mode="",  # make-data mode for builtin ("" = the objectives' first mode)
        whole_word=False,
        mask_rate=0.15, mask_ratio=0.8, random_ratio=0.1, keep_ratio=0.1,
        # 0: ceil(mask_rate * seq_len) (BERT's 20 at 0.15 x 128), so a mask_rate override needs no second one;
        # a cap below that is refused (it would silently lower the rate).
        max_predictions=v["max_predictions"],
        packing=False,
        builtin_docs=6000 if on_cpu else 0,
        builtin_vocab_size=4096,
        num_threads=1,
    ))
    if variant == "mini_text":
        # Measured (experiments/README.md, "The mini recipe on real text"): pre-LN with no dropout learns as fast as
        # post-LN and tolerates lr 2e-3 (dropout only slows a model that sees each token about once); with learned
        # absolute positions a 4-layer model at batch 32 never learned word order in 32M tokens, with rotary
        # positions (on heads of 64) it does within 2M; masking 40% gives 2.7x the targets per token.
        c.model.update(norm="pre", dropout_rate=0.0, attention_dropout_rate=0.0, max_position_embeddings=v["seq_len"],
                       position_embedding="rotary")
        c.data.update(path="", builtin_docs=0, mask_rate=0.4)
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=v["learning_rate"], b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
        warmup_steps=v["warmup_steps"], schedule="linear", power=1.0, end_learning_rate=0.0,
        grad_clip_norm=1.0, grad_accum_steps=1))  # the schedule's length is train.steps
    c.train = ml_collections.ConfigDict(dict(
        global_batch_size=v["global_batch_size"],
        steps=v["steps"],
        seed=0,
        strategy="mesh",  # "mesh" (jit + NamedSharding) or "pmap" (replicated params, data parallel)
        log_every=10 if on_cpu else 100,
        eval_every=(512 if variant == "mini_text" else 200) if on_cpu else 10_000,
        eval_batches=(16 if variant == "mini_text" else 0) if on_cpu else 100,  # 0 = the whole eval set
        checkpoint_every=200 if on_cpu else 5_000,
        keep_checkpoints=3,
        async_checkpoints=True,
        on_nonfinite="stop",  # "stop": end the run naming the step; "skip": skip the update and count it
        init_from="",  # a workdir (or checkpoint step dir) whose params start this run (phase two, fine-tune)
        peak_tflops=0.0,  # per device, for the MFU estimate; 0 = not reported
        progress_bar=True,
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.distributed = ml_collections.ConfigDict(dict(
        enabled=False, coordinator_address="", num_processes=0, process_id=-1))
    return c
