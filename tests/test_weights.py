"""`bert_jax.weights`: every source kind gives the same weights for the same model, in the documented order."""
import ast
import glob
import os
import re
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bert_jax.interop import save_params  # noqa: E402
from bert_jax.model.params import is_scanned, to_scanned  # noqa: E402
from bert_jax.train import checkpoint as ckpt  # noqa: E402
from bert_jax.weights import WeightsError, load_weights, params_fingerprint  # noqa: E402

import _pretrain_helpers as h

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
             max_position_embeddings=32)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]


def _hf_dir(directory):
    """A random transformers BertForPreTraining written by save_pretrained, with its vocab.txt."""
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(**SHAPE)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    return model


def _write_run(workdir, steps_params, config, objectives="mlm+nsp", vocab=None):
    """A pretraining workdir written by the training code's own checkpoint writer: one step per (step, params)."""
    manager = ckpt.open_manager(os.path.join(workdir, "checkpoints"), async_save=False)
    for step, params in steps_params:
        state = {"params": params, "opt_state": {"count": np.int32(step)}, "step": np.int32(step)}
        ckpt.save_checkpoint(manager, step, state=state, data_iter={"epoch": 0},
                             config={"model": config.to_dict(), "objectives": objectives},
                             manifest={"vocab_path": vocab, "seq_len": 16})
    ckpt.wait_for_saves(manager)
    manager.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:  # as pretrain writes it: never read as an HF dir
        f.write("{}")
    return workdir


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    hf = str(root / "hf")
    model = _hf_dir(hf)
    reference = load_weights(hf)
    config, params = reference.config, reference.params
    vocab = os.path.join(hf, "vocab.txt")
    save_params(str(root / "p.msgpack"), config, params)
    exported = root / "exported"
    save_params(str(exported / "params.msgpack"), config, params)
    shutil.copy(vocab, exported / "vocab.txt")
    earlier = jax.tree.map(lambda x: x * 0.5, params)
    generator = {"dense": {"kernel": np.ones((4, 4), np.float32)}}  # a network only pretraining uses (ELECTRA's)
    steps = [(2, {**earlier, "generator": generator}), (4, {**params, "generator": generator})]
    run = _write_run(str(root / "run"), steps, config, vocab=vocab)
    scanned = _write_run(str(root / "scanned"), [(3, jax.tree.map(np.asarray, to_scanned(params)))], config)
    return dict(root=str(root), hf=hf, model=model, reference=reference, params_file=str(root / "p.msgpack"),
                exported=str(exported), run=run, scanned=scanned, vocab=vocab, earlier=earlier)


def test_every_source_kind_returns_the_same_params_for_the_same_model(sources):
    s = sources
    reference = s["reference"]
    word = s["model"].bert.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(reference.params["encoder"]["embeddings"]["token"]["embedding"], word)
    assert set(reference.params) == {"encoder", "pooler", "mlm_head", "nsp_head"}
    run, step4 = s["run"], os.path.join(s["run"], "checkpoints", "4")
    expected = {  # source -> (kind, path recorded, vocab, step)
        s["hf"]: ("hf", s["hf"], s["vocab"], None),
        s["params_file"]: ("params", s["params_file"], None, None),  # no vocab.txt beside it
        s["exported"]: ("params", os.path.join(s["exported"], "params.msgpack"),
                        os.path.join(s["exported"], "vocab.txt"), None),
        run: ("workdir", run, s["vocab"], 4),
        run + "@4": ("workdir", run, s["vocab"], 4),
        step4: ("workdir", step4, s["vocab"], 4),
        os.path.join(run, "checkpoints"): ("workdir", os.path.join(run, "checkpoints"), s["vocab"], 4),
    }
    for source, (kind, path, vocab, step) in expected.items():
        weights = load_weights(source, "--init")
        assert (weights.kind, weights.path, weights.vocab_path, weights.step) == (kind, path, vocab, step), source
        assert weights.config == reference.config, source
        assert weights.fingerprint == reference.fingerprint == params_fingerprint(weights.params), source
        assert jax.tree.structure(weights.params) == jax.tree.structure(reference.params), source
    saved = load_weights(run)
    assert saved.saved_config["objectives"] == "mlm+nsp" and saved.manifest["seq_len"] == 16


