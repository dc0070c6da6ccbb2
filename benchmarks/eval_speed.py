"""Evaluation throughput per path (examples/s, first call with compilation and a warm second call) on
random weights: in-domain constrained scoring and generation on the shipped finance_topic validation
split (demo-teacher shape), and one multiple-choice suite on SmolLM2-135M's shape. Prints one JSON line.

    python benchmarks/eval_speed.py [--suite arc_easy] [--limit 500] [--tokenizer FILE.json]

--tokenizer: a `tokenizer.json` for the multiple-choice path (default: the shipped 4096-token BPE,
which splits general English into more tokens than a 50k-vocabulary tokenizer does).
"""

import argparse
import json

import jax
from transformers import PreTrainedTokenizerFast

from jaxdistill.data import Template, load_source, load_tokenizer
from jaxdistill.evaluate import evaluate_classification, evaluate_suite
from jaxdistill.models import ModelConfig, init_params

DEMO = ModelConfig(model_type="qwen3", vocab_size=4096, hidden_size=128, intermediate_size=384, num_layers=4,
                   num_heads=4, num_kv_heads=2, head_dim=32, qk_norm=True, tie_word_embeddings=True)
SMOLLM2 = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True)


def twice(fn) -> dict:
    cold, warm = fn(), fn()
    return {"n": warm["n"], "cold_examples_per_s": cold["examples_per_s"], "warm_examples_per_s": warm["examples_per_s"],
            "warm_seconds": warm["seconds"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", default="arc_easy")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args()
    bpe = load_tokenizer(None)
    data = load_source("finance_topic", split="validation")
    demo = init_params(DEMO, jax.random.key(0))
    template = Template(instruction="Topic of: {text}", use_chat_template=False)
    out = {"benchmark": "eval_speed", "backend": jax.devices()[0].platform, "jax_version": jax.__version__}
    for method in ("score", "generate"):
        out[f"in_domain_{method}"] = twice(lambda: evaluate_classification(
            DEMO, demo, bpe, data, template=template, method=method, limit=200, max_new_tokens=64))
    mc_tokenizer = bpe if args.tokenizer is None else PreTrainedTokenizerFast(tokenizer_file=args.tokenizer)
    config = SMOLLM2.replace(vocab_size=max(SMOLLM2.vocab_size, len(mc_tokenizer)))
    params = init_params(config, jax.random.key(0))
    out[args.suite] = {"tokenizer": args.tokenizer or "shipped bpe-4096", **twice(
        lambda: evaluate_suite(args.suite, config, params, mc_tokenizer, limit=args.limit))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
