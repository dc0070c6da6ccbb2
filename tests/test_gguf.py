"""GGUF import against independent references: `gguf.quants.dequantize` of the stored bytes and the
float values that were quantised, transformers' own GGUF loader and GGUF tokenizer (torch, test
only), the original Hugging Face checkpoint a GGUF was written from, and llama.cpp's digit split.

The tiny GGUF files are written here the way llama.cpp's converter writes them: llama q/k rows
permuted into pair order, 1-D tensors in F32, the output projection left out when tied."""

import functools
import hashlib
import json
import os
import subprocess
import sys

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxdistill.models import forward, load_pretrained, make_mesh
from jaxdistill.models.gguf import GGUFError, convert_gguf, gguf_tokenizer, load_gguf
from tests.tiny_models import hf_logits, make_hf_checkpoint, random_sequences

T = gguf.GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                 "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's a test, isn't it? We'll see what they've done.",
    "In 2024 there were 12345 tokens; in 2025, 67890 more. Prices: $3.50, 1,000,000 and 3.14159.",
    "def forward(self, x):\n    return self.proj(x) + x  # residual\n\n\tindented\ttabs",
    "Café déjà vu, naïve façade; Übergrößen. 日本語のテキスト. Emoji 🙂🚀 and more words here.",
    "Hello world! HELLO World! hello, WORLD. Distillation of language models into students.",
]
TEXTS = [
    "Hello world!", "The quick brown fox.", "It's 2024: 12345 + 67890 = 80235.", "  leading spaces",
    "trailing spaces   ", "tabs\tand\nnew\n\nlines\r\n", "Café naïve 日本語 🙂", "I'm sure they'll've",
    "<|im_start|>user\nhi<|im_end|>", "text<|endoftext|>more", "<think>reason</think>", "",
]

# ------------------------------------------------------------------------- building GGUF files