def test_a_step_picks_that_checkpoint(sources):
    run = sources["run"]
    earlier = params_fingerprint(sources["earlier"])
    for weights in (load_weights(run + "@2"), load_weights(run, step=2),
                    load_weights(os.path.join(run, "checkpoints", "2"))):
        assert weights.step == 2 and weights.fingerprint == earlier != sources["reference"].fingerprint


def test_networks_that_serve_pretraining_only_are_kept_only_when_asked(sources):
    full = load_weights(sources["run"], pretraining_networks=True)
    assert set(full.params) == {"encoder", "pooler", "mlm_head", "nsp_head", "generator"}
    np.testing.assert_array_equal(full.params["generator"]["dense"]["kernel"], np.ones((4, 4)))
    assert full.fingerprint != load_weights(sources["run"]).fingerprint


def test_the_stored_tree_decides_the_layer_layout_and_scan_layers_relays_it(sources):
    reference = sources["reference"]
    # Its run config says unscanned; its params are stacked for nn.scan: the tree wins.
    stored = load_weights(sources["scanned"])
    assert is_scanned(stored.params) and "layers" in stored.params["encoder"]
    unrolled = load_weights(sources["scanned"], scan_layers=False)
    assert not is_scanned(unrolled.params) and unrolled.fingerprint == reference.fingerprint
    stacked = load_weights(sources["hf"], scan_layers=True)
    assert is_scanned(stacked.params) and stacked.fingerprint == stored.fingerprint
    assert load_weights(sources["params_file"], scan_layers=True).fingerprint == stored.fingerprint


def test_params_false_reads_config_and_vocab_only(sources):
    for source in (sources["hf"], sources["params_file"], sources["run"]):
        weights = load_weights(source, params=False)
        assert weights.params is None and weights.fingerprint is None
        assert weights.config == sources["reference"].config, source
    assert load_weights(sources["run"], params=False).manifest["vocab_path"] == sources["vocab"]


def test_an_ltr_run_loads_causal(sources, tmp_path):
    reference = sources["reference"]
    run = _write_run(str(tmp_path / "ltr"), [(1, reference.params)], reference.config, objectives="1.0*ltr")
    assert load_weights(run).config.causal and not reference.config.causal


def test_order_of_precedence(sources, tmp_path):
    # 3 before 6: a workdir holds config.json too (see _write_run) and is read as a workdir.
    assert load_weights(sources["run"]).kind == "workdir"
    # 6 before 7: a transformers directory that also holds a params file is read as the transformers directory.
    both = tmp_path / "both"
    shutil.copytree(sources["hf"], both)
    shutil.copy(sources["params_file"], both / "p.msgpack")
    assert load_weights(str(both)).kind == "hf"
    # 1: a path that exists with an @ in its name is that path, not a step.
    odd = tmp_path / "model@7.msgpack"
    shutil.copy(sources["params_file"], odd)
    assert load_weights(str(odd)).kind == "params"
    # 4 needs a checkpoint inside: a directory merely named by a number is not a step directory.
    numbered = tmp_path / "12"
    shutil.copytree(sources["exported"], numbered)
    assert load_weights(str(numbered)).kind == "params"


