"""The unigram floor: what a model that ignores context scores on the same predictions.

A pretrained model has learned something only where it beats predicting every target from its own pretraining
data's token frequencies. `make-data` records those frequencies in its manifest (`token_counts`, one count per
vocab id, [PAD] not counted); this module scores them on exactly the targets a batch asks the model for (MLM: the
masked positions; LTR: every next token, [SEP] included; PLM: the last tokens of each order, MLM's fields; T5 span
corruption: the span tokens of the decoder's targets, which its `span_corruption_token_loss` metric scores, as
sentinels and the end token are no vocab frequencies; ELECTRA: its generator's MLM), on the host, with vectorised numpy.

    p(t) = (count[t] + 1) / (total + V')     (add-one, so a token never seen in pretraining has a finite cost;
                                              V' ids: the vocab less those never a target, [CLS]/[SEP] for MLM)

The floor's perplexity is exp(mean -log p(target)) over the same positions and weights as the model's loss, and
the ratio reported beside it is model perplexity / floor perplexity: 1 at the floor, below 1 when the model
uses context.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from bert_jax.data.noise_spans import span_token_weights


def _masked_targets(batch):
    return batch["masked_ids"], batch["masked_weights"]


def _next_token_targets(batch):
    mask = np.asarray(batch["input_mask"])
    return batch["input_ids"][:, 1:], ((mask[:, :-1] != 0) & (mask[:, :-1] == mask[:, 1:])).astype(np.float64)


def _span_targets(batch):
    return batch["target_ids"], span_token_weights(np.asarray(batch["target_sentinels"]),
                                                   np.asarray(batch["target_weights"]))


# The loss term each floor shadows, and where a batch keeps its targets (ids, weights).
TARGETS = {"mlm_loss": _masked_targets, "ltr_loss": _next_token_targets, "plm_loss": _masked_targets,
           "span_corruption_token_loss": _span_targets,
           "generator_loss": _masked_targets}  # ELECTRA's generator: MLM at the masked positions
TERMS = tuple(TARGETS)


class UnigramError(ValueError):
    """No token counts to build a floor from; the message names the data and the fix."""


# Ids that are never a target of a term: they get no probability mass in its floor.
NEVER_TARGETS = {"mlm_loss": ("pad", "cls", "sep"), "ltr_loss": ("pad", "cls"), "plm_loss": ("pad", "cls", "sep"),
                 "span_corruption_token_loss": ("pad", "cls", "sep"), "generator_loss": ("pad", "cls", "sep")}


@dataclass(frozen=True)
class UnigramFloor:
    counts: np.ndarray  # float64 [V]: occurrences of each id in the pretraining examples ([PAD] not counted)
    special_ids: Mapping[str, int]
    _neg_log_prob: dict = field(default_factory=dict, compare=False, repr=False)  # per term, computed once

    @classmethod
    def from_manifest(cls, manifest: Mapping, source: str, vocab_size: int | None = None) -> "UnigramFloor":
        counts = manifest.get("token_counts")
        if counts is None:
            raise UnigramError(f"{source}: its manifest has no token_counts (built before they were recorded); "
                               "rerun `bert-jax make-data` with the same arguments into a new --output")
        counts = np.asarray(counts, np.float64)
        if vocab_size is not None and vocab_size > len(counts):  # a model vocab padded past the data's
            counts = np.concatenate([counts, np.zeros(vocab_size - len(counts))])
        return cls(counts, dict(manifest["special_ids"]))

    def neg_log_prob(self, term: str) -> np.ndarray:
        """-log p(id) under add-one smoothing over the ids that can be the term's targets (+inf for the others)."""
        if term not in self._neg_log_prob:
            self._neg_log_prob[term] = self._compute_neg_log_prob(term)
        return self._neg_log_prob[term]

    def _compute_neg_log_prob(self, term: str) -> np.ndarray:
        never = [self.special_ids[name] for name in NEVER_TARGETS[term]]
        counts = self.counts.copy()
        counts[never] = 0.0
        probs = (counts + 1.0) / (counts.sum() + len(counts) - len(never))
        out = -np.log(probs)
        out[never] = np.inf
        return out

    def batch_sums(self, batch: Mapping[str, np.ndarray], term: str) -> dict[str, float]:
        """{'sum/<floor>': total -log p over the batch's weighted targets, 'count/<floor>': their weight}."""
        if term not in TARGETS:
            raise ValueError(f"no unigram floor for loss term {term!r}; one of {TERMS}")
        targets, weights = TARGETS[term](batch)
        weights = np.asarray(weights, np.float64)
        nll = self.neg_log_prob(term)[np.asarray(targets)]
        nll = np.where(weights > 0, nll, 0.0)  # padding slots may hold an id that is never a target
        name = floor_name(term)
        return {f"sum/{name}": float((nll * weights).sum()), f"count/{name}": float(weights.sum())}


def accumulate(totals: dict[str, float], sums: dict, batch: Mapping[str, np.ndarray],
               floor: "UnigramFloor | None") -> None:
    """Add one eval batch to `totals`: the step's sums (on the host), the floor's on the same targets for each loss
    term of TERMS the step reports, and the number of real examples (rows with a token)."""
    sums = dict(sums)
    if floor is not None:
        for term in TERMS:
            if f"sum/{term}" in sums:
                sums.update(floor.batch_sums(batch, term))
    sums["examples"] = (np.asarray(batch["input_mask"]).max(axis=1) > 0).sum()
    for key, value in sums.items():
        totals[key] = totals.get(key, 0.0) + float(value)


def floor_name(term: str) -> str:
    return term.replace("_loss", "_unigram_loss")


def add_perplexities(summary: dict[str, float]) -> dict[str, float]:
    """Beside each mean loss of TERMS (and its floor, when scored): perplexity, floor perplexity and their ratio."""
    out = dict(summary)
    for term in TERMS:
        if term not in summary:
            continue
        prefix = term[:-len("_loss")]
        out[f"{prefix}_perplexity"] = float(np.exp(min(summary[term], 50.0)))
        floor = summary.get(floor_name(term))
        if floor is not None:
            out[f"{prefix}_unigram_perplexity"] = float(np.exp(min(floor, 50.0)))
            out[f"{prefix}_perplexity_ratio"] = float(np.exp(np.clip(summary[term] - floor, -50.0, 50.0)))
    return out
