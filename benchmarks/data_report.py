"""Data pipeline figures on this machine; prints one JSON line.

- packing efficiency (real tokens / all slots) on the shipped finance_topic training set, label
  format, shipped BPE: packed rows vs one example per padded row vs padded rows in length buckets;
- KV-cache sampler throughput (new tokens/s) and teacher-cache build throughput (tokens/s) for a
  small random Qwen3-style model.

    python benchmarks/data_report.py
"""

import json
import tempfile
import time

import jax

from jaxdistill.data import BatchIterator, Template, build_teacher_cache, encode_dataset, load_source, load_tokenizer
from jaxdistill.data.teacher_cache import TargetSettings
from jaxdistill.models import ModelConfig, init_params
from jaxdistill.sample import SamplingSettings, generate

MODEL = ModelConfig(model_type="qwen3", vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4,
                    num_heads=8, num_kv_heads=2, head_dim=32, qk_norm=True, tie_word_embeddings=True)


def main():
    tokenizer = load_tokenizer()
    data = load_source("finance_topic", split="train")
    examples, counts = encode_dataset(data, tokenizer, format="label", max_len=256, template=Template())
    lengths = [len(e) for e in examples]
    efficiency = {}
    for name, kw in {"packed_1024": dict(mode="pack", seq_len=1024),
                     "padded_256": dict(mode="pad", seq_len=256),
                     "bucketed_256": dict(mode="pad", seq_len=256, buckets=(128, 160, 192, 224, 256))}.items():
        it = BatchIterator(examples, batch_size=32, **kw)
        batches = [next(it) for _ in range(it.batches_per_epoch())]
        real = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
        efficiency[name] = real / sum(b["segment_ids"].size for b in batches)

    params = init_params(MODEL, jax.random.key(0))
    prompts = [e.tokens[:64].tolist() for e in examples[:8]]
    settings = SamplingSettings(max_new_tokens=64, temperature=1.0, top_p=0.95, seed=0)
    generate(MODEL, params, prompts, settings)  # compile
    t0 = time.perf_counter()
    generate(MODEL, params, prompts, settings)
    sampler_s = time.perf_counter() - t0

    cache_examples = examples[:512]
    with tempfile.TemporaryDirectory() as root:
        build_teacher_cache(MODEL, params, cache_examples[:16], root, format="label", tokenizer_id="bpe-4096",
                            settings=TargetSettings(k=16), seq_len=1024, batch_rows=8)  # compile
        t0 = time.perf_counter()
        cache = build_teacher_cache(MODEL, params, cache_examples, root, format="label", tokenizer_id="bpe-4096",
                                    settings=TargetSettings(k=16), seq_len=1024, batch_rows=8)
        cache_s = time.perf_counter() - t0
    print(json.dumps({
        "examples": len(examples), "encode_counts": counts,
        "mean_length": sum(lengths) / len(lengths), "max_length": max(lengths),
        "packing_efficiency": efficiency,
        "sampler": {"batch": 8, "prompt": 64, "new_tokens": 64, "seconds": sampler_s,
                    "new_tokens_per_s": 8 * 64 / sampler_s},
        "teacher_cache": {"examples": len(cache_examples), "tokens": sum(len(e) for e in cache_examples),
                          "positions": cache.meta["positions"], "seconds": cache_s,
                          "tokens_per_s": sum(len(e) for e in cache_examples) / cache_s},
        "model": "qwen3-style d=256 L=4 V=4096, random weights", "backend": jax.devices()[0].platform,
    }))


if __name__ == "__main__":
    main()