def test_export_writes_a_workdirs_model_as_a_params_file(sources, tmp_path, capsys):
    from bert_jax.train import export

    renamed = {**sources["reference"].params}
    renamed["sop_head"] = renamed.pop("nsp_head")  # an ALBERT-style run: SOP's classifier becomes the NSP head
    run = _write_run(str(tmp_path / "sop"), [(6, renamed)], sources["reference"].config, objectives="mlm+sop")
    out = str(tmp_path / "out.msgpack")
    assert export.main(["--workdir", run, "--out", out]) == 0
    assert '"step": 6' in capsys.readouterr().out
    assert load_weights(out).fingerprint == sources["reference"].fingerprint
    assert export.main(["--workdir", sources["run"], "--step", "3", "--out", out]) == 2
    assert capsys.readouterr().err.startswith(f"bert-jax export: --workdir {sources['run']}: step 3 is not")



def test_a_damaged_checkpoint_step_is_refused_by_every_reader(sources, tmp_path, capsys):
    """Step 4 of a copied run gets 64 flipped bytes in its array file: load_weights (export, finetune --init,
    train.init_from, evaluate) refuses it in one line naming the step and the other complete step; step 2 reads."""
    from bert_jax.finetune.init import InitError, load_init
    from bert_jax.train import export

    run = shutil.copytree(sources["run"], str(tmp_path / "run"))
    state = os.path.join(run, "checkpoints", "4", "state")
    h.flip_middle_bytes(max((os.path.join(r, n) for r, _, names in os.walk(state) for n in names), key=os.path.getsize))
    with pytest.raises(WeightsError) as error:
        load_weights(run, "train.init_from")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"train.init_from={run!r}: checkpoint step 4 in "), message
    assert "is damaged: state/" in message and "does not match its checksum" in message and "[2]" in message
    with pytest.raises(InitError, match="checkpoint step 4 .* is damaged"):
        load_init(run)
    np.testing.assert_array_equal(  # the step before is intact and still reads
        load_weights(run + "@2").params["encoder"]["embeddings"]["token"]["embedding"],
        sources["earlier"]["encoder"]["embeddings"]["token"]["embedding"])
    out = str(tmp_path / "params.msgpack")
    capsys.readouterr()
    assert export.main(["--workdir", run, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"bert-jax export: --workdir {run}: checkpoint step 4") and "damaged" in err
    assert not os.path.exists(out)
    assert export.main(["--workdir", run, "--step", "2", "--out", out]) == 0


def test_a_damaged_or_truncated_params_file_is_one_line_naming_it(sources, tmp_path, capsys):
    """A params file carries a checksum of its config and arrays: 64 flipped bytes inside an array, or a cut file,
    is refused by load_params and by `convert` in one line naming the file; a file without one (older) loads."""
    import flax.serialization
    from bert_jax import cli
    from bert_jax.interop import load_params
    from bert_jax.interop.params_file import ParamsFileError

    good = open(sources["params_file"], "rb").read()
    word = sources["reference"].params["encoder"]["embeddings"]["token"]["embedding"]
    at = good.find(np.ascontiguousarray(word).tobytes())  # the token embedding's bytes, inside the file
    assert at > 0
    flipped, truncated, older = (str(tmp_path / f"{n}.msgpack") for n in ("flipped", "truncated", "older"))
    with open(flipped, "wb") as f:
        f.write(good[:at + 100] + bytes(b ^ 0xFF for b in good[at + 100:at + 164]) + good[at + 164:])
    with open(truncated, "wb") as f:
        f.write(good[:len(good) // 2])
    for path in (flipped, truncated):
        with pytest.raises(ParamsFileError, match=f"^params file {re.escape(repr(path))} is damaged"):
            load_params(path)
        assert cli.main(["convert", "--from", path, "--to-hf", str(tmp_path / "hf")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"bert-jax convert: error: --from params file {path!r} is damaged")
        assert "bert-jax convert" in err.split("damaged", 1)[1]  # the fix: write it again
    payload = flax.serialization.msgpack_restore(good)
    assert payload.pop("checksum").startswith("sha256:")
    with open(older, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(payload))
    assert params_fingerprint(load_params(older)[1]) == params_fingerprint(load_params(sources["params_file"])[1])


def test_init_from_takes_the_whole_tree_in_this_runs_layout(sources):
    from bert_jax.train.pretrain import load_init_params

    full = load_weights(sources["run"], pretraining_networks=True).params
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), to_scanned(full))
    params = load_init_params(sources["run"], abstract, scan_layers=True)
    assert params_fingerprint(params) == params_fingerprint(to_scanned(full))
    without_generator = {k: v for k, v in abstract.items() if k != "generator"}
    with pytest.raises(ValueError, match=r"train.init_from=.*do not match this model's tree") as error:
        load_init_params(sources["run"], without_generator, scan_layers=True)
    assert "\n" not in str(error.value)


def _incomplete_run(path):
    run = shutil.copytree(path[0], path[1])
    for marker in glob.glob(os.path.join(run, "checkpoints", "*", ckpt.COMMIT_MARKER)):
        os.remove(marker)
    return run


def _params_files(directory, weights, *names):
    for name in names:
        save_params(str(directory / name), weights.config, weights.params)
    return str(directory)


@pytest.mark.parametrize("case", ["missing", "empty", "bad_step", "step_of_params", "step_twice", "step_not_saved",
                                  "step_dir_and_step", "incomplete", "several_params", "neither", "garbage"])
def test_unusable_sources_are_one_line_errors_naming_the_path_and_the_fix(case, sources, tmp_path):
    run, missing = sources["run"], str(tmp_path / "no" / "such")
    several = tmp_path / "several"
    several.mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.msgpack").write_bytes(b"not msgpack")
    cases = {  # name: (path, step, what the message must say after the path)
        "missing": (missing, None, "does not exist; point it at a pretraining workdir"),
        "empty": ("", None, "is empty; pass a pretraining workdir"),
        "bad_step": (run + "@last", None, "the part after @ must be a checkpoint step number"),
        "step_of_params": (sources["params_file"] + "@3", None, "is a params file; drop the step"),
        "step_twice": (run + "@2", 4, "names step 2 but step 4 was asked for too"),
        "step_not_saved": (run + "@3", None, "step 3 is not a complete checkpoint in"),
        "step_dir_and_step": (os.path.join(run, "checkpoints", "2"), 4, "is one checkpoint step directory already"),
        "incomplete": (lambda: _incomplete_run((run, str(tmp_path / "incomplete"))), None,
                       "holds no complete checkpoint in"),
        "several_params": (lambda: _params_files(several, sources["reference"], "a.msgpack", "b.msgpack"), None,
                           "holds several params files (a.msgpack, b.msgpack); pass one"),
        "neither": (str(tmp_path / "empty"), None, "is neither a pretraining workdir"),
        "garbage": (str(tmp_path / "garbage.msgpack"), None, "could not be read"),
    }
    path, step, needle = cases[case]
    path = path() if callable(path) else path
    with pytest.raises(WeightsError) as error:
        load_weights(path, "train.init_from", step=step)
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message, message
    assert message.startswith(f"train.init_from={path!r}") and needle in message, message
    if case == "step_not_saved":
        assert "pick one of the complete steps [2, 4]" in message
    assert not os.path.exists(tmp_path / "no")  # a mistyped path is reported, never created
    with pytest.raises(WeightsError) as error:
        load_weights(path, "--init", step=step)
    assert str(error.value).startswith(f"--init {path}".rstrip())  # a flag reads as typed on the command line


def test_the_loader_sits_below_train_and_objectives():
    """bert_jax.weights imports neither, and nothing under objectives/ imports train/."""
    def imports(path):
        tree = ast.parse(open(path).read())
        return {getattr(node, "module", None) or alias.name for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}

    assert not {m for m in imports(os.path.join(REPO, "bert_jax", "weights.py"))
                if m.startswith(("bert_jax.train", "bert_jax.objectives", "bert_jax.finetune"))}
    for path in glob.glob(os.path.join(REPO, "bert_jax", "objectives", "*.py")):
        assert not {m for m in imports(path) if m.startswith("bert_jax.train")}, path
