"""`ModelConfig`: the architecture and dtype/remat policy of one decoder-only transformer.

One frozen (hashable) dataclass covers every supported family; `from_hf_dict` reads a Hugging Face
`config.json` dict and `to_hf_dict` writes one back. The family differences it captures:

| family  | q/k/v bias        | o bias            | q/k RMSNorm | sliding window      |
|---------|-------------------|-------------------|-------------|---------------------|
| llama   | attention_bias    | attention_bias    | no          | no                  |
| mistral | no                | no                | no          | `sliding_window`    |
| qwen2   | yes               | no                | no          | only if all layers  |
| qwen3   | attention_bias    | attention_bias    | yes         | only if all layers  |
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ROPE_REQUIRED = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
REMAT_POLICIES = ("auto", "none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = (None, "xla", "cudnn")
PARAM_DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPES = ("float32", "bfloat16")

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def _family_flags(model_type: str, attention_bias: bool) -> tuple[bool, bool, bool]:
    """(qkv_bias, o_bias, qk_norm) of a family, given config.json's `attention_bias`."""
    return {
        "llama": (attention_bias, attention_bias, False),
        "mistral": (False, False, False),
        "qwen2": (True, False, False),
        "qwen3": (attention_bias, attention_bias, True),
    }[model_type]


class ConfigError(ValueError):
    """A model configuration (or checkpoint) the model layer cannot run."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus dtype/remat policy. Hashable, so it is a static argument under `jax.jit`."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # rope scaling as sorted (key, value) pairs so the config stays hashable; None = plain RoPE.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    max_position_embeddings: int = 4096
    # dtype policy: parameters are stored in param_dtype, matmuls run in compute_dtype;
    # norms, RoPE, attention softmax and logits are always fp32.
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    # remat policy for the scanned layer body: auto | none | full | dots | dots_no_batch; auto picks
    # per backend and size when the step is traced (`remat_for`).
    remat_policy: str = "auto"
    # None: causal attention in query blocks, skipping the masked upper triangle (`attention.py`);
    # "xla": jax.nn.dot_product_attention's XLA path (full T x T); "cudnn": the fused cuDNN kernel on GPUs.
    attention_impl: str | None = None
    # Token ids carried through to exported config.json; no effect on the forward pass.
    bos_token_id: int | None = dataclasses.field(default=None, compare=False)
    eos_token_id: int | tuple[int, ...] | None = dataclasses.field(default=None, compare=False)
    pad_token_id: int | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_FAMILIES:
            raise ConfigError(
                f"unsupported model_type {self.model_type!r}: supported families are "
                f"{', '.join(SUPPORTED_FAMILIES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}={value!r}: must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}: "
                "grouped-query attention needs whole groups"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim}: RoPE needs an even head dimension")
        if self.param_dtype not in PARAM_DTYPES:
            raise ConfigError(f"param_dtype={self.param_dtype!r}: valid values are {', '.join(PARAM_DTYPES)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(
                f"compute_dtype={self.compute_dtype!r}: valid values are {', '.join(COMPUTE_DTYPES)}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(
                f"remat_policy={self.remat_policy!r}: valid values are {', '.join(REMAT_POLICIES)}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(
                f"attention_impl={self.attention_impl!r}: valid values are None, 'xla', 'cudnn'"
            )
        if isinstance(self.rope_scaling, dict):  # accept a dict, store it hashable
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())) or None)
        rope_type = self.rope_params.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"unsupported rope_type {rope_type!r}: supported are {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        missing = [k for k in _ROPE_REQUIRED.get(rope_type, ()) if k not in self.rope_params]
        if missing:
            raise ConfigError(f"rope_type {rope_type!r} needs {', '.join(missing)} in rope_scaling; "
                              f"got {self.rope_params}")
        if self.attention_impl == "cudnn" and self.compute_dtype == "float32":
            raise ConfigError("attention_impl='cudnn' needs compute_dtype bfloat16 (cuDNN attention "
                              "takes fp16/bf16 only); use attention_impl=None for float32")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window={self.sliding_window}: must be positive or None")

    @property
    def rope_params(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_compute_dtype(self):
        return jnp.dtype(self.compute_dtype)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- Hugging Face config.json

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> ModelConfig:
        """Read a Hugging Face `config.json` dict (transformers v4 or v5 layout)."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_FAMILIES:
            raise ConfigError(
                f"unsupported model_type {model_type!r}: supported families are "
                f"{', '.join(SUPPORTED_FAMILIES)}"
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"hidden_act={act!r}: only 'silu' (SwiGLU) is supported")
        if hf.get("mlp_bias"):
            raise ConfigError("mlp_bias=true is not supported: the MLP projections must have no bias")
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        # transformers v5 keeps theta and scaling together in `rope_parameters`; v4 splits them.
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ConfigError("partial_rotary_factor != 1 is not supported")
        rope.pop("partial_rotary_factor", None)
        rope_scaling = None if rope_type == "default" else tuple(
            sorted({"rope_type": rope_type, **rope}.items()))

        qkv_bias, o_bias, qk_norm = _family_flags(model_type, bool(hf.get("attention_bias", False)))

        sliding_window = None
        if model_type == "mistral":
            sliding_window = hf.get("sliding_window")
        elif hf.get("use_sliding_window") and hf.get("sliding_window"):
            # As transformers: without explicit layer_types, layers i >= max_window_layers slide.
            first_sliding = hf.get("max_window_layers", 28)
            layer_types = hf.get("layer_types") or [
                "sliding_attention" if i >= first_sliding else "full_attention"
                for i in range(hf["num_hidden_layers"])]
            kinds = set(layer_types)
            if kinds == {"sliding_attention"}:
                sliding_window = hf["sliding_window"]
            elif kinds != {"full_attention"}:
                raise ConfigError(
                    f"layer_types {layer_types} mix sliding and full attention; only uniform layers "
                    "are supported (all sliding or all full)")
        eos = hf.get("eos_token_id")
        fields = dict(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            qk_norm=qk_norm,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=sliding_window,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` dict, in the layout of the installed transformers version."""
        from transformers import AutoConfig  # config classes only; no torch needed

        kwargs: dict[str, Any] = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_params or None,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",
            bos_token_id=self.bos_token_id,
            eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            pad_token_id=self.pad_token_id,
            architectures=[_ARCHITECTURES[self.model_type]],
        )
        flags = (self.qkv_bias, self.o_bias, self.qk_norm)
        if flags not in (_family_flags(self.model_type, False), _family_flags(self.model_type, True)):
            raise ConfigError(
                f"(qkv_bias, o_bias, qk_norm)={flags} cannot be expressed as a {self.model_type} "
                f"config.json; that family allows {_family_flags(self.model_type, False)} or "
                f"{_family_flags(self.model_type, True)}")
        if self.model_type in ("llama", "qwen3"):
            kwargs["attention_bias"] = self.qkv_bias
        if self.model_type == "mistral":
            kwargs["sliding_window"] = self.sliding_window
        elif self.model_type in ("qwen2", "qwen3") and self.sliding_window is not None:
            kwargs.update(use_sliding_window=True, sliding_window=self.sliding_window,
                          max_window_layers=0,
                          layer_types=["sliding_attention"] * self.num_layers)
        hf = AutoConfig.for_model(self.model_type, **kwargs).to_dict()
        hf["torch_dtype" if "torch_dtype" in hf else "dtype"] = self.param_dtype
        return hf


def saved_activation_bytes(config: ModelConfig, tokens: float, seq_len: int) -> float:
    """Bytes the layer scan saves for the backward pass without remat, for `tokens` tokens in rows of
    `seq_len` (about: the block's inputs, norms, q/k/v, attention output, the MLP's gate/up/activation,
    and XLA attention's fp32 scores and probabilities [H, T] per token, per layer)."""
    c = config
    per_token = (4 * c.hidden_size + (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim
                 + 3 * c.intermediate_size)
    itemsize = 2 if c.compute_dtype == "bfloat16" else 4
    scores = 2 * c.num_heads * seq_len * 4
    return float((per_token * itemsize + scores) * c.num_layers * tokens)


def remat_for(config: ModelConfig, tokens: int, seq_len: int | None = None) -> str:
    """The remat policy a step on `tokens` tokens (global, rows of `seq_len`) uses. An explicit policy
    is kept; `auto` is `dots_no_batch` on CPU — keeping only the projections' outputs and recomputing
    the rest beats storing every residual of the layer scan there (cpu_small student, layers forward +
    backward: 310 ms vs 330 ms `full`, 385 ms `none`; benchmarks/RESULTS.md, 2026-11-30) — and on
    accelerators `none` while the saved activations take under 30% of a device's memory, else `full`
    (the tokens are split over every device: under tensor parallelism that underestimates; multi-host
    runs with different devices per host should set the policy explicitly)."""
    if config.remat_policy != "auto":
        return config.remat_policy
    import jax

    if jax.default_backend() == "cpu":
        return "dots_no_batch"
    try:  # this process's first device (a non-local device has no stats)
        limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # a backend without memory stats
        limit = None
    per_device = saved_activation_bytes(config, tokens / jax.device_count(), seq_len or tokens)
    return "none" if limit is None or per_device < 0.3 * limit else "full"
