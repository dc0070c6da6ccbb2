"""The distillation step part by part, PyTorch + transformers next to jaxdistill, each part jitted (or
run) alone on the `cpu_small` workload, the two alternated round by round in one process:

    teacher forward        logits (in the step, jaxdistill's head matmul runs inside the fused loss)
    student forward        logits
    student backward + KL  student forward + loss + backward, minus the student forward above
    optimizer              AdamW on the student's gradients (jax: the project's `make_optimizer`)
    whole step             `make_train_step` / the reference step of `torch_reference.py`

    python benchmarks/step_parts.py [--rounds 3] [--config jaxdistill/configs/bench/cpu_small.yaml]

Medians over rounds of each part's median time (ms). torch uses all cores (its default threads).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import yaml

from jaxdistill.bench_step import model_config
from jaxdistill.losses import LossConfig
from jaxdistill.models import forward, init_params
from jaxdistill.train import OptimizerConfig, StepConfig, init_state, make_train_step
from jaxdistill.train.optimizer import make_optimizer
from jaxdistill.train.step import _loss, _teacher_inputs

import torch_reference as ref  # benchmarks/ on sys.path when run as a script


def _median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def jax_parts(spec: dict, iters: int) -> dict:
    t_config = model_config(spec["teacher"], dtype=None, remat=None)
    s_config = model_config(spec["student"], dtype=None, remat=spec.get("remat"))
    loss = LossConfig(**spec["loss"])
    opt = OptimizerConfig(**{"warmup_steps": 0, **spec["optimizer"]})
    c = StepConfig(student=s_config, teacher=t_config, loss=loss, optimizer=opt, total_steps=1000,
                   teacher_targets="live", chunk_size=loss.chunk_size, masked=False)
    key = jax.random.key(0)
    teacher, params = init_params(t_config, key), init_params(s_config, jax.random.fold_in(key, 1))
    B, T = spec["batch"], spec["seq"]
    tokens = jax.random.randint(key, (B, T), 0, s_config.vocab_size)
    batch = {"tokens": tokens, "labels": jnp.roll(tokens, -1, 1), "weights": jnp.ones((B, T)),
             "parts": jnp.full((B, T), 3, jnp.int8)}
    state = init_state(c, params, key)
    teacher_fwd = jax.jit(lambda tp, b: forward(t_config, tp, b["tokens"]))  # logits, as torch's row
    student_fwd = jax.jit(lambda p, b: forward(s_config, p, b["tokens"]))
    inputs = jax.block_until_ready(_teacher_inputs(c, teacher, batch))
    grad = jax.jit(jax.value_and_grad(lambda p, s, b, ti: _loss(p, c, s, b, None, ti)[0]))
    tx = make_optimizer(opt, 1000, params)
    grads = jax.block_until_ready(grad(params, state, batch, inputs)[1])
    update = jax.jit(lambda g, o, p: tx.update(g, o, p))
    step = make_train_step(c)
    holder = {"state": state}

    def whole():
        holder["state"], m = step(holder["state"], teacher, batch)
        jax.block_until_ready(m)

    run = lambda f, *a: (lambda: jax.block_until_ready(f(*a)))
    parts = {"teacher forward": _median_ms(run(teacher_fwd, teacher, batch), iters),
             "student forward": _median_ms(run(student_fwd, params, batch), iters),
             "student fwd+bwd+loss": _median_ms(run(grad, params, state, batch, inputs), iters),
             "optimizer": _median_ms(run(update, grads, state.opt_state, params), iters),
             "whole step": _median_ms(whole, iters)}
    return parts


def torch_parts(spec: dict, iters: int) -> dict:
    teacher, student, _, s_config = ref.build_models(spec)
    loss = LossConfig(**spec["loss"])
    b = ref.random_batches(1, batch=spec["batch"], seq=spec["seq"], vocab=s_config.vocab_size, seed=0)[0]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.01, betas=(0.9, 0.95))
    with torch.no_grad():
        t_logits = teacher(input_ids=b["input_ids"]).logits

    def teacher_fwd():
        with torch.no_grad():
            teacher(input_ids=b["input_ids"])

    def student_fwd():
        with torch.no_grad():
            student(input_ids=b["input_ids"])

    def fwd_bwd():
        ref.step_loss(loss, student(input_ids=b["input_ids"]).logits, t_logits, b).backward()

    fwd_bwd()

    def whole():
        with torch.no_grad():
            t = teacher(input_ids=b["input_ids"]).logits
        ref.step_loss(loss, student(input_ids=b["input_ids"]).logits, t, b).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"teacher forward": _median_ms(teacher_fwd, iters), "student forward": _median_ms(student_fwd, iters),
            "student fwd+bwd+loss": _median_ms(fwd_bwd, iters), "optimizer": _median_ms(opt.step, iters),
            "whole step": _median_ms(whole, iters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jaxdistill/configs/bench/cpu_small.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    spec = yaml.safe_load(open(args.config))
    rows: dict[str, dict[str, list]] = {"torch": {}, "jax": {}}
    for _ in range(args.rounds):
        for name, fn in (("torch", torch_parts), ("jax", jax_parts)):
            for part, ms in fn(spec, args.iters).items():
                rows[name].setdefault(part, []).append(ms)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}; "
          f"medians of {args.rounds} rounds x {args.iters} calls\n")
    print("| part (ms, each alone) | PyTorch | jaxdistill |\n|---|---|---|")
    for part in rows["jax"]:
        t, j = statistics.median(rows["torch"][part]), statistics.median(rows["jax"][part])
        print(f"| {part} | {t:.1f} | {j:.1f} |")
    t = {p: statistics.median(v) for p, v in rows["torch"].items()}
    j = {p: statistics.median(v) for p, v in rows["jax"].items()}
    print(f"| student backward + loss (fwd+bwd+loss - fwd) | {t['student fwd+bwd+loss'] - t['student forward']:.1f} | "
          f"{j['student fwd+bwd+loss'] - j['student forward']:.1f} |")


if __name__ == "__main__":
    np.random.seed(0)
    main()