@functools.lru_cache(maxsize=None)
def bpe_vocab(size: int = 320):
    """A byte-level BPE vocabulary trained on CORPUS: (tokens, merges, token types) in id order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=size, special_tokens=SPECIALS + USER_DEFINED, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    types = [3 if t in SPECIALS else 4 if t in USER_DEFINED else 1 for t in tokens]
    return tokens, merges, types


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: q/k rows from rotate-half order into pair order."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {  # Hugging Face suffix -> llama.cpp suffix
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight", "rope_freqs.weight": "rope_freqs.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[rest]}"


def random_blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    """Valid random bytes for a type gguf cannot quantise: random codes, finite small f16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    scale_bytes = {T.Q4_K: [0, 2], T.Q6_K: [size - 2]}[qtype]  # d (and dmin) as f16
    for at in scale_bytes:
        scales = rng.uniform(0.001, 0.02, (rows, cols // block)).astype(np.float16)
        data[..., at:at + 2] = scales[..., None].view(np.uint8)
    return data.reshape(rows, -1)


def encode(w: np.ndarray, qtype, rng) -> np.ndarray:
    """The bytes (or F32/F16 array) llama.cpp would store for w [out, in] as qtype."""
    if qtype in (T.Q4_K, T.Q6_K):
        return random_blocks(*w.shape, qtype, rng)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def write_gguf(path, arch: str, tensors: dict, hf: dict, types=lambda name: T.F32, *, seed=0,
               tokenizer: dict | None = None, model_name="tiny"):
    """Write Hugging Face-named float tensors as llama.cpp would; returns GGUF name -> (type, stored).

    types(gguf name) -> tensor type of a 2-D tensor (1-D ones are F32, as llama.cpp writes them)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(model_name)
    w.add_block_count(hf["num_hidden_layers"])
    w.add_context_length(hf.get("max_position_embeddings", 128))
    w.add_embedding_length(hf["hidden_size"])
    w.add_feed_forward_length(hf["intermediate_size"])
    w.add_head_count(hf["num_attention_heads"])
    w.add_head_count_kv(hf["num_key_value_heads"])
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(hf.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(hf.get("rms_norm_eps", 1e-5))
    w.add_vocab_size(hf["vocab_size"])
    if tokenizer is not None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokenizer.get("pre", "gpt-2"))
        tokens, merges, token_types = bpe_vocab()
        w.add_token_list(tokens)
        w.add_token_types(token_types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tokens.index("<|im_start|>"))
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_pad_token_id(tokens.index("<|endoftext|>"))
        w.add_unk_token_id(tokens.index("<|endoftext|>"))
        if "add_bos" in tokenizer:
            w.add_add_bos_token(tokenizer["add_bos"])
        w.add_chat_template(CHAT_TEMPLATE)
    stored = {}
    for hf_name, x in tensors.items():
        name = gguf_name(hf_name)
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            heads = hf["num_attention_heads"] if ".attn_q." in name else hf["num_key_value_heads"]
            x = llama_cpp_permute(x, heads)
        qtype = types(name) if x.ndim == 2 else T.F32
        data = encode(x, qtype, rng)
        w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        stored[name] = (qtype, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def hf_config(arch: str, **changes) -> dict:
    base = dict(vocab_size=len(bpe_vocab()[0]), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                rope_theta=10000.0, max_position_embeddings=128)
    if arch == "qwen3":  # transformers' GGUF reader ignores key_length: Qwen3's head dim is 128
        base.update(num_attention_heads=2, num_key_value_heads=1, head_dim=128)
    return {**base, **changes}


def random_tensors(arch: str, hf: dict, *, tied: bool, seed: int = 0) -> dict:
    """Hugging Face-named float32 weights of a random model, with O(1) logits."""
    rng = np.random.default_rng(seed)
    d, F, V = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
    H, K = hf["num_attention_heads"], hf["num_key_value_heads"]
    D = hf.get("head_dim") or d // H
    shapes = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
    if not tied:
        shapes["lm_head.weight"] = (V, d)
    for i in range(hf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (H * D, d), p + "self_attn.k_proj.weight": (K * D, d),
                       p + "self_attn.v_proj.weight": (K * D, d), p + "self_attn.o_proj.weight": (d, H * D),
                       p + "mlp.gate_proj.weight": (F, d), p + "mlp.up_proj.weight": (F, d),
                       p + "mlp.down_proj.weight": (d, F)})
        if arch == "qwen2":
            shapes.update({p + f"self_attn.{x}_proj.bias": (n,)
                           for x, n in (("q", H * D), ("k", K * D), ("v", K * D))})
        if arch == "qwen3":
            shapes.update({p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,)})
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            out[name] = 0.2 * rng.standard_normal(shape)
        else:
            out[name] = rng.standard_normal(shape) / np.sqrt(shape[-1]) * 2
    return {k: v.astype(np.float32) for k, v in out.items()}


# Mixed storage as in a real quantised file (K-quants need rows of 256, so they get their own test).
MIXED = {"token_embd": T.Q8_0, "attn_q": T.Q4_1, "attn_k": T.Q4_0, "attn_v": T.BF16,
         "attn_output": T.F16, "ffn_gate": T.Q8_0, "ffn_up": T.Q4_0, "ffn_down": T.Q4_1, "output": T.Q8_0}


def mixed_types(name: str):
    return MIXED[name.removesuffix(".weight").split(".")[-1]]


def transformers_logits(directory, tokens, gguf_file=None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                 attn_implementation="eager", **kwargs)
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens)[None], dtype=torch.long)).logits[0].numpy()


# ------------------------------------------------------------------------- tensor types


# hidden 256 so that every tensor type, K-quants included, fits whole blocks in a row
TYPE_CONFIG = dict(vocab_size=16, hidden_size=256, intermediate_size=256, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=128)


def quantisation_bound(x: np.ndarray, qtype) -> np.ndarray:
    """Largest |dequantised - x| each element may show for qtype: half a quantisation step of its
    block of 32, plus the f16 rounding of the block's scale and offset."""
    if qtype == T.F32:
        return np.zeros_like(x)
    if qtype in (T.F16, T.BF16):
        return np.abs(x) * {T.F16: 2.0**-11, T.BF16: 2.0**-8}[qtype] + 1e-7
    blocks = x.reshape(x.shape[0], -1, 32)
    lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    amax = np.maximum(-lo, hi)
    # Q4_0's scale is amax / 8 but the far end of the range clips at 7 steps: up to a whole step
    step = {T.Q8_0: amax / 127, T.Q4_0: amax / 8 * 2, T.Q4_1: (hi - lo) / 15}[qtype]
    return np.broadcast_to(step / 2 + amax * 2.0**-8, blocks.shape).reshape(x.shape)


def as_hf(params, config) -> dict:
    """Our loaded params back in Hugging Face [out, in] layout, layer 0 (an independent view)."""
    attn, mlp = params["layers"]["attn"], params["layers"]["mlp"]
    d = config.hidden_size
    hf = {"model.embed_tokens.weight": params["embed"], "lm_head.weight": params["lm_head"]["kernel"].T}
    for p in "qkv":
        hf[f"model.layers.0.self_attn.{p}_proj.weight"] = attn[p]["kernel"][0].reshape(d, -1).T
    hf["model.layers.0.self_attn.o_proj.weight"] = attn["o"]["kernel"][0].reshape(-1, d).T
    for p in ("gate", "up", "down"):
        hf[f"model.layers.0.mlp.{p}_proj.weight"] = mlp[p]["kernel"][0].T
    return {k: np.asarray(v) for k, v in hf.items()}


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q6_K],
                         ids=lambda t: t.name)
