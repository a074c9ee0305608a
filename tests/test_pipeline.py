"""grain input pipeline: shuffling, per-process slices, state, eval padding, packing, validation."""
import json
import os

import numpy as np
import pytest

from bert_jax.data import packing
from bert_jax.data.masking import MaskingConfig
from bert_jax.data.pipeline import PipelineError, make_eval_iterator, make_pretrain_iterator
from bert_jax.data.shards import FORMAT_VERSION, MANIFEST, DataError, shard_name, write_json_atomic, write_shard

import _pretrain_helpers as h

SPECIAL = dict(pad=0, unk=1, cls=2, sep=3, mask=4)
ID_BASE = 5  # position 1 of example i holds token ID_BASE + i, so batches reveal which examples they hold
CONTRACT = {"input_ids": np.int32, "token_type_ids": np.int32, "input_mask": np.int32, "position_ids": np.int32,
            "masked_positions": np.int32, "masked_ids": np.int32, "masked_weights": np.float32, "sentence_label": np.int32}


def write_dataset(out_dir, shard_sizes=(37, 50, 13), seq_len=32, vocab_size=600, mode="segment-pair", seed=0,
                  min_len=6, max_len=None):
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    first, entries, max_id = 0, [], 0
    for index, n in enumerate(shard_sizes):
        lengths = rng.integers(min_len, (max_len or seq_len) + 1, n).astype(np.int32)
        pos = np.arange(seq_len)[None, :]
        ids = rng.integers(ID_BASE + sum(shard_sizes), vocab_size, (n, seq_len)).astype(np.int32)
        ids[:, 1] = ID_BASE + first + np.arange(n)
        ids[pos >= lengths[:, None]] = SPECIAL["pad"]
        ids[:, 0] = SPECIAL["cls"]
        ids[np.arange(n), lengths - 1] = SPECIAL["sep"]
        types = np.zeros((n, seq_len), np.int8)
        if mode in ("segment-pair", "sentence-order"):
            mid = np.maximum(3, lengths // 2)
            ids[np.arange(n), mid] = SPECIAL["sep"]
            types[(pos > mid[:, None]) & (pos < lengths[:, None])] = 1
            labels = rng.integers(0, 2, n).astype(np.int8)
        else:
            labels = np.full(n, -1, np.int8)
        arrays = dict(input_ids=ids, token_type_ids=types, word_start=rng.random((n, seq_len)) < 0.7,
                      length=lengths, sentence_label=labels)
        checksums = write_shard(out_dir, index, arrays, {"documents": n})
        entries.append({"name": shard_name(index), "examples": n, "checksums": checksums})
        first, max_id = first + n, max(max_id, int(ids.max()))
    write_json_atomic(os.path.join(out_dir, MANIFEST), {
        "format_version": FORMAT_VERSION, "mode": mode, "seq_len": seq_len, "vocab_size": vocab_size,
        "vocab_fingerprint": "vocab-abc", "special_ids": SPECIAL, "max_token_id": max_id, "seed": seed,
        "examples": first, "shards": entries})
    return out_dir


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("pair")))


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("single")), shard_sizes=(60, 41), mode="single", max_len=12)


def example_of_rows(batch):
    """Example id of each unpacked row (-1 for padding rows); needs kind='none' or an unmasked position 1."""
    return np.where(batch["input_mask"][:, 0] > 0, batch["input_ids"][:, 1] - ID_BASE, -1)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_contract(pair_dir):
    it = make_pretrain_iterator(pair_dir, 16, seed=0, masking=MaskingConfig())
    batch = next(it)
    for name, dtype in CONTRACT.items():
        assert batch[name].dtype == dtype, name
    assert batch["input_ids"].shape == (16, 32) and batch["masked_positions"].shape == (16, 5)
    assert set(np.unique(batch["input_mask"])) <= {0, 1}
    np.testing.assert_array_equal(batch["position_ids"], np.broadcast_to(np.arange(32), (16, 32)))
    assert set(np.unique(batch["sentence_label"])) <= {0, 1}
    assert np.all(batch["token_type_ids"][batch["input_mask"] == 0] == 0)
    span = next(make_pretrain_iterator(pair_dir, 16, seed=0, masking=MaskingConfig(kind="span")))
    assert {"span_left", "span_right", "span_offset"} <= span.keys()


