"""Tokenizers: any local Hugging Face tokenizer directory (offline), or a small byte-level BPE
trained deterministically on the shipped text (the CPU default; shipped in data/).

    python -c "from jaxdistill.data.tokenizer import build_shipped_bpe; build_shipped_bpe()"
"""

from __future__ import annotations

from pathlib import Path

from jaxdistill.data.sources import DataError, data_dir, load_source

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<think>", "</think>"]
SHIPPED_BPE = "finance_topic/bpe-4096.json"


def train_bpe(texts, vocab_size: int, path) -> None:
    """Train a byte-level BPE on `texts` (single-threaded, hence deterministic) and save it."""
    import os

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.environ["RAYON_NUM_THREADS"] = "1"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.save(str(path))


def load_tokenizer(name_or_path: str | None = None):
    """A transformers tokenizer: a local HF directory, a tokenizer.json file, or (None) the shipped BPE."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(name_or_path) if name_or_path else data_dir() / SHIPPED_BPE
    if not (path.is_dir() or (path.suffix == ".json" and path.is_file())):
        raise DataError(f"tokenizer {str(path)!r}: expected a local tokenizer directory or a tokenizer.json file "
                        "(the hub is not used)")
    try:
        if path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="<pad>", bos_token="<bos>",
                                                eos_token="<eos>")
    except Exception as err:  # noqa: BLE001 — transformers / tokenizers raise many types for bad files
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DataError(f"tokenizer {str(path)!r} cannot be loaded ({type(err).__name__}: {reason})") from err
    if len(tokenizer) == 0 or not tokenizer("a headline", add_special_tokens=False)["input_ids"]:
        raise DataError(f"tokenizer {str(path)!r} loads as an empty tokenizer (it encodes text to nothing): the "
                        "directory holds no tokenizer files (tokenizer.json, or tokenizer_config.json with its "
                        "vocabulary); point data.tokenizer at the model's tokenizer")
    return tokenizer


def build_shipped_bpe() -> Path:
    """Rebuild the shipped BPE (4096 tokens) from the shipped finance_topic training texts."""
    path = data_dir() / SHIPPED_BPE
    train_bpe(load_source("finance_topic", split="train").texts, 4096, path)
    return path