def test_tensor_type_dequantised_exactly(qtype, tmp_path):
    """Every weight equals gguf's dequantisation of its stored bytes (q/k compared in llama.cpp's row
    order), and is within the type's rounding error of the floats that were quantised."""
    floats = random_tensors("llama", TYPE_CONFIG, tied=False)
    stored = write_gguf(tmp_path / "m.gguf", "llama", floats, TYPE_CONFIG, lambda name: qtype)
    config, params = load_gguf(tmp_path / "m.gguf")
    # parameters keep the embedding's float type (exact for F16 / BF16 values), else float32
    assert config.param_dtype == {T.F16: "float16", T.BF16: "bfloat16"}.get(qtype, "float32")
    ours = {name: x.astype(np.float32) for name, x in as_hf(params, config).items()}
    assert set(ours) <= set(floats)
    for name, x in ours.items():
        qt, data = stored[gguf_name(name)]
        assert qt == qtype
        expected = gguf.quants.dequantize(data, qtype).reshape(x.shape)
        heads = {"q_proj": config.num_heads, "k_proj": config.num_kv_heads}.get(name.split(".")[-2])
        as_stored = llama_cpp_permute(x, heads) if heads else x
        np.testing.assert_array_equal(as_stored, expected, err_msg=name)
        if qtype not in (T.Q4_K, T.Q6_K):  # random block bytes for types gguf cannot quantise
            original = llama_cpp_permute(floats[name], heads) if heads else floats[name]
            assert (np.abs(as_stored - original) <= quantisation_bound(original, qtype)).all(), name
    if qtype == T.Q4_K:  # the same values placed straight into shards on a mesh
        _, sharded = load_gguf(tmp_path / "m.gguf", mesh=make_mesh((1, 2, 4)))
        q = sharded["layers"]["attn"]["q"]["kernel"]
        assert len(q.sharding.device_set) == 8
        np.testing.assert_array_equal(np.asarray(q), np.asarray(params["layers"]["attn"]["q"]["kernel"]))


