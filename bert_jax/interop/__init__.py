"""Interop with transformers (PyTorch) BERT checkpoints, and the bert_jax params file format."""
from bert_jax.interop.params_file import (PARAMS_FORMAT, ParamsFileError, check_param_tree, expected_param_shapes,
                                          host_params, load_params, relayout, save_params, to_scanned_layout,
                                          to_unscanned_layout)
from bert_jax.interop.hf_bert import (ConversionError, HFConversion, check_hf_compatible, config_from_hf,
                                     convert_hf_state_dict, hf_config_from_model, hf_state_dict,
                                     load_hf_checkpoint, read_hf_checkpoint, save_hf_checkpoint)

__all__ = ["PARAMS_FORMAT", "ParamsFileError", "check_param_tree", "expected_param_shapes", "host_params",
           "load_params", "relayout", "save_params", "to_scanned_layout", "to_unscanned_layout", "ConversionError",
           "HFConversion", "check_hf_compatible", "config_from_hf", "convert_hf_state_dict", "hf_config_from_model",
           "hf_state_dict", "load_hf_checkpoint", "read_hf_checkpoint", "save_hf_checkpoint"]
