"""The pretraining objectives: their targets, their composition, and that each one learns on a tiny corpus
under both training strategies (mesh and pmap)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bert_jax import configlib
from bert_jax.data.make_data import prepare_builtin_dataset
from bert_jax.data.shards import open_examples, read_manifest
from bert_jax.model import BertForPreTraining, Encoder, preset
from bert_jax.model.heads import CausalLMHead
from bert_jax.model.params import unbox
from bert_jax.model.pretraining import PretrainModel
from bert_jax.objectives import ObjectiveSet
from bert_jax.objectives.corrupted import corrupted_labels
from bert_jax.objectives.distill import TeacherError, read_teacher
from bert_jax.objectives.electra import corrupt, generator_config
from bert_jax.objectives.ltr import next_token_weights
from bert_jax.objectives.sbo import SpanBoundaryHead
from bert_jax.train import pretrain
from bert_jax.train.state import example_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = preset("tiny", vocab_size=120, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
             max_position_embeddings=64, dropout_rate=0.0, attention_dropout_rate=0.0)
KEY = jax.random.PRNGKey(0)


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("objectives_corpus"))


@pytest.fixture(scope="session")
def dataset(corpus_dir):
    """dataset(mode) -> a built-in-corpus dataset dir (seq 64, vocab 1000, 300 docs), built once per mode."""
    built = {}

    def get(mode):
        if mode not in built:
            built[mode] = prepare_builtin_dataset(corpus_dir, mode=mode, seq_len=64, vocab_size=1000, num_docs=300,
                                                  log=lambda m: None)
        return built[mode]

    return get


def small_config(objectives, data_path, steps, strategy="mesh", options=None, **model):
    c = configlib.load_config(os.path.join(ROOT, "configs", "pretrain.py") + ":tiny")
    c.objectives = objectives
    c.objective_options = ml_collections.ConfigDict(options or {})
    c.data.path, c.data.eval_path, c.data.max_predictions = data_path, "", 10
    c.data.seq_len = 64  # the dataset's, so the cap of 10 predictions is its mask rate's (15% of 64), not below it
    for k, v in dict(hidden_size=64, num_heads=2, intermediate_size=128, num_layers=1, dropout_rate=0.0,
                     attention_dropout_rate=0.0, max_position_embeddings=64, **model).items():
        c.model[k] = v
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 2e-3, 3
    c.train.update(global_batch_size=16, steps=steps, strategy=strategy, log_every=1, eval_every=0,
                   checkpoint_every=0, async_checkpoints=False, progress_bar=False)
    return c


def train_log(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"]


def assert_falls(records, term, factor=0.85):
    values = [r[term] for r in records if term in r]
    assert len(values) >= 10 and all(np.isfinite(values)), values
    first, last = np.mean(values[:3]), np.mean(values[-5:])
    assert last < factor * first, f"{term} did not fall: {first:.4f} -> {last:.4f} ({values})"


def init_model(spec, cfg=CFG, batch=None, options=None):
    objectives = ObjectiveSet.parse(spec, options)
    cfg = cfg.replace(causal=objectives.causal)
    model = PretrainModel(cfg, objectives)
    batch = batch if batch is not None else example_batch(4, 16, 3)
    params = unbox(jax.jit(model.init)({"params": KEY, "dropout": KEY}, batch)["params"])
    return model, objectives, params


# ----------------------------------------------------------------------------------------- composition


def test_objective_sets_compose():
    s = ObjectiveSet.parse("mlm+0.5*sop")
    assert s.masking == "mlm" and s.data_modes == ("sentence-order",)
    sums = {"mlm_loss": jnp.float32(6.0), "sop_loss": jnp.float32(2.0)}
    counts = {"mlm_loss": jnp.float32(3.0), "sop_loss": jnp.float32(4.0)}
    assert float(s.total_loss(sums, counts)) == pytest.approx(2.0 + 0.5 * 0.5)
    # SBO needs span masking, which also feeds MLM; the most specific objective picks the default mode
    s = ObjectiveSet.parse("mlm+sbo")
    assert s.masking == "span" and s.data_modes[0] == "single"
    s = ObjectiveSet.parse("ltr")
    assert s.causal and s.masking == "none" and s.data_modes[0] == "single"
    assert ObjectiveSet.parse("electra", {"electra": {"rtd_weight": 30}}).term_weights == {
        "generator_loss": 1.0, "rtd_loss": 30.0}
    for bad, match in (("ltr+nsp", "causal"), ("mlm+electra", "already contains"), ("distill+mlm", "already"),
                       ("sop+nsp", "no make-data mode serves them all")):
        with pytest.raises(ValueError, match=match):
            ObjectiveSet.parse(bad, {"distill": {"teacher": "x"}} if "distill" in bad else None)
    with pytest.raises(ValueError, match="unknown key"):
        ObjectiveSet.parse("electra", {"electra": {"generator_fractoin": 0.5}})


def test_an_mlm_nsp_run_has_the_interop_tree():
    batch = {k: jnp.asarray(v) for k, v in example_batch(2, 16, 3).items()}
    trained = jax.eval_shape(PretrainModel(CFG, ObjectiveSet.parse("mlm+nsp")).init, KEY, batch)["params"]
    interop = jax.eval_shape(BertForPreTraining(CFG).init, KEY, batch["input_ids"])["params"]
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), unbox(tree))  # noqa: E731
    assert shapes(trained) == shapes(interop)


def test_an_objective_is_found_by_its_file_name_alone():
    code = ("import sys; from bert_jax.objectives.base import get_objective; o = get_objective('corrupted'); "
            "assert o.name == 'corrupted'; assert 'bert_jax.objectives.electra' not in sys.modules; "
            "get_objective('sop'); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
    with pytest.raises(ValueError, match="unknown; registered: .*corrupted.*electra.*mlm"):
        ObjectiveSet.parse("mlm+nope")


# ----------------------------------------------------------------------------------------- targets


def _squash(text):
    return "".join(text.lower().replace("##", "").split())


def _occurrences(text, chunk):
    out, i = [], text.find(chunk)
    while i >= 0:
        out.append(i)
        i = text.find(chunk, i + 1)
    return np.asarray(out)


def _follows(text, first, second, window=400):
    """Whether some occurrence of `second` starts shortly after one of `first` in the corpus text."""
    a, b = _occurrences(text, first), _occurrences(text, second)
    return bool(a.size and b.size and ((b[None, :] - a[:, None] > 0) & (b[None, :] - a[:, None] < window)).any())


def test_sop_labels_match_the_swap(dataset, corpus_dir):
    """Label 0: segment B comes after segment A in its document; label 1: before it (the pair was swapped)."""
    from bert_jax.data.tokenizer import load_tokenizer

    examples = open_examples(dataset("sentence-order"))
    rows = examples.take(np.arange(min(len(examples), 200)))
    tok = load_tokenizer(os.path.join(corpus_dir, "vocab-v1000-docs300-seed0"))
    corpus = os.path.join(corpus_dir, "corpus-docs300-seed0")
    text = "".join(_squash(open(os.path.join(corpus, n)).read()) for n in sorted(os.listdir(corpus))
                   if n.endswith(".txt"))
    right, wrong = {0: [], 1: []}, {0: [], 1: []}
    for ids, label in zip(rows["input_ids"], rows["sentence_label"]):
        seps = np.flatnonzero(ids == tok.special_ids["sep"])
        # the segments' last tokens: truncation trims a random end of the longer one, so junctions may be cut
        a = _squash(tok.decode(ids[max(1, seps[0] - 10):seps[0]]))
        b = _squash(tok.decode(ids[max(seps[0] + 1, seps[1] - 10):seps[1]]))
        in_order = _follows(text, a, b)
        right[int(label)].append(in_order if label == 0 else _follows(text, b, a))
        wrong[int(label)].append(_follows(text, b, a) if label == 0 else in_order)
    assert 0.3 < len(right[1]) / len(rows["input_ids"]) < 0.7
    for label in (0, 1):
        # (phrases recur across documents, so the other order is sometimes found too)
        assert np.mean(right[label]) > 0.95 and np.mean(wrong[label]) < 0.3, (label, right, wrong)


def test_ltr_targets_and_causality():
    mask = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(next_token_weights(mask), [[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]])

    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, 120, (2, 16)), jnp.int32)
    batch = {**example_batch(2, 16, 1), "input_ids": ids, "input_mask": jnp.ones((2, 16), jnp.int32)}
    model, objectives, params = init_model("ltr", batch=batch)
    cfg = model.config
    assert cfg.causal

    @jax.jit
    def logits(x):
        seq = Encoder(cfg).apply({"params": params["encoder"]}, x).sequence
        attend = lambda h: Encoder(cfg).apply({"params": params["encoder"]}, h, method="attend")  # noqa: E731
        return CausalLMHead(cfg).apply({"params": params["lm_head"]}, seq, attend)

    t = 7
    changed = ids.at[:, t + 1:].set((ids[:, t + 1:] + 11) % 100 + 5)
    before, after = np.asarray(logits(ids)), np.asarray(logits(changed))
    np.testing.assert_allclose(after[:, :t + 1], before[:, :t + 1], atol=1e-5)
    assert np.abs(after[:, t + 1:] - before[:, t + 1:]).max() > 1e-4
    # the objective's loss is the next-token cross-entropy over exactly those positions
    sums = jax.jit(model.apply)({"params": params}, batch)
    lp = jax.nn.log_softmax(before[:, :-1], -1)
    want = -np.take_along_axis(lp, np.asarray(ids)[:, 1:, None], -1).sum()
    assert float(sums["ltr_loss"]) == pytest.approx(float(want), rel=1e-4)


def test_sbo_reads_exactly_the_boundaries():
    cfg = CFG
    head = SpanBoundaryHead(cfg)
    seq = jax.random.normal(KEY, (2, 16, cfg.hidden_size))
    left, right, offset = jnp.array([[2, 2, 9], [0, 5, 5]]), jnp.array([[5, 5, 12], [3, 8, 8]]), \
        jnp.array([[0, 1, 0], [0, 0, 1]])
    embed = jax.random.normal(jax.random.PRNGKey(1), (cfg.vocab_size, cfg.embed_dim))
    attend = lambda h: h @ embed.T  # noqa: E731
    params = head.init(KEY, seq, attend, left, right, offset)
    run = lambda s, o=offset: np.asarray(head.apply(params, s, attend, left, right, o))  # noqa: E731
    base = run(seq)
    boundaries = {(0, 2), (0, 5), (0, 9), (0, 12), (1, 0), (1, 3), (1, 5), (1, 8)}
    for b in range(2):
        for pos in range(16):
            out = run(seq.at[b, pos].add(1.0))
            if (b, pos) in boundaries:
                assert np.abs(out[b] - base[b]).max() > 1e-4, (b, pos)
            else:
                np.testing.assert_array_equal(out, base)
    # the offset inside the span matters
    assert np.abs(run(seq, offset + 1) - base).max() > 1e-4


def test_rtd_labels_are_one_exactly_where_the_sample_differs():
    ids = jnp.array([[2, 4, 9, 4, 7, 3, 0], [2, 8, 8, 8, 3, 0, 0]])  # [MASK] = 4 at the masked positions
    positions = jnp.array([[1, 3, 0], [1, 2, 0]])
    originals = jnp.array([[11, 12, 0], [8, 20, 0]])
    weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    sampled = jnp.array([[11, 30, 50], [8, 21, 50]])  # right, wrong, (padding slot); kept+right, wrong
    corrupted, labels = corrupt(ids, positions, originals, weights, sampled)
    np.testing.assert_array_equal(corrupted, [[2, 11, 9, 30, 7, 3, 0], [2, 8, 21, 8, 3, 0, 0]])
    np.testing.assert_array_equal(labels, [[0, 0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0]])


def test_electra_shares_embeddings_and_sampling_has_no_gradient():
    batch = example_batch(4, 16, 3)
    rng = np.random.default_rng(0)
    batch["input_ids"] = rng.integers(5, 120, (4, 16)).astype(np.int32)
    batch["masked_positions"] = np.tile([3, 7, 9], (4, 1)).astype(np.int32)
    batch["masked_ids"] = rng.integers(5, 120, (4, 3)).astype(np.int32)
    batch["masked_weights"] = np.ones((4, 3), np.float32)
    model, objectives, params = init_model("electra", batch=batch)
    gen = generator_config(CFG, 0.25)
    assert (gen.hidden_size, gen.num_heads, gen.embedding_size) == (8, 1, 32)
    assert "token" not in params["generator"]["encoder"]["embeddings"]  # the discriminator's table is used
    assert params["generator"]["encoder"]["embeddings"]["projection"]["kernel"].shape == (32, 8)

    def term(p, name):
        return model.apply({"params": p}, batch, rngs={"sample": jax.random.PRNGKey(3)})[name]

    @jax.jit
    def grads_and_sums(p):  # one program: compiling three would dominate the test's time
        return jax.grad(term)(p, "rtd_loss"), jax.grad(term)(p, "generator_loss"), \
            model.apply({"params": p}, batch, rngs={"sample": jax.random.PRNGKey(3)})

    rtd_grads, gen_grads, sums = grads_and_sums(params)
    gen_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(rtd_grads["generator"]))
    assert gen_norm == 0.0  # the discriminator's loss does not reach the generator through the samples
    shared = gen_grads["encoder"]["embeddings"]["token"]["embedding"]
    assert float(jnp.abs(shared).sum()) > 0  # the generator trains the shared token table
    assert float(jnp.abs(gen_grads["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]).sum()) == 0.0
    # only the 12 masked slots can be replaced; an untrained generator gets most of them wrong
    assert 0 < float(sums["rtd_replaced"]) <= 12


def test_corrupted_labels():
    batch = {"input_ids": jnp.array([[2, 4, 9, 31, 3]]), "masked_positions": jnp.array([[1, 2, 3, 0]]),
             "masked_ids": jnp.array([[17, 9, 30, 0]])}
    np.testing.assert_array_equal(corrupted_labels(batch), [[1, 0, 1, 1]])  # [MASK], kept, random, (pad slot)


# ----------------------------------------------------------------------------------------- distillation


def _save_teacher(path, cfg, seed=0):
    from bert_jax.interop import save_params

    params = unbox(BertForPreTraining(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32)))["params"]
    save_params(path, cfg, params)
    return params


def test_distill_student_equal_to_teacher_has_zero_soft_and_hidden_loss(tmp_path):
    cfg = CFG.replace(initializer_range=0.2)  # a peaked teacher distribution
    teacher = _save_teacher(str(tmp_path / "teacher.msgpack"), cfg, seed=7)  # not the student's init
    options = {"distill": {"teacher": str(tmp_path / "teacher.msgpack"), "hidden_weight": 1.0}}
    batch = example_batch(4, 16, 3)
    rng = np.random.default_rng(0)
    batch["input_ids"] = rng.integers(5, 120, (4, 16)).astype(np.int32)
    batch["masked_positions"] = np.tile([3, 7, 9], (4, 1)).astype(np.int32)
    batch["masked_weights"] = np.ones((4, 3), np.float32)
    model, objectives, params = init_model("distill", cfg=cfg, batch=batch, options=options)
    assert "teacher" not in params and set(params) == {"encoder", "mlm_head"}
    frozen = objectives.load_frozen()
    assert set(frozen) == {"teacher"}
    apply = jax.jit(model.apply)
    sums = apply({"params": params, **frozen}, batch)
    assert float(sums["distill_soft_loss"]) > 0.1 and float(sums["distill_hidden_loss"]) > 0.01
    same = {**params, "encoder": teacher["encoder"], "mlm_head": teacher["mlm_head"]}
    sums = apply({"params": same, **frozen}, batch)
    assert abs(float(sums["distill_soft_loss"])) < 1e-4 and float(sums["distill_hidden_loss"]) < 1e-8
    with pytest.raises(TeacherError, match="no teacher"):
        model.apply({"params": params}, batch)


def test_distill_teacher_sources(tmp_path):
    from bert_jax.interop import save_hf_checkpoint

    params = _save_teacher(str(tmp_path / "t.msgpack"), CFG)
    save_hf_checkpoint(str(tmp_path / "hf"), CFG, params)
    # tmp_path holds one params file (and a subdirectory): read like `finetune --init`, by bert_jax.weights' rules.
    for source in (str(tmp_path / "t.msgpack"), str(tmp_path / "hf"), str(tmp_path)):
        cfg, loaded = read_teacher(source)
        assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == (32, 1, 120)
        np.testing.assert_allclose(loaded["encoder"]["embeddings"]["token"]["embedding"],
                                   params["encoder"]["embeddings"]["token"]["embedding"], atol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="neither"):
        read_teacher(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="teacher"):
        ObjectiveSet.parse("distill")


# ----------------------------------------------------------------------------------------- training runs


RUNS = {  # objectives -> (data mode, {term that must fall: by at least this factor in 30 steps})
    "mlm+0.5*sop": ("sentence-order", {"mlm_loss": 0.85}),
    "ltr": ("single", {"ltr_loss": 0.85}),
    "mlm+sbo": ("single", {"mlm_loss": 0.85, "sbo_loss": 0.85}),
    "electra": ("full-sentences", {"generator_loss": 0.9, "rtd_loss": 0.8}),
    "mlm+corrupted": ("full-sentences", {"corrupted_loss": 0.85}),
    "plm": ("full-sentences", {"plm_loss": 0.85}),
    "span_corruption": ("full-sentences", {"span_corruption_loss": 0.85}),
}


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s in ("electra", "span_corruption") else s
                                  for s in sorted(RUNS)])
def test_loss_falls_and_pmap_matches_mesh(spec, dataset, tmp_path):
    mode, terms = RUNS[spec]
    path = dataset(mode)
    pretrain.run(small_config(spec, path, 30), str(tmp_path / "mesh"))
    records = train_log(str(tmp_path / "mesh"))
    for term, factor in terms.items():
        assert_falls(records, term, factor)
    pretrain.run(small_config(spec, path, 3, "pmap"), str(tmp_path / "pmap"))
    pmapped = train_log(str(tmp_path / "pmap"))
    assert len(pmapped) >= 3 and all(np.isfinite(r["loss"]) for r in pmapped)
    if spec != "electra":  # no dropout, no sampling: the two strategies compute the same steps
        for a, b in zip(pmapped[:3], records[:3]):
            assert a["loss"] == pytest.approx(b["loss"], rel=2e-3), (a, b)


@pytest.mark.parametrize("strategy", ["mesh", "pmap"])
def test_distill_learns_from_a_frozen_teacher(strategy, dataset, tmp_path):
    """Through pretrain.run: the student's soft and hidden losses fall (the teacher is narrower, so the hidden
    loss goes through a projection), and the checkpointed train state holds no teacher."""
    import orbax.checkpoint as ocp

    path = dataset("full-sentences")
    vocab = int(read_manifest(path)["vocab_size"])
    teacher = str(tmp_path / "t.msgpack")
    _save_teacher(teacher, CFG.replace(vocab_size=vocab, initializer_range=0.2), seed=7)
    c = small_config("distill", path, 25, strategy, options={"distill": {"teacher": teacher, "hidden_weight": 1.0}})
    c.data.eval_path = path
    c.train.update(eval_every=25, eval_batches=2, checkpoint_every=25)
    workdir = str(tmp_path / strategy)
    out = pretrain.run(c, workdir)
    records = train_log(workdir)
    for term, factor in (("distill_soft_loss", 0.85), ("distill_hidden_loss", 0.85), ("mlm_loss", 0.95)):
        assert_falls(records, term, factor)
    assert out["step"] == 25
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    assert len(evals) == 1 and np.isfinite(evals[0]["distill_soft_loss"]), evals
    step_dir = os.path.join(workdir, "checkpoints", "25")
    tree = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "state")).item_metadata.tree
    assert set(tree["params"]) == {"encoder", "mlm_head", "distill_projection"}, set(tree["params"])


@pytest.mark.parametrize("name", ["albert", "roberta", "spanbert", "electra", "distill", "xlnet", "t5"])
def test_preset_configs_are_consistent(name):
    from bert_jax.model.config import ModelConfig

    for variant in ("tiny", "base") + (("small",) if name == "electra" else ()):
        c = configlib.load_config(os.path.join(ROOT, "configs", f"{name}.py") + f":{variant}")
        options = c.objective_options.to_dict()
        if name == "distill":
            with pytest.raises(TeacherError, match="needs a teacher"):
                ObjectiveSet.parse(c.objectives, options)
            continue
        objectives = ObjectiveSet.parse(c.objectives, options)
        assert c.data.mode in objectives.data_modes
        cfg = ModelConfig.from_dict({**c.model.to_dict(), "vocab_size": 1000})
        if name == "albert":
            assert cfg.share_layers and cfg.factorized and (variant == "tiny" or cfg.embed_dim == 128)
        if variant == "small":
            assert (cfg.num_layers, cfg.hidden_size, cfg.embed_dim) == (12, 256, 128)
        if name in ("xlnet", "t5"):  # their own objective, its paper's defaults, relative positions, no NSP
            assert tuple(objectives.names) == ({"xlnet": "plm", "t5": "span_corruption"}[name],)
            assert cfg.position_embedding == "relative" and c.data.mode == "full-sentences"
            if name == "xlnet":
                assert options["plm"]["partial_prediction_k"] == 6
            else:
                assert (options["span_corruption"]["noise_density"], options["span_corruption"]["mean_span_length"]) \
                    == (0.15, 3.0)
