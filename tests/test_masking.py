"""Dynamic masking: statistics, invariants per kind, determinism, independence from batch composition."""
import numpy as np
import pytest

from bert_jax.data import masking
from bert_jax.data.masking import MaskingConfig, MaskingError, apply_masking

SPECIAL = dict(pad=0, unk=1, cls=2, sep=3, mask=4)
SPECIAL_SET = set(SPECIAL.values())
VOCAB = 1000
TABLE_8 = [(0.8, 0.1, 0.1), (1.0, 0.0, 0.0), (0.8, 0.0, 0.2), (0.8, 0.2, 0.0), (0.0, 0.2, 0.8), (0.0, 0.0, 1.0)]


def make_rows(n_rows=512, seq_len=128, seed=0, min_len=8, pair=True, unk_rate=0.02):
    """[CLS] A [SEP] B [SEP] [PAD]..., with some [UNK]/[MASK] inside the text and random word starts."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, seq_len + 1, n_rows)
    pos = np.arange(seq_len)[None, :]
    ids = rng.integers(5, VOCAB, (n_rows, seq_len)).astype(np.int32)
    ids[rng.random(ids.shape) < unk_rate] = SPECIAL["unk"]
    ids[rng.random(ids.shape) < unk_rate / 2] = SPECIAL["mask"]
    ids[pos >= lengths[:, None]] = SPECIAL["pad"]
    ids[:, 0] = SPECIAL["cls"]
    ids[np.arange(n_rows), lengths - 1] = SPECIAL["sep"]
    if pair:
        mid = np.maximum(1, lengths // 2)
        ids[np.arange(n_rows), mid] = SPECIAL["sep"]
    word_start = rng.random(ids.shape) < 0.6
    rows = dict(input_ids=ids, input_mask=(pos < lengths[:, None]).astype(np.int32), word_start=word_start)
    return rows, lengths


def expected_budget(rows, p, rate=0.15):
    n_real = rows["input_mask"].sum(1)
    candidates = ((rows["input_mask"] != 0) & ~np.isin(rows["input_ids"], list(SPECIAL_SET))).sum(1)
    return np.minimum(np.minimum(p, np.maximum(1, np.rint(n_real * rate))), candidates).astype(int)


def words_of(rows):
    """Word index per token, with special tokens and padding as words of their own (as masking does)."""
    special = np.isin(rows["input_ids"], list(SPECIAL_SET)) | (rows["input_mask"] == 0)
    starts = rows["word_start"] | special
    starts[:, 1:] |= special[:, :-1]
    starts[:, 0] = True
    return np.cumsum(starts, axis=1) - 1, starts


def check_common(rows, out, p):
    ids = rows["input_ids"]
    pos, w = out["masked_positions"], out["masked_weights"]
    assert pos.shape == w.shape == out["masked_ids"].shape == (len(ids), p)
    assert pos.dtype == np.int32 and out["masked_ids"].dtype == np.int32 and w.dtype == np.float32
    valid = w > 0
    assert np.all(pos[~valid] == 0) and np.all(out["masked_ids"][~valid] == 0)
    # weights are a prefix, positions strictly increasing within it
    assert np.all(np.diff(w, axis=1) <= 0)
    assert np.all((np.diff(pos, axis=1) > 0) | ~valid[:, 1:])
    rows_idx = np.nonzero(valid)[0]
    targets = ids[rows_idx, pos[valid]]
    np.testing.assert_array_equal(out["masked_ids"][valid], targets)
    assert not np.isin(targets, list(SPECIAL_SET)).any(), "a special token was chosen"
    assert np.all(rows["input_mask"][rows_idx, pos[valid]] != 0), "padding was chosen"
    changed = out["input_ids"] != ids
    selected = np.zeros_like(changed)
    selected[rows_idx, pos[valid]] = True
    assert not (changed & ~selected).any(), "a token that is not predicted was changed"
    replaced = out["input_ids"][changed]
    assert not np.isin(replaced[replaced != SPECIAL["mask"]], list(SPECIAL_SET)).any()
    assert replaced.max(initial=0) < VOCAB


@pytest.mark.parametrize("kind", ["mlm", "wwm", "span"])
def test_invariants_and_budget(kind):
    rows, _ = make_rows()
    config = MaskingConfig(kind=kind)
    p = masking.num_predictions(config, 128)
    assert p == 20  # BERT's max_predictions_per_seq at 128
    out = apply_masking(rows, config, SPECIAL, VOCAB, seed=3, example_ids=np.arange(512), epoch=0)
    check_common(rows, out, p)
    budget = expected_budget(rows, p)
    counts = out["masked_weights"].sum(1)
    assert np.all(counts <= budget)
    if kind == "mlm":
        np.testing.assert_array_equal(counts, budget)
    else:  # whole words cannot always fill the budget exactly
        assert counts.sum() >= 0.9 * budget.sum()


@pytest.mark.parametrize("ratios", TABLE_8)
def test_replacement_split(ratios):
    rows, _ = make_rows(n_rows=1500)
    config = MaskingConfig(mask_ratio=ratios[0], random_ratio=ratios[1], keep_ratio=ratios[2])
    out = apply_masking(rows, config, SPECIAL, VOCAB, seed=1, example_ids=np.arange(1500))
    valid = out["masked_weights"] > 0
    r = np.nonzero(valid)[0]
    new = out["input_ids"][r, out["masked_positions"][valid]]
    orig = out["masked_ids"][valid]
    n = valid.sum()
    assert n > 12000
    mask_frac = np.mean(new == SPECIAL["mask"])
    random_frac = np.mean((new != SPECIAL["mask"]) & (new != orig))
    keep_frac = np.mean(new == orig)
    # a random draw equal to the original (p ~ 1/995) counts as kept
    assert abs(mask_frac - ratios[0]) < 0.015
    assert abs(random_frac - ratios[1] * (1 - 1 / 995)) < 0.015
    assert abs(keep_frac - ratios[2]) < 0.015


def test_rate_statistics_and_max_predictions():
    rows, lengths = make_rows(n_rows=800, seq_len=256, pair=False)
    out = apply_masking(rows, MaskingConfig(rate=0.15, max_predictions=30), SPECIAL, VOCAB, 0, np.arange(800))
    counts = out["masked_weights"].sum(1)
    assert counts.max() == 30 and out["masked_positions"].shape[1] == 30
    short = lengths < 150  # below the cap: exactly round(15%) of the real tokens
    np.testing.assert_array_equal(counts[short], np.maximum(1, np.rint(lengths[short] * 0.15)))
    out = apply_masking(rows, MaskingConfig(rate=0.4, max_predictions=256), SPECIAL, VOCAB, 0, np.arange(800))
    assert abs(out["masked_weights"].sum() / lengths.sum() - 0.4) < 0.01


def test_random_replacements_cover_non_special_vocab_uniformly():
    rows, _ = make_rows(n_rows=3000)
    config = MaskingConfig(mask_ratio=0.0, random_ratio=1.0, keep_ratio=0.0)
    out = apply_masking(rows, config, {**SPECIAL, "unk": 500}, VOCAB, 0, np.arange(3000))
    valid = out["masked_weights"] > 0
    new = out["input_ids"][np.nonzero(valid)[0], out["masked_positions"][valid]]
    assert not np.isin(new, [0, 2, 3, 4, 500]).any()
    hist = np.bincount(new, minlength=VOCAB)
    assert hist[1] > 0 and hist[999] > 0  # both ends of the range are reachable
    halves = hist[5:500].sum(), hist[501:].sum()
    assert abs(halves[0] / sum(halves) - 495 / 994) < 0.02


@pytest.mark.parametrize("kind", ["mlm", "wwm", "span"])
def test_deterministic_and_independent_of_batch_composition(kind):
    rows, _ = make_rows(n_rows=64)
    config = MaskingConfig(kind=kind)
    keys = np.arange(1000, 1064)
    full = apply_masking(rows, config, SPECIAL, VOCAB, seed=7, example_ids=keys, epoch=2)
    again = apply_masking(rows, config, SPECIAL, VOCAB, seed=7, example_ids=keys, epoch=2)
    # a process holding rows 16..31 only, in a different order, gets the same rows
    part_idx = np.arange(31, 15, -1)
    part = apply_masking({k: v[part_idx] for k, v in rows.items()}, config, SPECIAL, VOCAB, 7, keys[part_idx], 2)
    for name in full:
        np.testing.assert_array_equal(full[name], again[name])
        np.testing.assert_array_equal(full[name][part_idx], part[name])
    for other in (dict(seed=8, epoch=2), dict(seed=7, epoch=3)):
        changed = apply_masking(rows, config, SPECIAL, VOCAB, example_ids=keys, **other)
        assert np.mean(np.any(changed["masked_positions"] != full["masked_positions"], axis=1)) > 0.9


def test_whole_word_masking_masks_words_entirely():
    rows, _ = make_rows(n_rows=400)
    out = apply_masking(rows, MaskingConfig(kind="wwm"), SPECIAL, VOCAB, 5, np.arange(400))
    word_id, _ = words_of(rows)
    selected = np.zeros(rows["input_ids"].shape, bool)
    valid = out["masked_weights"] > 0
    selected[np.nonzero(valid)[0], out["masked_positions"][valid]] = True
    n_words = word_id.max() + 1
    flat = (np.arange(400)[:, None] * n_words + word_id).ravel()
    tokens_per_word = np.bincount(flat, minlength=400 * n_words)
    selected_per_word = np.bincount(flat, weights=selected.ravel(), minlength=400 * n_words)
    partial = (selected_per_word > 0) & (selected_per_word < tokens_per_word)
    assert not partial.any()
    assert (tokens_per_word[selected_per_word > 0] > 1).sum() > 100  # multi-piece words were masked


def test_whole_word_greedy_matches_sequential_reference():
    """The vectorised passes equal BERT's loop: visit words in random order, take each that fits."""
    rows, _ = make_rows(n_rows=200, seq_len=64)
    config = MaskingConfig(kind="wwm", max_predictions=12)
    out = apply_masking(rows, config, SPECIAL, VOCAB, 9, np.arange(200), epoch=1)
    budget = expected_budget(rows, 12)
    word_id, _ = words_of(rows)
    with np.errstate(over="ignore"):
        scores = masking.uniforms(masking.row_states(9, 1, np.arange(200)), masking._SELECT, 65)
    special = np.isin(rows["input_ids"], list(SPECIAL_SET)) | (rows["input_mask"] == 0)
    for r in range(200):
        words = {}
        for t in range(64):
            if not special[r, t]:
                words.setdefault(word_id[r, t], []).append(t)
        chosen = []
        for w in sorted(words, key=lambda w: scores[r, w]):
            if len(chosen) + len(words[w]) <= budget[r]:
                chosen += words[w]
        got = out["masked_positions"][r][out["masked_weights"][r] > 0]
        assert sorted(chosen) == got.tolist(), r


