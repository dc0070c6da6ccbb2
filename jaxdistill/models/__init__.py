"""The model layer: one decoder-only transformer family, Hugging Face import/export, llama.cpp GGUF
import, sharding, and the structural table (`structure`) that says what each parameter axis is."""

from jaxdistill.models.config import SUPPORTED_FAMILIES, ConfigError, ModelConfig
from jaxdistill.models.gguf import GGUFError, convert_gguf, gguf_tokenizer, load_gguf
from jaxdistill.models.hf import CheckpointError, load_pretrained, save_pretrained
from jaxdistill.models.sharding import (
    RULES,
    initialize_distributed,
    logical_to_spec,
    make_mesh,
    shard_params,
    tree_shardings,
)
from jaxdistill.models.structure import AXES, decay_mask
from jaxdistill.models.transformer import (
    Transformer,
    abstract_params,
    as_module,
    forward,
    hidden_states,
    init_params,
    logical_axes,
)

__all__ = [
    "AXES", "RULES", "SUPPORTED_FAMILIES", "CheckpointError", "ConfigError", "GGUFError", "ModelConfig",
    "Transformer", "abstract_params", "as_module", "convert_gguf", "decay_mask", "forward", "gguf_tokenizer",
    "hidden_states", "init_params", "initialize_distributed", "load_gguf", "load_pretrained", "logical_axes",
    "logical_to_spec", "make_mesh", "save_pretrained", "shard_params", "tree_shardings",
]
