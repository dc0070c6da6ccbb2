"""llama.cpp GGUF import, torch-free: weights, config and tokenizer from one `.gguf` file.

`load_gguf(file)` reads the tensors with `gguf.GGUFReader` (memory-mapped), dequantises each one
to float32 with `gguf.quants.dequantize` as it is placed, and hands Hugging Face-named tensors in
Hugging Face layout to `hf.load_tensors`, so placement, shape checks and dtype policy are those of
`load_pretrained`. `convert_gguf(file, dir)` writes the same model as a safetensors Hugging Face
directory (`save_pretrained`) plus the tokenizer (`gguf_tokenizer`), `generation_config.json`
and `gguf_source.json` (where it came from).

Tensor names (llama.cpp -> Hugging Face; GGUF lists dims fastest-first, `ne = [in, out]`, so the
numpy array the reader gives is already [out, in] like `nn.Linear.weight`):

    token_embd.weight              model.embed_tokens.weight         [V, d]
    blk.{i}.attn_norm.weight       model.layers.{i}.input_layernorm.weight
    blk.{i}.attn_{q,k,v}.{weight,bias}  ...self_attn.{q,k,v}_proj.{weight,bias}
    blk.{i}.attn_output.{weight,bias}   ...self_attn.o_proj.{weight,bias}
    blk.{i}.attn_{q,k}_norm.weight ...self_attn.{q,k}_norm.weight    (qwen3)
    blk.{i}.ffn_norm.weight        ...post_attention_layernorm.weight
    blk.{i}.ffn_{gate,up,down}.weight   ...mlp.{gate,up,down}_proj.weight
    output_norm.weight             model.norm.weight
    output.weight                  lm_head.weight                    (absent: tied embeddings)
    rope_freqs.weight              -> llama3 rope scaling in the config (see `_llama3_rope`)

Q/K row order (llama architecture only; qwen2/qwen3 files are not permuted). Hugging Face rotates
the two halves of each head ("rotate half"); llama.cpp's llama graph rotates adjacent pairs, so its
converter reorders the rows of q (H heads) and k (K heads) and of their biases:

    gguf = hf.reshape(n, 2, D/2, -1).swapaxes(1, 2).reshape(hf.shape)      (D = head dim)

which puts row h*D + j*2 + c at hf row h*D + c*D/2 + j. We apply the inverse,
`gguf.reshape(n, D/2, 2, -1).swapaxes(1, 2)`.

Config (`{arch}.` keys): block_count, embedding_length, feed_forward_length,
attention.head_count(_kv), attention.key_length (head dim, else d / H), rope.freq_base,
attention.layer_norm_rms_epsilon, context_length, rope.scaling.{type,factor} (linear); vocab size
from the embedding. Mistral files carry `general.architecture = llama` and load as llama (llama.cpp
runs them without a sliding window as well).

Tokenizer: byte-level BPE (`tokenizer.ggml.model = gpt2`) built directly with `tokenizers`:
vocabulary and merges from the file, the pre-tokenizer splits llama.cpp uses for
`tokenizer.ggml.pre` (`_PRE_TOKENIZERS`), control tokens (type 3) as special tokens and
user-defined ones (type 4) as added tokens, BOS prepended when `add_bos_token` says so, or, when
the file does not say, when llama.cpp would (llama3 and tekken vocabularies; transformers' own GGUF
tokenizer adds none then). For `smollm` (digits split one by one, as SmolLM's tokenizer.json)
transformers falls back to GPT-2's split, which gives the same ids only while the vocabulary has
no multi-digit tokens.

Kept as one module (~510 lines) on purpose: the name map, the Q/K permutation, the config read from
metadata and the tokenizer rebuilt from the same metadata are one format's reader, and every part reads
the same `GGUFReader` fields; the seam, if it grows, is the tokenizer (`gguf_tokenizer` and its
pre-tokenizer table) into `models/gguf_tokenizer.py`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from jax.sharding import Mesh

from jaxdistill.atomic_files import write_json
from jaxdistill.models import sharding as sharding_lib
from jaxdistill.models.config import ModelConfig
from jaxdistill.models.hf import CheckpointError, load_tensors, save_pretrained
from jaxdistill.models.rope import rope_inv_freq
from jaxdistill.models.transformer import Params

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# What `gguf.quants.dequantize` can read in the installed gguf: F32, F16 and every type it has a
# block codec for (BF16, Q4_0 ... Q8_0, the K-quants, the IQ types, ...).
SUPPORTED_TENSOR_TYPES = tuple(
    t.name for t in gguf.GGMLQuantizationType
    if t.name in ("F32", "F16") or isinstance(getattr(gguf.quants, t.name, None), type))
SOURCE_FILE = "gguf_source.json"

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    **{f"attn_{g}.{kind}": f"self_attn.{h}_proj.{kind}"
       for g, h in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o")) for kind in ("weight", "bias")},
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    **{f"ffn_{p}.weight": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")},
}
_ROPE_FREQS = "rope_freqs.weight"
_REQUIRED = object()


class GGUFError(CheckpointError):
    """A GGUF file this importer cannot read: architecture, tensor type, tokenizer or metadata."""


# ------------------------------------------------------------------------------ the file


class _File:
    """One opened GGUF file: metadata as Python values and tensors by llama.cpp name."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise GGUFError(f"{path}: no such file; expected a llama.cpp .gguf file")
        try:
            self.reader = gguf.GGUFReader(path)
        except (ValueError, OSError) as e:
            raise GGUFError(f"{path}: not a readable GGUF file ({e})") from e
        self.path = path
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture = self.get("general.architecture")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise GGUFError(
                f"{path}: general.architecture {self.architecture!r} is not supported; supported "
                f"are {', '.join(SUPPORTED_ARCHITECTURES)} (Mistral files are written as llama)")
        bad = {name: t.tensor_type.name for name, t in self.tensors.items()
               if t.tensor_type.name not in SUPPORTED_TENSOR_TYPES}
        if bad:
            name, kind = next(iter(bad.items()))
            raise GGUFError(
                f"{path}: tensor {name!r} is stored as {kind} ({len(bad)} tensors of unsupported "
                f"types {sorted(set(bad.values()))}), which gguf {_gguf_version()} cannot dequantise; "
                f"supported types: {', '.join(SUPPORTED_TENSOR_TYPES)}")

    def get(self, key: str, default=_REQUIRED):
        field = self.reader.fields.get(key)
        if field is None:
            if default is _REQUIRED:
                raise GGUFError(f"{self.path}: metadata key {key!r} is missing")
            return default
        return field.contents()

    def arch(self, key: str, default=_REQUIRED):
        return self.get(f"{self.architecture}.{key}", default)

    def dequantized(self, name: str) -> np.ndarray:
        """float32 [*reversed(ne)] of one tensor."""
        t = self.tensors[name]
        shape = tuple(int(n) for n in reversed(t.shape))
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def _hf_names(file: _File, num_layers: int) -> dict[str, str]:
    """Hugging Face name -> GGUF name for every tensor of the file; an unknown tensor is an error."""
    names = {}
    for name in file.tensors:
        if name == _ROPE_FREQS:
            continue
        if name in _GLOBAL_TENSORS:
            names[_GLOBAL_TENSORS[name]] = name
            continue
        parts = name.split(".", 2)
        if (len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit()
                and int(parts[1]) < num_layers and parts[2] in _LAYER_TENSORS):
            names[f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}"] = name
            continue
        raise GGUFError(
            f"{file.path}: tensor {name!r} has no place in a {file.architecture} model with "
            f"{num_layers} layers; expected token_embd, output_norm, output, rope_freqs and "
            f"blk.N.{{{', '.join(sorted(_LAYER_TENSORS))}}}")
    return names


