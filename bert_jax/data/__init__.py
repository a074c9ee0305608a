"""Text -> tokenizer -> examples (shards on disk) -> masking -> per-process numpy batches.

The batch contract (what `data.pipeline` yields and `objectives/*` consume), per process, numpy:
  input_ids       int32 [B, L]  token ids after masking replacements ([MASK], random, kept)
  token_type_ids  int32 [B, L]  BERT segment A=0 / B=1
  input_mask      int32 [B, L]  0 = padding; otherwise the number (1, 2, ...) of the packed example
                                the token belongs to. Tokens attend only to equal non-zero numbers.
                                Unpacked rows are simply 1 on real tokens.
  position_ids    int32 [B, L]  restart at 0 for each packed example (arange(L) when unpacked)
  masked_positions int32 [B, P] positions predicted by MLM-style objectives (0 where weight is 0)
  masked_ids      int32 [B, P]  original ids at those positions
  masked_weights  float32 [B, P] 1.0 for real predictions, 0.0 for padding of the P slots
  sentence_label  int32 [B]     NSP: 1 = B is random, 0 = B follows A; SOP: 1 = swapped. -1 = none
Span masking adds span_left, span_right int32 [B, P] (positions of the tokens just outside each
masked span, for SpanBERT's SBO) and span_offset int32 [B, P] (0-based index inside the span).
Permutation masking (XLNet, `permutation.py`) adds perm_rank int32 [B, L] (each position's place in the row's
factorisation order) and writes its prediction targets as masked_*. T5 span masking (`noise_spans.py`) rewrites
input_ids / input_mask / token_type_ids / position_ids (spans collapsed to sentinel slots) and adds
input_sentinels int32 [B, L] (k + 1 at the k-th sentinel slot), target_ids, target_sentinels int32 [B, T] and
target_weights float32 [B, T] (the decoder's targets; masked_* have P = 0).
"""