def test_epochs_are_seeded_permutations(pair_dir):
    none = MaskingConfig(kind="none")
    it = make_pretrain_iterator(pair_dir, 10, seed=3, masking=none, epochs=2)
    assert it.batches_in_epoch() == 10
    seen = np.concatenate([example_of_rows(b) for b in it])
    first, second = seen[:100], seen[100:]
    assert sorted(first) == list(range(100)) and sorted(second) == list(range(100))
    assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(100))
    again = np.concatenate([example_of_rows(b) for b in make_pretrain_iterator(pair_dir, 10, 3, none, epochs=1)])
    other = np.concatenate([example_of_rows(b) for b in make_pretrain_iterator(pair_dir, 10, 4, none, epochs=1)])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_drop_remainder_and_padded_last_batch(pair_dir):
    none = MaskingConfig(kind="none")
    dropped = list(make_pretrain_iterator(pair_dir, 16, seed=1, masking=none, epochs=2))
    assert len(dropped) == 12  # 6 per epoch, 4 examples left out of each
    per_epoch = [np.concatenate([example_of_rows(b) for b in dropped[i:i + 6]]) for i in (0, 6)]
    assert all(len(set(e)) == 96 for e in per_epoch) and set(per_epoch[0]) != set(per_epoch[1])
    padded = list(make_pretrain_iterator(pair_dir, 16, seed=1, masking=MaskingConfig(), epochs=1, drop_remainder=False))
    assert len(padded) == 7
    last = padded[-1]
    assert np.all(last["input_mask"][4:] == 0) and np.all(last["masked_weights"][4:] == 0)
    assert np.all(last["sentence_label"][4:] == -1) and np.all(last["masked_weights"][:4].sum(1) > 0)


@pytest.mark.parametrize("kind", ["mlm", "span"])
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_partition_the_global_batch(pair_dir, kind, process_count):
    masking = MaskingConfig(kind=kind)
    whole = take(make_pretrain_iterator(pair_dir, 16, seed=5, masking=masking), 8)  # crosses an epoch
    parts = [take(make_pretrain_iterator(pair_dir, 16, seed=5, masking=masking, process_index=p,
                                         process_count=process_count), 8) for p in range(process_count)]
    for step, batch in enumerate(whole):
        for name in batch:
            joined = np.concatenate([parts[p][step][name] for p in range(process_count)])
            np.testing.assert_array_equal(joined, batch[name], err_msg=name)
        assert parts[0][step]["input_ids"].shape[0] == 16 // process_count


def test_state_restore_continues_identically(pair_dir):
    masking = MaskingConfig(kind="wwm")
    it = make_pretrain_iterator(pair_dir, 16, seed=2, masking=masking, num_threads=2)
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 5)  # crosses into the second epoch (6 batches per epoch)
    fresh = make_pretrain_iterator(pair_dir, 16, seed=2, masking=masking, num_threads=0)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 5), expected)
    # the state does not depend on the process count: resume on 2 processes
    halves = [make_pretrain_iterator(pair_dir, 16, seed=2, masking=masking, process_index=p, process_count=2)
              for p in range(2)]
    for half in halves:
        half.set_state(state)
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(take(halves[0], 5), take(halves[1], 5))]
    assert_batches_equal(joined, expected)


def test_state_from_other_settings_is_rejected(pair_dir):
    state = make_pretrain_iterator(pair_dir, 16, seed=2, masking=MaskingConfig()).get_state()
    with pytest.raises(PipelineError, match="seed"):
        make_pretrain_iterator(pair_dir, 16, seed=3, masking=MaskingConfig()).set_state(state)
    with pytest.raises(PipelineError, match="global_batch_size"):
        make_pretrain_iterator(pair_dir, 8, seed=2, masking=MaskingConfig()).set_state(state)


@pytest.mark.parametrize("process_count", [1, 4])
def test_eval_visits_every_example_once_with_fixed_masks(pair_dir, process_count):
    def run(mask_seed):
        batches = [[] for _ in range(process_count)]
        for p in range(process_count):
            batches[p] = list(make_eval_iterator(pair_dir, 24, MaskingConfig(), mask_seed=mask_seed,
                                                 process_index=p, process_count=process_count))
        return [{k: np.concatenate([batches[p][s][k] for p in range(process_count)]) for k in batches[0][s]}
                for s in range(len(batches[0]))]

    batches = run(0)
    assert len(batches) == 5  # ceil(100 / 24)
    rows = np.concatenate([b["input_mask"][:, 0] for b in batches]) > 0
    assert rows.sum() == 100 and not rows[100:].any()
    assert np.all(np.concatenate([b["masked_weights"] for b in batches])[100:] == 0)
    # position 1 may be masked, so read example ids from masked_ids where it was
    ids = np.concatenate([b["input_ids"][:, 1] for b in batches])
    for i, b in enumerate(batches):
        hit = (b["masked_positions"] == 1) & (b["masked_weights"] > 0)
        ids[i * 24 + np.nonzero(hit)[0]] = b["masked_ids"][hit]
    # every example once, in one fixed shuffled order, so the first batch is a sample of the whole set
    np.testing.assert_array_equal(np.sort(ids[:100] - ID_BASE), np.arange(100))
    assert not np.array_equal(ids[:100] - ID_BASE, np.arange(100))
    assert (ids[:24] - ID_BASE).max() >= 50 and (ids[:24] - ID_BASE).min() < 50
    assert_batches_equal(run(0), batches)
    assert not np.array_equal(run(1)[0]["masked_positions"], batches[0]["masked_positions"])


