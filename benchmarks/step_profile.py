"""Where the distillation step's time goes, from a profiler trace of the compiled step (CPU):

    python benchmarks/step_profile.py [--config jaxdistill/configs/bench/cpu_small.yaml] [--steps 3]
                                      [--top 25] [key=value ...]   (overrides as for `jaxdistill bench`)

Builds the config's step the way `jaxdistill bench` does, runs it under `jax.profiler.trace`, and reads
the trace back (`jax.profiler.ProfileData`). Every XLA op of one step is charged its wall time, split
evenly between the ops that run at the same moment (XLA:CPU runs independent ops concurrently), and
sorted into a part of the step by the op's name scope in the compiled HLO (teacher forward, student
forward, student backward, fused loss, optimizer and the rest) and a kind (matmul, batched matmul,
Eigen matmul, elementwise, reduction, copy/transpose, zero-fill, scan slicing). Eigen matmuls run
asynchronously: their time shows up under whatever runs next to them. Prints a part x kind table, the
time no op ran, and the `--top` ops.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import yaml

from jaxdistill.bench_step import _batches, model_config
from jaxdistill.config import merge, parse_override
from jaxdistill.losses import LossConfig
from jaxdistill.models import init_params
from jaxdistill.train.optimizer import OptimizerConfig
from jaxdistill.train.step import StepConfig, init_state, make_train_step


def _part(op_name: str) -> str:
    if "transpose(jvp(jit(hidden_states)))" in op_name:
        return "student backward"
    if "jvp(jit(hidden_states))" in op_name:
        return "student forward"
    if "jit(hidden_states)" in op_name:
        return "teacher forward"
    if "jvp()" in op_name:
        return "fused loss"
    return "optimizer + rest"


def _kind(name: str, line: str, computations: dict[str, str]) -> str:
    called = re.search(r"calls=%([\w.-]+)", line)
    body = computations.get(called.group(1), "") if called else line
    if name.startswith("ynn_fusion"):
        if " dot(" in body:
            return "batched matmul" if "lhs_batch_dims" in body else "matmul"
        return "reduction (ynn)"
    if name.startswith("dot"):
        return "matmul (Eigen, async)"
    if name.startswith("wrapped_broadcast"):
        return "zero-fill"
    if "dynamic-slice" in name or "dynamic-update-slice" in name:
        return "scan slicing"
    if "copy" in name or "transpose" in name:
        return "copy/transpose"
    if name.startswith("while"):
        return "loop"
    return "elementwise"


def _hlo_index(text: str):
    """{op name: (op_name metadata, its line)}, {computation name: its body}."""
    ops, computations, current, body = {}, {}, None, []
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current, body = line.split()[0].lstrip("%"), []
        elif line.startswith("}") and current:
            computations[current] = "\n".join(body)
            current = None
        m = re.match(r"\s+(?:ROOT )?%(\S+) = (.*)", line)
        if m:
            scope = re.search(r'op_name="([^"]*)"', m.group(2))
            ops[m.group(1)] = (scope.group(1) if scope else "", m.group(2))
            body.append(line)
    return ops, computations


def _one_step_events(trace_dir: str):
    """[(start, end, op name)] of the XLA ops of the last traced step (between the last two
    block_until_ready returns), outermost events per thread only."""
    data = jax.profiler.ProfileData.from_file(sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1])
    waits, events = [], []
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if line.name == "python" and "block_until_ready" in ev.name:
                    waits.append(ev.start_ns + ev.duration_ns)
                elif line.name.startswith("tf_XLAEigen") and not ev.name.startswith(
                        ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ")):
                    events.append((ev.start_ns, ev.start_ns + ev.duration_ns, ev.name, line.name))
    start, end = sorted(waits)[-2:]
    out, last_end = [], {}
    for s, e, name, thread in sorted(x for x in events if start <= x[0] and x[1] <= end + 1e6):
        if s >= last_end.get(thread, 0):
            out.append((s, e, name))
            last_end[thread] = e
    return out, (end - start) / 1e6


def charge(events) -> tuple[dict[str, float], float]:
    """Wall ms per op, split evenly between concurrent ops; and the ms no op ran."""
    points = sorted([(s, 1, i) for i, (s, _, _) in enumerate(events)] + [(e, -1, i) for i, (_, e, _) in enumerate(events)])
    active, previous, per_op, idle = set(), None, collections.defaultdict(float), 0.0
    for t, delta, i in points:
        if previous is not None:
            if active:
                for j in active:
                    per_op[events[j][2]] += (t - previous) / len(active) / 1e6
            else:
                idle += (t - previous) / 1e6
        previous = t
        (active.add if delta == 1 else active.discard)(i)
    return per_op, idle


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jaxdistill/configs/bench/cpu_small.yaml")
    parser.add_argument("--steps", type=int, default=3, help="timed steps before the traced ones")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    spec = yaml.safe_load(Path(args.config).read_text())
    for item in args.overrides:
        spec = merge(spec, parse_override(item))
    t_config = model_config(spec["teacher"], dtype=spec.get("dtype"), remat=None, attention=spec.get("attention"))
    s_config = model_config(spec["student"], dtype=spec.get("dtype"), remat=spec.get("remat"),
                            attention=spec.get("attention"))
    loss = LossConfig(**spec["loss"])
    opt = OptimizerConfig(**{"warmup_steps": 0, **spec["optimizer"]})
    c = StepConfig(student=s_config, loss=loss, optimizer=opt, total_steps=1000, teacher=t_config,
                   teacher_targets="live", chunk_size=loss.chunk_size, masked=False)
    key = jax.random.key(0)
    teacher = init_params(t_config, jax.random.fold_in(key, 1))
    state = init_state(c, init_params(s_config, jax.random.fold_in(key, 2)), key)
    batches = [jax.device_put(b) for b in _batches("random", 4, batch=spec["batch"], seq=spec["seq"],
                                                   vocab=s_config.vocab_size, format="blended", max_len=spec["seq"], seed=0)]
    compiled = make_train_step(c)._jitted.lower(state, teacher, batches[0]).compile()
    ops, computations = _hlo_index(compiled.as_text())
    times = []
    for i in range(2 + args.steps):
        t0 = time.perf_counter()
        state, _ = compiled(state, teacher, batches[i % 4])
        jax.block_until_ready(state)
        times.append(1e3 * (time.perf_counter() - t0))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for i in range(2):
            state, _ = compiled(state, teacher, batches[i % 4])
            jax.block_until_ready(state)
        jax.profiler.stop_trace()
        events, traced_ms = _one_step_events(trace_dir)
    per_op, idle = charge(events)
    table = collections.defaultdict(float)
    for name, ms in per_op.items():
        scope, line = ops.get(name, ("", ""))
        table[(_part(scope), _kind(name, line, computations))] += ms
    print(f"step: median {statistics.median(times[2:]):.1f} ms untraced; the traced step {traced_ms:.1f} ms, "
          f"of it no op running {idle:.1f} ms", file=sys.stdout)
    parts = collections.defaultdict(float)
    for (part, _), ms in table.items():
        parts[part] += ms
    print("\n| part | ms | by kind (ms) |\n|---|---|---|")
    for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        kinds = sorted(((k, v) for (p, k), v in table.items() if p == part), key=lambda kv: -kv[1])
        print(f"| {part} | {ms:.1f} | " + ", ".join(f"{k} {v:.1f}" for k, v in kinds if v >= 0.5) + " |")
    print(f"\ntop {args.top} ops (ms, charged):")
    for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        scope, line = ops.get(name, ("", ""))
        print(f"  {ms:7.2f}  {_part(scope):17s} {_kind(name, line, computations):22s} {name:28s} {line.split(' ')[0][:28]}")


if __name__ == "__main__":
    main()
