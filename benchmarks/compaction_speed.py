"""Step time of a pruned student trained masked at full width vs compacted to its smaller dense shape.

    python benchmarks/compaction_speed.py                      # SmolLM2-135M shape, batch 4 x 128, 0/30/50%
    python benchmarks/compaction_speed.py --batch 2 --seq 64 --steps 3        # quicker
    python benchmarks/compaction_speed.py --loss forward_kl --ratios 0 0.5

Student: the SmolLM2-135M shape (Llama, 30 layers, d 576, 9 heads / 3 kv heads of 64, MLP 1536,
vocab 49152, tied embeddings), random init, fp32; teacher: the same shape, random, live (its forward
runs inside the step); loss: the blended CE + KL loss (`LossConfig()`) or forward KL. For each ratio
the masks come from `prune_to` (width split, multiple 32) on random importance scores; the masked
student trains at full width under them (the path before compaction), the compacted one is
`train.compaction.compact_state` of the same state. Both steps are compiled and warmed up, then
timed alternately (masked, compacted, masked, ...) in one process; the table gives the median of
`--steps` steps each. Expected ratio: the step's matmul FLOPs (`perf.step_flops`: student x3,
teacher x1) compacted / full width.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.losses import DivergenceLoss, LossConfig
from jaxdistill.models import ModelConfig, init_params
from jaxdistill.perf import step_flops
from jaxdistill.pruning import compression_ratio, full_masks, param_count, prune_to
from jaxdistill.train import (OptimizerConfig, StepConfig, compact_state, init_state, make_train_step, place,
                              reset_pruned_moments)

SMOLLM2_135M = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                           num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True,
                           rms_norm_eps=1e-5, rope_theta=100000.0)


def batch(rows: int, length: int, vocab: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (rows, length)).astype(np.int32)
    labels = np.roll(tokens, -1, 1)
    labels[:, -1] = -1
    return {k: jnp.asarray(v) for k, v in {
        "tokens": tokens, "segment_ids": np.ones_like(tokens), "labels": labels,
        "weights": (labels >= 0).astype(np.float32), "parts": np.where(labels >= 0, 3, 0).astype(np.int8)}.items()}


def random_masks(config: ModelConfig, ratio: float, seed: int):
    if ratio == 0:
        return full_masks(config)
    rng = np.random.default_rng(seed)
    c, G = config, config.num_heads // config.num_kv_heads
    scores = {"heads": rng.random((c.num_layers, c.num_kv_heads, G)),
              "groups": rng.random((c.num_layers, c.num_kv_heads)),
              "mlp": rng.random((c.num_layers, c.intermediate_size)), "hidden": rng.random(c.hidden_size),
              "layers": rng.random(c.num_layers)}
    return prune_to(config, {k: jnp.asarray(v) for k, v in scores.items()}, ratio, split="width", multiple=32)[0]


def timed(step, state, teacher, data):
    t0 = time.perf_counter()
    state, metrics = step(state, teacher, data)
    jax.block_until_ready((state, metrics))
    return state, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    parser.add_argument("--loss", choices=["blended", "forward_kl"], default="blended")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than 30 (a smaller, faster run)")
    args = parser.parse_args()

    student = SMOLLM2_135M if args.layers is None else SMOLLM2_135M.replace(num_layers=args.layers)
    loss = LossConfig() if args.loss == "blended" else DivergenceLoss()
    tokens = args.batch * args.seq
    # the fused loss pads the positions to whole chunks: one chunk of exactly the batch's tokens
    c = StepConfig(student=student, teacher=student, loss=loss, teacher_targets="live", total_steps=1000,
                   optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=0), chunk_size=min(1024, tokens))
    teacher = init_params(student, jax.random.key(0))
    params = jax.tree.map(np.asarray, init_params(student, jax.random.key(1)))
    data = [batch(args.batch, args.seq, student.vocab_size, seed) for seed in range(2)]
    full_flops = sum(step_flops(student, student, tokens, args.seq).values())
    print(f"# {jax.devices()[0].device_kind} ({jax.device_count()} device), student {param_count(student)['total']:,} "
          f"params, teacher live (same shape), loss {args.loss}, batch {args.batch} x {args.seq}, fp32, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    rows = []
    for ratio in args.ratios:
        state = init_state(c, jax.tree.map(jnp.asarray, params), jax.random.key(2),
                           masks=random_masks(student, ratio, seed=3))
        state = reset_pruned_moments(c, state)
        small_c, small = compact_state(c, state)
        small, _ = place(small_c, small)
        variants = {"masked": [make_train_step(c), state, []]}
        if small_c != c:
            variants["compacted"] = [make_train_step(small_c), small, []]
        for i in range(args.warmup):
            for v in variants.values():
                v[1], _ = timed(v[0], v[1], teacher, data[i % 2])
        for i in range(args.steps):
            for v in variants.values():
                v[1], seconds = timed(v[0], v[1], teacher, data[i % 2])
                v[2].append(seconds)
        masked = statistics.median(variants["masked"][2])
        compacted = statistics.median(variants["compacted"][2]) if "compacted" in variants else masked
        flops = sum(step_flops(small_c.student, student, tokens, args.seq).values())
        rows.append((compression_ratio(student, small_c.student)["total"], param_count(small_c.student)["total"],
                     masked, compacted, flops / full_flops, small_c.student))
        del variants, state, small
    print("| removed | student params | masked step (s) | compacted step (s) | compacted / masked | "
          "expected (FLOPs) | compacted shape (L, d, heads/kv, MLP) |")
    print("|---|---|---|---|---|---|---|")
    for removed, n, masked, compacted, expected, s in rows:
        print(f"| {removed:.1%} | {n / 1e6:.1f}M | {masked:.3f} | {compacted:.3f} | {compacted / masked:.2f} | "
              f"{expected:.2f} | {s.num_layers}, {s.hidden_size}, {s.num_heads}/{s.num_kv_heads}, "
              f"{s.intermediate_size} |")


if __name__ == "__main__":
    main()