def test_packing_invariants(single_dir):
    masking = MaskingConfig()
    it = make_pretrain_iterator(single_dir, 4, seed=0, masking=masking, packing=True, epochs=1, drop_remainder=False)
    rows = it.plan(0).num_rows
    assert rows < 101 / 2  # short examples: at least two per row on average
    examples = it.examples
    seen = []
    for batch in it:
        for r in range(len(batch["input_mask"])):
            segs = batch["input_mask"][r]
            n = segs.max()
            if n == 0:
                continue
            real = np.nonzero(segs)[0]
            assert np.array_equal(real, np.arange(len(real))), "examples are not packed from the front"
            assert np.all(np.diff(segs[real]) >= 0) and set(segs[real]) == set(range(1, n + 1))
            ids = batch["input_ids"][r]
            for k in range(1, n + 1):
                cols = np.nonzero(segs == k)[0]
                np.testing.assert_array_equal(batch["position_ids"][r, cols], np.arange(len(cols)))
                assert ids[cols[0]] == SPECIAL["cls"] and ids[cols[-1]] == SPECIAL["sep"]
                # ids at non-masked positions match the example's stored tokens
                masked = batch["masked_positions"][r][batch["masked_weights"][r] > 0]
                original = ids[cols].copy()
                for m, t in zip(masked, batch["masked_ids"][r][batch["masked_weights"][r] > 0]):
                    if m in cols:
                        original[m - cols[0]] = t
                example = original[1] - ID_BASE
                stored = examples.take([example])
                assert stored["length"][0] == len(cols)
                np.testing.assert_array_equal(stored["input_ids"][0, :len(cols)], original)
                seen.append(example)
            masked = batch["masked_positions"][r][batch["masked_weights"][r] > 0]
            assert np.all(segs[masked] > 0)
            assert not np.isin(batch["masked_ids"][r][batch["masked_weights"][r] > 0], list(SPECIAL.values())).any()
    assert sorted(seen) == list(range(101))
    again = make_pretrain_iterator(single_dir, 4, seed=0, masking=masking, packing=True, epochs=1, drop_remainder=False)
    assert_batches_equal(take(again, 3), take(make_pretrain_iterator(single_dir, 4, seed=0, masking=masking,
                                                                     packing=True, epochs=1, drop_remainder=False), 3))


def test_permute_is_a_bijection():
    for n in (1, 2, 7, 1000, 4097):
        perm = packing.permute(np.arange(n), n, seed=9, epoch=1)
        assert sorted(perm.tolist()) == list(range(n))
    a, b = packing.permute(np.arange(1000), 1000, 9, 1), packing.permute(np.arange(1000), 1000, 9, 2)
    assert np.mean(a == b) < 0.05
    np.testing.assert_array_equal(packing.permute(np.arange(10, 20), 1000, 9, 1), a[10:20])


def test_validation_errors(pair_dir, tmp_path):
    m = MaskingConfig()
    with pytest.raises(PipelineError, match="vocab-abc.*vocab-xyz.*rebuild the data"):
        make_pretrain_iterator(pair_dir, 16, 0, m, expected_vocab_fingerprint="vocab-xyz")
    make_pretrain_iterator(pair_dir, 16, 0, m, expected_vocab_fingerprint="vocab-abc", vocab_size=600, max_positions=32)
    with pytest.raises(PipelineError, match="vocab_size is 500"):
        make_pretrain_iterator(pair_dir, 16, 0, m, vocab_size=500)
    with pytest.raises(PipelineError, match="max_position_embeddings 16.*--seq_len 16"):
        make_pretrain_iterator(pair_dir, 16, 0, m, max_positions=16)
    with pytest.raises(PipelineError, match="not divisible"):
        make_pretrain_iterator(pair_dir, 18, 0, m, process_count=4)
    with pytest.raises(PipelineError, match="packing needs single-segment"):
        make_pretrain_iterator(pair_dir, 16, 0, m, packing=True)
    with pytest.raises(PipelineError, match="fewer than one global batch"):
        make_pretrain_iterator(pair_dir, 128, 0, m)
    with pytest.raises(PipelineError, match="process_index"):
        make_pretrain_iterator(pair_dir, 16, 0, m, process_index=2, process_count=2)


def test_a_damaged_shard_is_a_one_line_error_naming_it_and_the_fix(tmp_path):
    """64 bytes flipped inside a shard's token ids (the file stays a valid .npy): opening the dataset for training
    or evaluation fails at once, naming the file and `make-data`; a dataset whose manifest predates checksums
    still opens, unverified."""
    out = write_dataset(str(tmp_path / "data"))
    victim = os.path.join(out, shard_name(1), "input_ids.npy")
    h.flip_middle_bytes(victim)
    for make in (lambda: make_pretrain_iterator(out, 10, 0, MaskingConfig()),
                 lambda: make_eval_iterator(out, 10, MaskingConfig())):
        with pytest.raises(DataError) as info:
            make()
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{victim} does not match its checksum"), message
        assert "`bert-jax make-data` command that built" in message
    with open(os.path.join(out, MANIFEST)) as f:
        manifest = json.load(f)
    for entry in manifest["shards"]:
        del entry["checksums"]
    write_json_atomic(os.path.join(out, MANIFEST), manifest)
    next(make_pretrain_iterator(out, 10, 0, MaskingConfig()))
