"""`bert-jax evaluate` scores every objective of the objectives grid against the unigram floor of its own targets:
XLNet's PLM on its predicted tokens, T5's span corruption on its span tokens (sentinels and the end token
excluded), ELECTRA by its generator's MLM, a distillation student by its MLM head."""
import json
import math
import random

import numpy as np
import pytest

import _pretrain_helpers as h
from bert_jax.data import make_data
from bert_jax.data.shards import read_manifest
from bert_jax.train import evaluate, pretrain

WORDS = 40


@pytest.fixture(scope="module")
def single_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    rnd = random.Random(0)
    words = [f"w{i}" for i in range(WORDS)]
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["."]) + "\n")
    lines = []
    for _ in range(60):
        lines += [" ".join(rnd.choice(words) for _ in range(10)) + " ." for _ in range(3)] + [""]
    (root / "c.txt").write_text("\n".join(lines) + "\n")
    out = str(root / "single")
    make_data.build_dataset([str(root / "c.txt")], out, str(root / "vocab.txt"), mode="single", seq_len=32,
                            reader=make_data.ReaderOptions(format="bert"), log=lambda *_: None)
    return out


def _run(data_dir, workdir, objectives):
    values = dict(model__hidden_size=32, model__num_heads=2, model__intermediate_size=64, model__num_layers=1,
                  model__max_position_embeddings=32, data__seq_len=32, train__global_batch_size=8, train__steps=4,
                  train__eval_every=4, train__eval_batches=1, train__log_every=4, data__mode="single",
                  objectives=objectives)
    pretrain.run(h.load_config(h.overrides((data_dir, data_dir), **values)), workdir)


@pytest.mark.parametrize("objectives,prefix", [("plm", "plm"), ("span_corruption", "span_corruption_token")])
def test_evaluate_scores_plm_and_span_corruption_against_their_floor(objectives, prefix, single_data, tmp_path):
    workdir = str(tmp_path / "run")
    _run(single_data, workdir, objectives)
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", workdir, "--data", single_data, "--out", str(out),
                          "--max_examples", "16", "--batch_size", "8"]) == 0
    result = json.loads(out.read_text())
    assert result["objectives"] == objectives
    ratio = result[f"{prefix}_perplexity_ratio"]
    assert math.isfinite(ratio) and ratio > 0
    # by hand: the ratio is model / floor perplexity, and the floor is the add-one unigram of the pretraining
    # data's counts over the same targets: between the best and worst token's cost
    assert ratio == pytest.approx(result[f"{prefix}_perplexity"] / result[f"{prefix}_unigram_perplexity"], rel=1e-6)
    manifest = read_manifest(single_data)
    counts = np.asarray(manifest["token_counts"], np.float64)
    never = [manifest["special_ids"][k] for k in ("pad", "cls", "sep")]
    counts[never] = 0
    p = (counts + 1) / (counts.sum() + len(counts) - len(never))
    p = np.delete(p, never)
    assert -np.log(p.max()) - 1e-9 <= result[f"{prefix}_unigram_loss"] <= -np.log(p.min()) + 1e-9
    # uniform words: the floor is about the number of words, whichever objective's targets it is held against
    assert WORDS * 0.7 < result[f"{prefix}_unigram_perplexity"] < WORDS * 1.5


@pytest.mark.parametrize("checkpoint,step,shown", [("/runs/a", 40, "/runs/a@40"), ("/runs/a@40", 40, "/runs/a@40"),
                                                   ("/x/params.msgpack", None, "/x/params.msgpack")])
def test_summary_line_names_the_checkpoint_once(checkpoint, step, shown):
    result = {"checkpoint": checkpoint, "step": step, "examples": 64.0, "mlm_loss": 2.0, "mlm_accuracy": 0.5,
              "mlm_perplexity": 7.39, "mlm_unigram_perplexity": 100.0, "mlm_perplexity_ratio": 0.0739}
    line = evaluate.summary_line(result)
    assert line.startswith(f"evaluate {shown} on 64 examples:") and "ratio 0.074" in line
