"""FLOPs per objective: each objective's own term (Objective.flops) on top of the encoder, checked by hand on a tiny
config; the MLM+NSP count is the one bert_jax.train.flops always gave."""
import pytest

from bert_jax import configlib
from bert_jax.model.config import ModelConfig
from bert_jax.objectives.base import ObjectiveSet
from bert_jax.train.flops import forward_flops, planned_train_flops, train_flops_per_step

H, F, V, LAYERS, L, P = 8, 16, 50, 2, 12, 3
CFG = ModelConfig(vocab_size=V, hidden_size=H, num_layers=LAYERS, num_heads=2, intermediate_size=F,
                  max_position_embeddings=32)
KV = 4 * H * H  # keys and values of one position
QUERY = lambda keys, h=H, f=F: 4 * h * h + 4 * h * f + 4 * keys * h  # noqa: E731  q, out, mlp; scores, sum
ENCODER = L * LAYERS * (KV + QUERY(L))
HEAD = lambda positions, outputs=V, h=H: 2 * positions * (h * H + H * outputs)  # noqa: E731  dense, tied decoder


def flops(spec, **options):
    return forward_flops(CFG, L, P, objectives=ObjectiveSet.parse(spec, options))


def test_mlm_nsp_is_the_encoder_head_and_pooler():
    assert flops("mlm+nsp").trained == ENCODER + HEAD(P) + 2 * (H * H + 2 * H)
    assert forward_flops(CFG, L, P).trained == flops("mlm+nsp").trained  # the default objectives
    assert flops("mlm+sop").trained == flops("mlm+nsp").trained
    assert flops("ltr").trained == ENCODER + HEAD(L - 1)


def test_the_query_stream_adds_each_layers_query_side_at_the_targets():
    # plm's own P (the targets), each through every layer's query side against all L keys, then its head
    assert flops("plm").trained - ENCODER == LAYERS * P * QUERY(L) + HEAD(P)
    assert flops("plm").trained - flops("mlm").trained == LAYERS * P * (4 * H * H + 4 * H * F + 4 * L * H)


def test_the_generator_adds_a_narrower_encoder_and_the_rtd_head():
    g = H // 4  # generator_fraction 0.25: hidden 2, max(1, round(2 * 0.25)) = 1 head, feed-forward 4
    gen_ffn = F // 4
    gen_encoder = L * LAYERS * (4 * g * g + QUERY(L, g, gen_ffn)) + 2 * L * H * g  # + its projection from E = 8
    gen_head = 2 * P * (g * H + H * V)
    rtd = 2 * L * (H * H + H)
    assert flops("electra").trained == ENCODER + gen_encoder + gen_head + rtd
    half = flops("electra", electra={"generator_fraction": 0.5}).trained
    assert half > flops("electra").trained  # the generator's size is its option


def test_the_t5_decoder_adds_its_layers_over_the_targets():
    from bert_jax.data.noise_spans import target_length

    t = target_length(L, 0.15, 3.0)  # 2 noise tokens, 1 span: sentinel, 2 tokens, end
    assert t == 4
    self_attention = t * (KV + 4 * H * H + 4 * t * H)
    cross = L * KV + t * (4 * H * H + 4 * L * H)
    layer = self_attention + cross + t * 4 * H * F
    head = HEAD(t, V + 100)  # over the vocab and the 100 sentinels
    assert flops("span_corruption").trained == ENCODER + 2 * layer + head
    deeper = flops("span_corruption", span_corruption={"decoder_layers": 3}).trained
    assert deeper - flops("span_corruption").trained == layer


def test_sbo_and_the_distillation_teacher():
    assert flops("mlm+sbo").trained - flops("mlm").trained == 2 * P * 3 * H * H + HEAD(P)
    distill = ObjectiveSet.parse("distill", prepare=False)  # no teacher yet: counted at the student's size
    f = forward_flops(CFG, L, P, objectives=distill)
    assert (f.trained, f.frozen) == (ENCODER + HEAD(P), ENCODER + HEAD(P))
    # the teacher runs forward only: a step costs 3x the student, 1x the teacher
    assert train_flops_per_step(CFG, 2, L, P, objectives=distill) == 2 * (3 * f.trained + f.frozen)


@pytest.mark.parametrize("spec,mode", [("mlm+nsp", "segment-pair"), ("electra", "segment-pair"),
                                       ("plm", "single"), ("span_corruption", "single")])
def test_planned_flops_are_what_pretrain_reports(spec, mode):
    config = configlib.load_config("configs/pretrain.py:tiny", [f"objectives={spec}", f"data.mode={mode}"])
    planned = planned_train_flops(config, 600)
    assert planned > 0
    if spec == "mlm+nsp":  # the sparse final layer: the last layer's queries at the P masked positions + [CLS]
        c = config.model
        cfg = CFG.replace(vocab_size=600, hidden_size=c.hidden_size, num_layers=c.num_layers,
                          num_heads=c.num_heads, intermediate_size=c.intermediate_size,
                          embedding_size=c.embedding_size, activation=c.activation)
        seq = config.data.seq_len
        p = -(-int(config.data.mask_rate * seq * 1000) // 1000)
        expected = train_flops_per_step(cfg, config.train.global_batch_size, seq, p, p + 1)
        assert planned == pytest.approx(expected, rel=1e-9)