def test_span_invariants_and_length_distribution():
    rows, lengths = make_rows(n_rows=600, seq_len=512, pair=False, min_len=400, unk_rate=0.0)
    config = MaskingConfig(kind="span", max_predictions=80)
    out = apply_masking(rows, config, SPECIAL, VOCAB, 11, np.arange(600))
    check_common(rows, out, 80)
    word_id, starts = words_of(rows)
    ids, valid = rows["input_ids"], out["masked_weights"] > 0
    selected = np.zeros(ids.shape, bool)
    selected[np.nonzero(valid)[0], out["masked_positions"][valid]] = True
    span_words, n_masked = [], 0
    for r in range(600):
        pos = out["masked_positions"][r][valid[r]]
        left, right, off = (out[k][r][valid[r]] for k in ("span_left", "span_right", "span_offset"))
        n_masked += len(pos)
        # a span = a maximal run of consecutive masked positions sharing left/right
        breaks = np.nonzero(np.diff(pos) != 1)[0] + 1
        for run in np.split(np.arange(len(pos)), breaks):
            first, last = pos[run[0]], pos[run[-1]]
            assert np.all(left[run] == first - 1) and np.all(right[run] == last + 1)
            np.testing.assert_array_equal(off[run], np.arange(len(run)))
            assert not selected[r, first - 1] and not selected[r, last + 1], "spans touch"
            assert starts[r, first] and starts[r, last + 1], "span is not on word boundaries"
            span_words.append(len(np.unique(word_id[r, first:last + 1])))
    assert 0.14 < n_masked / lengths.sum() <= 0.15  # the last span is cut back to whole words
    span_words = np.asarray(span_words)
    assert span_words.max() <= 10 and span_words.min() >= 1
    hist = np.bincount(span_words, minlength=11)[1:] / len(span_words)
    expected = masking.span_length_probs(0.2, 10)  # mean 3.8 words
    # the budget cuts the last span of each row (~1 in 13 here), which moves a little mass to short spans
    assert np.abs(hist - expected).max() < 0.035, (hist, expected)
    assert 3.3 < span_words.mean() < 3.85