# ------------------------------------------------------------------------- logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_logits_match_transformers(arch, tmp_path):
    """Our model from the GGUF, transformers from the GGUF, and transformers from our converted
    directory give the same logits (llama's q/k written permuted, as llama.cpp does)."""
    hf = hf_config(arch)
    tied = arch == "qwen2"
    write_gguf(tmp_path / "model.gguf", arch, random_tensors(arch, hf, tied=tied), hf, mixed_types,
               tokenizer={"pre": "qwen2" if arch != "llama" else "llama-bpe", "add_bos": True})
    tokens = np.random.default_rng(1).integers(0, hf["vocab_size"], 11)
    config, params = load_pretrained(tmp_path / "model.gguf")
    assert (config.model_type, config.tie_word_embeddings) == (arch, tied)
    ours = np.asarray(forward(config, params, jnp.asarray(tokens[None])))[0]
    reference = transformers_logits(tmp_path, tokens, gguf_file="model.gguf")
    scale = max(1.0, np.abs(reference).max())
    assert np.abs(reference).max() > 1.0  # something to detect
    assert np.abs(ours - reference).max() <= 1e-4 * scale
    converted = convert_gguf(tmp_path / "model.gguf", tmp_path / "hf")
    assert np.abs(transformers_logits(converted, tokens) - reference).max() <= 1e-4 * scale


def test_llama3_rope_freqs_against_original_checkpoint(tmp_path):
    """A Llama 3 GGUF carries its RoPE scaling only as a rope_freqs tensor; the model we load from it
    gives the logits of the Hugging Face checkpoint it was written from."""
    src = make_hf_checkpoint("llama3", tmp_path / "src")
    hf = json.loads((src / "config.json").read_text())
    rope = hf.get("rope_parameters") or hf["rope_scaling"]
    D = hf["hidden_size"] // hf["num_attention_heads"]
    # llama.cpp's converter: one divisor per frequency, from the llama3 band formula
    inv_freq = 1.0 / hf.get("rope_theta", rope.get("rope_theta")) ** (np.arange(0, D, 2) / D)
    wavelength = 2 * np.pi / inv_freq
    old, low, high = (rope[k] for k in ("original_max_position_embeddings", "low_freq_factor",
                                         "high_freq_factor"))
    smooth = (old / wavelength - low) / (high - low)
    divisors = np.where(wavelength < old / high, 1.0, np.where(
        wavelength > old / low, rope["factor"], 1 / ((1 - smooth) / rope["factor"] + smooth)))
    tensors = {**load_file(str(src / "model.safetensors")), "rope_freqs.weight": divisors.astype(np.float32)}
    hf = {**hf, "rope_theta": hf.get("rope_theta", rope.get("rope_theta"))}
    write_gguf(tmp_path / "m.gguf", "llama", tensors, hf)
    config, params = load_gguf(tmp_path / "m.gguf")
    assert config.rope_params["rope_type"] == "llama3"
    assert config.rope_params["factor"] == pytest.approx(rope["factor"])
    seqs = random_sequences([12])
    ours = np.asarray(forward(config, params, jnp.asarray(seqs[0][None])))[0]
    assert np.abs(ours - hf_logits(src, seqs)[0]).max() <= 1e-4


# ------------------------------------------------------------------------- tokenizer


def tokenizer_file(path, pre: str, add_bos=None, arch="llama"):
    hf = hf_config(arch)
    tok = {"pre": pre} if add_bos is None else {"pre": pre, "add_bos": add_bos}
    write_gguf(path, arch, {}, hf, tokenizer=tok)
    return path


