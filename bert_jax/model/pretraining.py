"""BertForPreTraining: the encoder with BERT's MLM and next-sentence heads (the transformers-parity model)."""
from __future__ import annotations


import flax.struct

import flax.linen as nn
import jax

from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.encoder import Encoder
from bert_jax.model.heads import Classifier, MLMHead, Pooler

Array = jax.Array


@flax.struct.dataclass
class PreTrainingOutput:
    mlm_logits: Array  # [B, P, V] at masked positions, or [B, L, V] when positions is None
    sentence_logits: Array  # [B, 2]
    sequence: Array


class BertForPreTraining(nn.Module):
    config: ModelConfig
    speed: SpeedConfig = SpeedConfig()

    def setup(self):
        self.encoder = Encoder(self.config, speed=self.speed)
        self.mlm_head = MLMHead(self.config)
        self.pooler = Pooler(self.config)
        self.nsp_head = Classifier(self.config, 2)

    def __call__(self, input_ids, token_type_ids=None, input_mask=None, position_ids=None,
                 masked_positions=None, deterministic: bool = True) -> PreTrainingOutput:
        out = self.encoder(input_ids, token_type_ids, input_mask, position_ids, deterministic)
        mlm_logits = self.mlm_head(out.sequence, self.encoder.attend, masked_positions)
        sentence_logits = self.nsp_head(self.pooler(out.sequence))
        return PreTrainingOutput(mlm_logits=mlm_logits, sentence_logits=sentence_logits, sequence=out.sequence)
