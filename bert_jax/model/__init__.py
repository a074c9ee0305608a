"""The encoder, its heads and the configuration presets."""
from bert_jax.model.config import PRESETS, ModelConfig, SpeedConfig, preset
from bert_jax.model.encoder import Encoder, EncoderOutput
from bert_jax.model.pretraining import BertForPreTraining, PretrainModel, PreTrainingOutput

__all__ = ["PRESETS", "ModelConfig", "SpeedConfig", "preset", "Encoder", "EncoderOutput", "BertForPreTraining",
           "PretrainModel", "PreTrainingOutput"]