@pytest.mark.parametrize("pre, add_bos", [("gpt-2", False), ("llama-bpe", True), ("qwen2", False)])
def test_tokenizer_matches_transformers(pre, add_bos, tmp_path):
    """Same ids as transformers' GGUF tokenizer on plain text, special and added tokens, and the
    chat template; the converted directory's tokenizer reloads to the same ids."""
    from transformers import AutoTokenizer

    path = tokenizer_file(tmp_path / "t.gguf", pre, add_bos)
    ours = gguf_tokenizer(path)
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    for text in TEXTS:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
        assert ours.decode(ours(text)["input_ids"], skip_special_tokens=False).endswith(text)
    assert (ours("a b")["input_ids"][0] == ours.bos_token_id) == add_bos
    messages = [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42."}]
    text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n")
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    assert [ours.bos_token, ours.eos_token, ours.pad_token] == ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def test_digits_split_one_by_one_for_smollm(tmp_path):
    """llama.cpp's 'smollm' pre-tokenizer (as SmolLM's tokenizer.json) splits digits one by one;
    'gpt-2' keeps runs of digits together."""
    tokens = bpe_vocab()[0]
    assert any(len(t) > 1 and t.isdigit() for t in tokens)  # merges of digits exist to be avoided
    smol = gguf_tokenizer(tokenizer_file(tmp_path / "s.gguf", "smollm"))
    gpt2 = gguf_tokenizer(tokenizer_file(tmp_path / "g.gguf", "gpt-2"))
    expected = [tokens.index(c) for c in "2024"]
    assert smol("2024")["input_ids"] == expected
    assert gpt2("2024")["input_ids"] != expected
    assert smol(" 12345")["input_ids"] == [tokens.index("Ġ")] + [tokens.index(c) for c in "12345"]


# ------------------------------------------------------------------------- convert


def test_convert_writes_a_complete_directory_without_torch(tmp_path):
    """convert_gguf works in an interpreter where torch cannot be imported (as in an install without
    the test extra); the directory it leaves has the provenance record, the token ids and chat
    template, and no temporary siblings."""
    from transformers import AutoTokenizer

    hf = hf_config("llama")
    write_gguf(tmp_path / "m.gguf", "llama", random_tensors("llama", hf, tied=True), hf, mixed_types,
               tokenizer={"pre": "llama-bpe", "add_bos": True}, model_name="Tiny Llama")
    out = tmp_path / "out" / "hf"
    script = ("import sys; sys.modules['torch'] = None; "  # find_spec -> None, import -> ImportError
              "from jaxdistill.models.gguf import convert_gguf; "
              f"convert_gguf({str(tmp_path / 'm.gguf')!r}, {str(out)!r})")
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert sorted(p.name for p in out.parent.iterdir()) == ["hf"]
    source = json.loads((out / "gguf_source.json").read_text())
    assert source["sha256"] == hashlib.sha256((tmp_path / "m.gguf").read_bytes()).hexdigest()
    assert source["general"]["name"] == "Tiny Llama" and source["general"]["architecture"] == "llama"
    assert source["tensor_types"] == {"F32": 5, "Q8_0": 3, "Q4_1": 4, "Q4_0": 4, "BF16": 2, "F16": 2}
    tokens = bpe_vocab()[0]
    ids = {"bos_token_id": tokens.index("<|im_start|>"), "eos_token_id": tokens.index("<|im_end|>"),
           "pad_token_id": tokens.index("<|endoftext|>")}
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    for key, value in ids.items():
        assert config[key] == generation[key] == value, key
    assert tokenizer_config["chat_template"] == CHAT_TEMPLATE
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"], tokenizer_config["pad_token"]) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert (tokenizer_config["add_bos_token"], tokenizer_config["add_eos_token"]) == (True, False)
    reloaded, ours = AutoTokenizer.from_pretrained(out), gguf_tokenizer(tmp_path / "m.gguf")
    for text in TEXTS:
        assert reloaded(text)["input_ids"] == ours(text)["input_ids"], text
    convert_gguf(tmp_path / "m.gguf", out)  # over an earlier conversion: replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(GGUFError, match="not an earlier GGUF conversion"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "other")


# ------------------------------------------------------------------------- errors


def test_unsupported_inputs_name_the_problem(tmp_path):
    hf = hf_config("llama")
    tensors = random_tensors("llama", hf, tied=True)
    write_gguf(tmp_path / "a.gguf", "gptneox", tensors, hf)
    with pytest.raises(GGUFError, match=r"'gptneox'.*llama, qwen2, qwen3"):
        load_gguf(tmp_path / "a.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "b.gguf"), "llama")
    block, size = gguf.GGML_QUANT_SIZES[T.Q8_1]
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 64 // block * size), np.uint8), raw_dtype=T.Q8_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"'blk.0.ffn_up.weight' is stored as Q8_1.*supported types: F32"):
        load_gguf(tmp_path / "b.gguf")
    write_gguf(tmp_path / "c.gguf", "llama", {}, hf, tokenizer={"pre": "whatever"})
    with pytest.raises(GGUFError, match=r"tokenizer.ggml.pre='whatever'.*smollm"):
        gguf_tokenizer(tmp_path / "c.gguf")
