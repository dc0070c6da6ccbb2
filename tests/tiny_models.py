"""Tiny random Hugging Face checkpoints of every supported family, built with transformers (torch).

Weights are redrawn with a larger scale than transformers' 0.02 init so logits are O(1-10) and a
parity test has something to detect; norm scales are perturbed away from 1 and biases from 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = 97

# name -> (transformers config class name, config kwargs)
FAMILIES = {
    # Llama 3.1: GQA, llama3 RoPE scaling with a short original context so all three bands occur.
    "llama3": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    # Llama 2 style multi-head attention, tied embeddings, attention bias, linear RoPE scaling.
    "llama_tied": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0})),
    # Qwen2/2.5: q/k/v bias, tied embeddings (as the small Qwen2.5 models).
    "qwen2": ("Qwen2Config", dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        rope_theta=1000000.0)),
    # Qwen3: q/k RMSNorm, head_dim decoupled from hidden_size / heads, untied.
    "qwen3": ("Qwen3Config", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        rope_theta=1000000.0)),
    # Mistral: sliding-window attention with a window shorter than the test sequences.
    "mistral": ("MistralConfig", dict(
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
        sliding_window=5)),
}


def hf_config(name: str, **overrides):
    import transformers

    cls_name, kwargs = FAMILIES[name]
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    return getattr(transformers, cls_name)(**{**base, **kwargs, **overrides})


def make_hf_checkpoint(name: str, path: Path, seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(name, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def hf_logits(path: Path, sequences, dtype: str = "float32") -> list[np.ndarray]:
    """float32 logits [T, V] from transformers (eager attention, CPU), each sequence run alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                 attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return [model(torch.as_tensor(np.asarray(seq)[None], dtype=torch.long)).logits[0].float().numpy()
                for seq in sequences]


def random_sequences(lengths, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, n) for n in lengths]


def pad_batch(sequences, length: int, pad_id: int = 0):
    """tokens, segment_ids [B, length]: each sequence is segment 1, right padding is segment 0."""
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    segments = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        tokens[row, :len(seq)] = seq
        segments[row, :len(seq)] = 1
    return tokens, segments


def pack_batch(rows, length: int, pad_id: int = 0):
    """tokens, segment_ids [B, length] from rows of sequences; segments numbered 1, 2, ... per row."""
    tokens = np.full((len(rows), length), pad_id, np.int32)
    segments = np.zeros((len(rows), length), np.int32)
    for r, row in enumerate(rows):
        start = 0
        for s, seq in enumerate(row, start=1):
            tokens[r, start:start + len(seq)] = seq
            segments[r, start:start + len(seq)] = s
            start += len(seq)
    return tokens, segments