class _Tensors:
    """Hugging Face-named float32 tensors in Hugging Face layout, dequantised on read: the reader
    `hf.load_tensors` takes."""

    def __init__(self, file: _File, config: ModelConfig):
        self.file = file
        self.names = _hf_names(file, config.num_layers)
        # llama's q/k rows are in llama.cpp's pair order: (heads whose rows to reorder)
        permuted = {"q_proj": config.num_heads, "k_proj": config.num_kv_heads}
        self.heads = ({hf: permuted[hf.split(".")[-2]] for hf in self.names
                       if hf.split(".")[-2] in permuted} if file.architecture == "llama" else {})

    def __contains__(self, name):
        return name in self.names

    def shape(self, name) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(self.file.tensors[self.names[name]].shape))

    def dtype(self, name) -> str:
        return self.file.tensors[self.names[name]].tensor_type.name

    def read(self, name) -> np.ndarray:
        x = self.file.dequantized(self.names[name])
        if name in self.heads:
            x = unpermute_rows(x, self.heads[name])
        return x


def unpermute_rows(x: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row reorder: x [n_heads * D, ...] from pair order to half order."""
    half = x.shape[0] // n_heads // 2
    return x.reshape(n_heads, half, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


# ------------------------------------------------------------------------------ config


def _hf_config(file: _File) -> dict:
    """The Hugging Face config.json dict the file's metadata describes."""
    if "token_embd.weight" not in file.tensors:
        raise GGUFError(f"{file.path}: no token_embd.weight tensor")
    vocab_size, hidden = (int(n) for n in reversed(file.tensors["token_embd.weight"].shape))
    num_heads = int(file.arch("attention.head_count"))
    q_rows = int(file.tensors["blk.0.attn_q.weight"].shape[1]) if "blk.0.attn_q.weight" in file.tensors else 0
    head_dim = int(file.arch("attention.key_length", 0)) or q_rows // num_heads or hidden // num_heads
    rotary = file.arch("rope.dimension_count", None)
    if rotary is not None and int(rotary) != head_dim:
        raise GGUFError(f"{file.path}: {file.architecture}.rope.dimension_count={rotary} rotates "
                        f"part of each head (head dim {head_dim}); only full-width RoPE is supported")
    has_bias = "blk.0.attn_q.bias" in file.tensors
    ids = {key: file.get(f"tokenizer.ggml.{key}_token_id", None) for key in ("bos", "eos", "eot", "eom")}
    # generation stops at any end-of-generation token: eos, then end-of-turn / end-of-message
    eos = list(dict.fromkeys(i for i in (ids["eos"], ids["eot"], ids["eom"]) if i is not None))
    hf = dict(
        model_type=file.architecture,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(file.arch("feed_forward_length")),
        num_hidden_layers=int(file.arch("block_count")),
        num_attention_heads=num_heads,
        num_key_value_heads=int(file.arch("attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rms_norm_eps=float(file.arch("attention.layer_norm_rms_epsilon")),
        rope_theta=float(file.arch("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(file),
        max_position_embeddings=int(file.arch("context_length", 4096)),
        tie_word_embeddings="output.weight" not in file.tensors,
        attention_bias=has_bias,
        hidden_act="silu",
        bos_token_id=ids["bos"],
        eos_token_id=(eos[0] if len(eos) == 1 else eos) if eos else None,
        pad_token_id=file.get("tokenizer.ggml.padding_token_id", None),
    )
    if _ROPE_FREQS in file.tensors:
        if hf["rope_scaling"] is not None:
            raise GGUFError(f"{file.path}: both {file.architecture}.rope.scaling.* and a "
                            f"{_ROPE_FREQS} tensor; expected one way of scaling RoPE")
        hf["rope_scaling"] = _llama3_rope(file, hf)
    return hf


def _rope_scaling(file: _File) -> dict | None:
    kind = file.arch("rope.scaling.type", None)
    # older files give a linear factor as rope.scale_linear
    factor = float(file.arch("rope.scaling.factor", None) or file.arch("rope.scale_linear", None) or 1.0)
    if kind == "none" or (kind in (None, "linear") and factor == 1.0):
        return None
    if kind in (None, "linear"):
        return {"rope_type": "linear", "factor": factor}
    raise GGUFError(f"{file.path}: {file.architecture}.rope.scaling.type={kind!r} is not supported; "
                    "supported: none, linear, and llama3 (a rope_freqs tensor)")


def _llama3_rope(file: _File, hf: dict) -> dict | None:
    """llama3 rope parameters reproducing the file's `rope_freqs` [D/2] exactly.

    llama.cpp stores llama3 scaling only as per-frequency divisors f: 1 for short wavelengths,
    `factor` for long ones, and between them 1/f = (1 - s)/factor + s with
    s = (original_max_position_embeddings / wavelength - low) / (high - low). Only the ratios
    original/low and original/high matter, so low_freq_factor = 1 here; `factor` = max f, and
    original and high come from a least-squares fit of the in-between frequencies (with fewer than
    two of those, high = 4 as in every Llama 3 release, and original from the one in-between or the
    first scaled wavelength). The fit is accepted only if the model's own `rope_inv_freq` then
    equals base / f."""
    divisors = file.dequantized(_ROPE_FREQS).astype(np.float64).reshape(-1)
    plain = ModelConfig.from_hf_dict({**hf, "rope_scaling": None})
    base = rope_inv_freq(plain).astype(np.float64)
    if divisors.shape != base.shape:
        raise GGUFError(f"{file.path}: {_ROPE_FREQS} has {divisors.size} entries, expected "
                        f"head_dim / 2 = {base.size}")
    if np.allclose(divisors, 1.0):
        return None
    factor = float(divisors.max())
    wavelength = 2 * math.pi / base
    s = (1 / divisors - 1 / factor) / (1 - 1 / factor)
    between = (s > 1e-5) & (s < 1 - 1e-5)
    if between.sum() >= 2:
        a = np.stack([1 / wavelength[between], -s[between]], axis=1)
        (original, high_minus_one), *_ = np.linalg.lstsq(a, np.ones(between.sum()), rcond=None)
        high = 1 + float(high_minus_one)
    else:
        high = 4.0
        original = float(wavelength[between][0] * (1 + 3 * s[between][0]) if between.any()
                         else wavelength[s <= 1e-5].min())
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": _snap(high), "original_max_position_embeddings": _snap(original)}
    fitted = rope_inv_freq(ModelConfig.from_hf_dict({**hf, "rope_scaling": rope}))
    if not np.allclose(fitted, base / divisors, rtol=1e-5, atol=0):
        raise GGUFError(f"{file.path}: {_ROPE_FREQS} does not follow llama3 rope scaling (best fit "
                        f"{rope}); other per-frequency scalings are not supported")
    return rope


def _snap(x: float) -> float | int:
    """x as the integer it is within fit precision (8192.0000003 -> 8192), else unchanged."""
    return int(round(x)) if abs(x - round(x)) < 1e-4 * abs(x) else float(x)


# ------------------------------------------------------------------------------ load


def _load(file: _File, *, mesh, dtype, compute_dtype, rules) -> tuple[ModelConfig, Params]:
    config = ModelConfig.from_hf_dict(_hf_config(file))
    return load_tensors(config, _Tensors(file, config), file.path, mesh=mesh, dtype=dtype,
                        compute_dtype=compute_dtype, rules=rules)


def load_gguf(path: str | os.PathLike, *, mesh: Mesh | None = None, dtype=None, compute_dtype=None,
              rules=sharding_lib.RULES) -> tuple[ModelConfig, Params]:
    """Read a llama.cpp `.gguf` file into (config, params), as `load_pretrained` reads a directory.

    Every tensor is dequantised to float32, then cast to `dtype` (default: the embedding's own type
    when that is F32 / F16 / BF16, else float32). With `mesh`, each tensor goes straight to its
    sharded placement under `rules`."""
    return _load(_File(Path(path)), mesh=mesh, dtype=dtype, compute_dtype=compute_dtype, rules=rules)


# ------------------------------------------------------------------------------ tokenizer

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class _PreTokenizer:
    """How llama.cpp pre-splits text for one family of `tokenizer.ggml.pre` names: regexes applied
    in turn (each match and each gap a piece), whether a whole piece found in the vocabulary skips
    the merges, whether BOS is prepended when the file does not say, and the decode-side space
    clean-up."""

    splits: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False
    clean_spaces: bool = True


_PRE_TOKENIZER_FAMILIES = (
    (("default",), _PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]"))),
    (("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "exaone4"), _PreTokenizer((_GPT2_SPLIT,))),
    # digits one at a time, then GPT-2
    (("starcoder", "refact", "codeshell", "exaone", "minerva-7b"),
     _PreTokenizer((r"\p{N}", _GPT2_SPLIT))),
    (("smollm", "command-r"), _PreTokenizer((r"\p{N}", _GPT2_SPLIT), clean_spaces=False)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
     _PreTokenizer((_LLAMA3_SPLIT,), ignore_merges=True, add_bos=True)),
    (("smaug-bpe",), _PreTokenizer((_LLAMA3_SPLIT,))),
    (("qwen2", "deepseek-r1-qwen"), _PreTokenizer((_QWEN2_SPLIT,), clean_spaces=False)),
    (("tekken",), _PreTokenizer((_TEKKEN_SPLIT,), ignore_merges=True, add_bos=True, clean_spaces=False)),
)
_PRE_TOKENIZERS = {name: spec for names, spec in _PRE_TOKENIZER_FAMILIES for name in names}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _tokenizer(file: _File):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = file.get("tokenizer.ggml.model", None)
    if kind != "gpt2":
        raise GGUFError(
            f"{file.path}: tokenizer.ggml.model={kind!r} is not supported; only byte-level BPE "
            "('gpt2': Llama 3, Qwen2/3, SmolLM, Mistral Nemo, ...) is. Sentencepiece vocabularies "
            "('llama': Llama 2, Mistral 7B) need the original tokenizer.json")
    pre = file.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise GGUFError(f"{file.path}: tokenizer.ggml.pre={pre!r} is not supported; supported: "
                        f"{', '.join(sorted(_PRE_TOKENIZERS))}")
    spec = _PRE_TOKENIZERS[pre]
    tokens = file.get("tokenizer.ggml.tokens")
    types = file.get("tokenizer.ggml.token_type", None) or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges", [])]

    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                                   ignore_merges=spec.ignore_merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, types) if k == _USER_DEFINED])

    ids = {key: file.get(f"tokenizer.ggml.{key}_token_id", None)
           for key in ("bos", "eos", "unknown", "padding")}
    named = {key: None if i is None else tokens[i] for key, i in ids.items()}
    add = {"bos": bool(file.get("tokenizer.ggml.add_bos_token", spec.add_bos)),
           "eos": bool(file.get("tokenizer.ggml.add_eos_token", False))}
    for key, on in add.items():
        if on and ids[key] is None:
            raise GGUFError(f"{file.path}: tokenizer.ggml.add_{key}_token is set but there is no "
                            f"tokenizer.ggml.{key}_token_id")
    # "<bos> $A <eos>" with whichever ends the file asks for; a pair repeats them around $B
    ends = {key: [named[key]] if add[key] else [] for key in add}
    single = ends["bos"] + ["$A"] + ends["eos"]
    pair = single + ends["bos"] + ["$B:1"] + ends["eos"]
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(named[k], ids[k]) for k in add if add[k]])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=named["bos"], eos_token=named["eos"],
        unk_token=named["unknown"], pad_token=named["padding"],
        add_bos_token=add["bos"], add_eos_token=add["eos"],
        chat_template=file.get("tokenizer.chat_template", None),
        clean_up_tokenization_spaces=spec.clean_spaces,
        model_max_length=int(file.arch("context_length", 0)) or int(1e30),
    )


def gguf_tokenizer(path: str | os.PathLike):
    """The file's tokenizer as a `transformers.PreTrainedTokenizerFast` (no torch): byte-level BPE
    with llama.cpp's pre-tokenizer for `tokenizer.ggml.pre`, special tokens, BOS/EOS policy and
    chat template. Raises GGUFError for a sentencepiece vocabulary or an unknown pre-tokenizer."""
    return _tokenizer(_File(Path(path)))


# ------------------------------------------------------------------------------ convert


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _source_record(file: _File) -> dict:
    general = {key.removeprefix("general."): file.get(key) for key in file.reader.fields
               if key.startswith("general.")}
    types = collections.Counter(t.tensor_type.name for t in file.tensors.values())
    return {
        "file": file.path.name,
        "size_bytes": file.path.stat().st_size,
        "sha256": _sha256(file.path),
        "general": general,
        "tokenizer": {"model": file.get("tokenizer.ggml.model", None),
                      "pre": file.get("tokenizer.ggml.pre", None)},
        "tensor_types": dict(sorted(types.items())),
    }


def _save_tokenizer(tokenizer, config: ModelConfig, path: Path) -> None:
    """tokenizer.json + tokenizer_config.json + generation_config.json. tokenizer_config.json
    always names the special tokens, the BOS/EOS policy and the chat template (whatever this
    transformers version also puts in side files), and the class every version has."""
    tokenizer.save_pretrained(path)
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config.update({key: getattr(tokenizer, key) for key in
                             ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template")
                             if getattr(tokenizer, key) is not None})
    tokenizer_config.update({key: tokenizer.init_kwargs[key] for key in ("add_bos_token", "add_eos_token")},
                            tokenizer_class="PreTrainedTokenizerFast")
    write_json(path / "tokenizer_config.json", tokenizer_config)
    eos = config.eos_token_id
    generation = {"bos_token_id": config.bos_token_id,
                  "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
                  "pad_token_id": config.pad_token_id}
    write_json(path / "generation_config.json", {k: v for k, v in generation.items() if v is not None})


def convert_gguf(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the GGUF file as a Hugging Face directory `out_dir`: config.json + safetensors
    (`save_pretrained`, float32 unless the file stores F16/BF16 embeddings), the tokenizer,
    generation_config.json and gguf_source.json. Everything is written into a hidden sibling
    directory first and renamed to `out_dir` at the end, so an interrupted conversion leaves no
    directory that looks complete. An existing `out_dir` is replaced only if it is an earlier
    conversion (has gguf_source.json)."""
    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / SOURCE_FILE).is_file():
        raise GGUFError(f"{out_dir} exists and is not an earlier GGUF conversion (no {SOURCE_FILE}); "
                        "give a new or empty directory")
    file = _File(path)
    tokenizer = _tokenizer(file)  # fails before the long part if the tokenizer is unsupported
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        config, params = _load(file, mesh=None, dtype=None, compute_dtype=None, rules=sharding_lib.RULES)
        save_pretrained(config, params, tmp)
        del params
        _save_tokenizer(tokenizer, config, tmp)
        write_json(tmp / SOURCE_FILE, _source_record(file))
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir

