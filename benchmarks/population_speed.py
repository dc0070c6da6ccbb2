"""Student-steps per second of a P-member population step vs P sequential single-student steps.

    python benchmarks/population_speed.py                      # P=4, d 512 x 8 layers, vocab 8192, batch 4 x 128
    python benchmarks/population_speed.py --student half       # students half the teacher's width
    python benchmarks/population_speed.py --steps 5 --population 8

The teacher is a small SmolLM2-like shape (Llama, d 512, 8 layers, 8 heads / 2 kv heads of 64, MLP
1536, vocab 8192, tied embeddings, fp32), random init; the students have its shape (`--student same`:
members of a pruning sweep trained masked) or half its width (`--student half`: d 256, 4 / 2 heads,
MLP 704 — a student smaller than its teacher, the usual distillation setting); the teacher is live, the
loss the blended CE + KL (`LossConfig()`); each student trains masked (its own random 25% of MLP
neurons pruned) with its own learning rate. "Sequential" is what a sweep does today: P lone runs,
one `make_train_step` step each per batch (P teacher forwards); "population" is one
`make_population_step` step (one teacher forward, the P students vmapped). Both are compiled and
warmed up, then timed alternately; medians of `--steps` rounds. The teacher forward (hidden states,
what the population shares) is timed alone, as a share of one single-student step.

Expected gain on a compute-bound device: the population saves P-1 of the P teacher forwards, so
    speed-up = 1 / (1 - share * (P - 1) / P),      share = teacher forward / single step
(~1.2-1.3 for a same-size teacher: the student's forward + backward is ~3x its forward). The
teacher's head (h_T W_T) stays inside each member's fused loss (chunked, so no [N, V] logits are
stored), so it is not shared. On an accelerator the gain is larger than this CPU run shows: besides
the shared teacher forward, small students are batched into P-times larger matmuls (one launch
instead of P, better MXU/tensor-core utilisation and fewer per-step dispatches and host syncs),
which matters most exactly where a lone small student leaves the chip underused; with a mesh axis
"population" the members are also spread over devices with no communication but the batch.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.losses import LossConfig
from jaxdistill.models import ModelConfig, hidden_states, init_params
from jaxdistill.perf import step_flops
from jaxdistill.pruning import full_masks, param_count
from jaxdistill.train import OptimizerConfig, StepConfig, init_state, make_train_step
from jaxdistill.train.population import init_population, make_population_step

from compaction_speed import batch  # random next-token batches (this directory is on sys.path as a script)

SHAPE = ModelConfig(model_type="llama", vocab_size=8192, hidden_size=512, intermediate_size=1536, num_layers=8,
                    num_heads=8, num_kv_heads=2, head_dim=64, tie_word_embeddings=True, rms_norm_eps=1e-5,
                    rope_theta=100000.0)
STUDENTS = {"same": SHAPE, "half": SHAPE.replace(hidden_size=256, intermediate_size=704, num_heads=4, num_kv_heads=2)}


def member_masks(config: ModelConfig, seed: int):
    """Full masks but a random 25% of each layer's MLP neurons pruned (one draw per member)."""
    full = full_masks(config)
    keep = np.random.default_rng(seed).random(full["mlp"].shape) >= 0.25
    return {**full, "mlp": jnp.asarray(keep, jnp.float32)}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", type=int, default=4, help="P students")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--student", choices=sorted(STUDENTS), default="same", help="the students' shape")
    args = parser.parse_args()
    P, tokens, student = args.population, args.batch * args.seq, STUDENTS[args.student]

    c = StepConfig(student=student, teacher=SHAPE, loss=LossConfig(), teacher_targets="live", total_steps=1000,
                   optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=0), chunk_size=min(1024, tokens))
    learning_rates = [1e-4 * 2 ** k for k in range(P)]
    teacher = init_params(SHAPE, jax.random.key(0))
    params = [init_params(student, jax.random.key(1 + k)) for k in range(P)]
    masks = [member_masks(student, k) for k in range(P)]
    data = [batch(args.batch, args.seq, SHAPE.vocab_size, seed) for seed in range(2)]

    single = make_train_step(c)  # one program for the P lone runs (a learning rate changes no FLOPs)
    lone = [init_state(c, jax.tree.map(jnp.copy, p), jax.random.key(k), masks=m)
            for k, (p, m) in enumerate(zip(params, masks))]
    pop_step = make_population_step(c, P, learning_rates=learning_rates)
    pop = init_population(c, params, [jax.random.key(k) for k in range(P)], masks)
    forward = jax.jit(lambda t, b: hidden_states(SHAPE, t, b["tokens"], segment_ids=b["segment_ids"]))

    def sequential(states, b):
        return [single(s, teacher, b)[0] for s in states]

    times = {"sequential": [], "population": [], "teacher": []}
    for i in range(args.warmup + args.steps):
        b = data[i % 2]
        lone, t_seq = timed(sequential, lone, b)
        (pop, _), t_pop = timed(pop_step, pop, teacher, b)
        _, t_teacher = timed(forward, teacher, b)
        if i >= args.warmup:
            times["sequential"].append(t_seq)
            times["population"].append(t_pop)
            times["teacher"].append(t_teacher)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    share = med["teacher"] / (med["sequential"] / P)
    flops = step_flops(student, SHAPE, tokens, args.seq)
    result = {
        "population": P, "batch": [args.batch, args.seq], "student": args.student,
        "params": param_count(SHAPE)["total"], "student_params": param_count(student)["total"],
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        "sequential_student_steps_per_s": P / med["sequential"],
        "population_student_steps_per_s": P / med["population"],
        "speedup": med["sequential"] / med["population"],
        "single_step_s": med["sequential"] / P, "population_step_s": med["population"],
        "teacher_forward_s": med["teacher"], "teacher_share": share,
        "teacher_share_flops": flops["teacher"] / (flops["teacher"] + flops["student"]),
        "expected_speedup": 1 / (1 - share * (P - 1) / P), "compilations": pop_step.compilations,
    }
    print(f"# {result['device']}, teacher {param_count(SHAPE)['total'] / 1e6:.1f}M params, students ({args.student}) "
          f"{param_count(student)['total'] / 1e6:.1f}M, "
          f"P={P}, batch {args.batch} x {args.seq}, fp32, median of {args.steps} rounds after {args.warmup} warm-up")
    print(f"sequential ({P} lone steps): {result['sequential_student_steps_per_s']:.3f} student-steps/s "
          f"({result['single_step_s']:.2f} s per step)")
    print(f"population (one step):      {result['population_student_steps_per_s']:.3f} student-steps/s "
          f"({result['population_step_s']:.2f} s per step)")
    print(f"speed-up {result['speedup']:.2f}x; teacher forward {med['teacher']:.2f} s = {share:.1%} of a single step "
          f"({result['teacher_share_flops']:.1%} of its FLOPs) -> expected 1 / (1 - share (P-1)/P) = "
          f"{result['expected_speedup']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