def reference_spans(rows, config, seed, keys, p):
    """A sequential re-implementation of the span sampler: per row, the list of (first word, end word)."""
    word_id, _ = words_of(rows)
    special = np.isin(rows["input_ids"], list(SPECIAL_SET)) | (rows["input_mask"] == 0)
    budget, tries = expected_budget(rows, p, config.rate), 2 * p
    with np.errstate(over="ignore"):
        states = masking.row_states(seed, 0, keys)
        length_u = masking.uniforms(states, masking._SPAN_LENGTH, tries)
        start_u = masking.uniforms(states, masking._SPAN_START, tries)
    cdf = np.cumsum(masking.span_length_probs(config.span_p, config.span_max_words))
    result = []
    for r in range(len(keys)):
        n_tok = np.bincount(word_id[r])
        is_cand = np.zeros(len(n_tok), bool)
        is_cand[word_id[r][~special[r]]] = True
        cands = np.nonzero(is_cand)[0]
        remaining, chosen, spans = budget[r], set(), []
        for t in range(tries):
            if remaining <= 0 or len(cands) == 0:
                break
            start = cands[min(int(start_u[r, t] * len(cands)), len(cands) - 1)]
            want = min(int(np.searchsorted(cdf, length_u[r, len(spans)], side="right")) + 1, config.span_max_words)
            end, used, clipped = start, 0, False
            while end < start + want and not clipped:
                clipped = end >= len(n_tok) or not is_cand[end]
                if not clipped and used + n_tok[end] > remaining:
                    break
                if not clipped:
                    used, end = used + n_tok[end], end + 1
            if any(w in chosen for w in range(start - 1, end + 1)):
                continue
            if end > start:
                chosen.update(range(start, end))
                remaining -= used
                spans.append((start, end))
            if end < start + want and not clipped:
                remaining = 0
        result.append(spans)
    return result, word_id


def test_span_sampler_matches_sequential_reference():
    rows, _ = make_rows(n_rows=150, seq_len=128)
    config = MaskingConfig(kind="span")
    out = apply_masking(rows, config, SPECIAL, VOCAB, 4, np.arange(150))
    reference, word_id = reference_spans(rows, config, 4, np.arange(150), 20)
    for r, spans in enumerate(reference):
        expected = [t for s, e in spans for t in np.nonzero((word_id[r] >= s) & (word_id[r] < e))[0]]
        got = out["masked_positions"][r][out["masked_weights"][r] > 0]
        assert sorted(expected) == got.tolist(), r


def test_span_replacement_is_decided_per_span():
    rows, _ = make_rows(n_rows=300, seq_len=256, pair=False, min_len=200)
    out = apply_masking(rows, MaskingConfig(kind="span"), SPECIAL, VOCAB, 2, np.arange(300))
    valid = out["masked_weights"] > 0
    r = np.nonzero(valid)[0]
    new = out["input_ids"][r, out["masked_positions"][valid]]
    is_mask = new == SPECIAL["mask"]
    span_key = r * 1000 + out["span_left"][valid]
    for key in np.unique(span_key):
        in_span = span_key == key
        assert is_mask[in_span].all() or not is_mask[in_span].any()
    assert abs(is_mask.mean() - 0.8) < 0.06


def test_none_kind_and_padding_rows():
    rows, _ = make_rows(n_rows=8)
    out = apply_masking(rows, MaskingConfig(kind="none"), SPECIAL, VOCAB, 0, np.arange(8))
    np.testing.assert_array_equal(out["input_ids"], rows["input_ids"])
    assert out["masked_positions"].shape == (8, 0) and out["masked_weights"].dtype == np.float32
    keys = np.array([0, 1, -1, 3, -1, 5, 6, 7])
    out = apply_masking(rows, MaskingConfig(kind="mlm"), SPECIAL, VOCAB, 0, keys)
    assert np.all(out["masked_weights"][keys < 0] == 0) and np.all(out["masked_weights"][keys >= 0].sum(1) > 0)


@pytest.mark.parametrize("bad", [dict(kind="bert"), dict(rate=0.0), dict(mask_ratio=0.8, random_ratio=0.1, keep_ratio=0.2),
                                 dict(max_predictions=0), dict(span_p=0.0), dict(mask_ratio=1.1, random_ratio=-0.1, keep_ratio=0.0)])
def test_config_validation(bad):
    with pytest.raises(MaskingError):
        MaskingConfig(**bad)


def test_missing_special_id_is_an_error():
    rows, _ = make_rows(n_rows=2)
    with pytest.raises(MaskingError, match="special_ids"):
        apply_masking(rows, MaskingConfig(), {"pad": 0, "cls": 2, "sep": 3}, VOCAB, 0, np.arange(2))
