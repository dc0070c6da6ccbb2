"""Peak memory of the distillation step at real shapes, compile only (nothing is run or allocated):
a Qwen3-0.6B-shaped student distilled from a live Qwen3-4B-shaped teacher (random-weight shapes,
`jaxdistill.bench_step.bench_step(memory_only=True)`), sequence 2048, batch 8 (and 1 for
reference), fp32 parameters with bf16 compute (`dtype: bfloat16`), AdamW, forward KL at
temperature 2 on every position; the fused (chunked) LM head + loss at chunk_size 1024 against the
unfused one (chunk_size = batch x seq: one chunk, the full [N, V] logits, through the same
fused-loss code; not `losses.fused_reference`'s plain autodiff), for each student remat
policy (none | full | dots | dots_no_batch; the teacher runs without gradients, so remat is moot there).

Per row: XLA's memory analysis of the compiled step
    temp_bytes      temporaries (activations kept for the backward pass, logits, attention scores, ...)
    argument_bytes  student params + AdamW moments + teacher params + the batch
    output_bytes    the new state (+ metrics); it aliases the donated input state, so it is not added
    total           argument + temp: the step's peak; `fits_80GB` compares it with 80e9 bytes

CAVEAT: this machine has no accelerator, so these are XLA:CPU's memory-analysis numbers. XLA:GPU
fuses, schedules and assigns buffers differently, so read them as an estimate of what must be live,
not the GPU peak; `benchmarks/gpu.sh` measures the real peak on a GPU
(`memory_stats()['peak_bytes_in_use']`). This estimate compiles the default attention (`attention_impl`
None: causal query blocks, `models/attention.py`): 9/16 of the [B, H, T, T] scores per layer at
T = 2048, which is what makes remat `none` and `dots` so large here (gpu.sh's configs ask for cuDNN's).

Each row compiles in its own subprocess under a time limit (`--row-limit-s`); rows over it, or past
the whole run's `--budget-s`, are listed as skipped with the reason.

    python benchmarks/step_memory.py [--batch 8,1] [--seq 2048] [--policies none,full,dots]
        [--students qwen3-0.6b] [--teacher qwen3-4b] [--chunk-size 1024] [--no-unfused]
        [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT = 80e9  # bytes: an 80 GB H100 (an H200 has 141 GB)
NOTE = ("XLA:CPU compile-only memory analysis (no accelerator here); GPU buffer assignment differs — "
        "benchmarks/gpu.sh measures the real peak")


def row_spec(*, teacher: str, student: str, batch: int, seq: int, remat: str, chunk_size: int | None) -> dict:
    """bench_step keyword arguments for one row; chunk_size None = unfused (one chunk of batch*seq)."""
    chunk = batch * seq if chunk_size is None else chunk_size
    return {"teacher": teacher, "student": student, "batch": batch, "seq": seq, "dtype": "bfloat16",
            "remat": remat, "memory_only": True,
            "loss": {"kind": "divergence", "divergence": "forward_kl", "temperature": 2.0, "chunk_size": chunk}}


def measure(spec: dict) -> dict:
    """Compile one row in this process (the subprocess side) and return its summary."""
    from jaxdistill.bench_step import bench_step

    t0 = time.perf_counter()
    r = bench_step(**spec)
    compile_s = time.perf_counter() - t0
    total = r["argument_bytes"] + r["temp_bytes"]
    return {"student": spec["student"], "teacher": spec["teacher"], "batch": r["batch"], "seq": r["seq"],
            "remat": r["remat"], "chunk_size": r["chunk_size"],
            "loss_head": "unfused" if r["chunk_size"] >= r["batch"] * r["seq"] else "fused",
            "compute_dtype": r["compute_dtype"], "temp_bytes": r["temp_bytes"],
            "argument_bytes": r["argument_bytes"], "output_bytes": r["output_bytes"], "total_bytes": total,
            "fits_80GB": total <= LIMIT, "compile_s": round(compile_s, 1), "backend": r["backend"],
            "jax_version": r["jax_version"]}


def run_row(spec: dict, limit_s: float) -> dict:
    """measure(spec) in a subprocess killed after limit_s; {"skipped": reason} when it did not finish."""
    cmd = [sys.executable, os.path.abspath(__file__), "--row", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"skipped": f"compile did not finish within {limit_s:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"failed (rc {done.returncode}): {tail[0][:300]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def source_digest() -> str:
    """sha256 (12 hex) of jaxdistill's Python sources: the rows measure the tree as it was, and a
    digest that changed during the run says the code changed under it."""
    root = Path(__file__).resolve().parent.parent / "jaxdistill"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def gb(x: float) -> str:
    return f"{x / 1e9:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| student | batch | remat | loss head (chunk) | temp GB | argument GB | output GB | "
             "total GB | fits 80 GB | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"{r['loss_head']} ({r['chunk_size']})"
        if "skipped" in r:
            lines.append(f"| {r['student']} | {r['batch']} | {r['remat']} | {head} | — | — | — | — | "
                         f"skipped: {r['skipped']} | |")
            continue
        lines.append(f"| {r['student']} | {r['batch']} | {r['remat']} | {head} | {gb(r['temp_bytes'])} | "
                     f"{gb(r['argument_bytes'])} | {gb(r['output_bytes'])} | {gb(r['total_bytes'])} | "
                     f"{'yes' if r['fits_80GB'] else 'no'} | {r['compile_s']} |")
    return "\n".join(lines)


def write_json_atomic(path: str, obj) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="8,1", help="comma-separated batch sizes (default 8,1)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--policies", default="none,full,dots,dots_no_batch",
                        help="comma-separated student remat policies")
    parser.add_argument("--students", default="qwen3-0.6b", help="comma-separated student presets")
    parser.add_argument("--teacher", default="qwen3-4b")
    parser.add_argument("--chunk-size", type=int, default=1024, help="the fused loss's chunk size")
    parser.add_argument("--no-unfused", action="store_true", help="skip the unfused (one chunk) rows")
    parser.add_argument("--quick", action="store_true", help="one row: first student, batch, policy; fused")
    parser.add_argument("--row-limit-s", type=float, default=240.0, help="skip a row whose compile takes longer")
    parser.add_argument("--budget-s", type=float, default=900.0, help="skip the rows left after this long")
    parser.add_argument("--json", metavar="OUT", help="write the rows and settings here (atomically)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row, print JSON
    args = parser.parse_args(argv)
    if args.row:
        print(json.dumps(measure(json.loads(args.row))))
        return

    batches = [int(b) for b in args.batch.split(",") if b]
    policies = [p for p in args.policies.split(",") if p]
    students = [s for s in args.students.split(",") if s]
    heads = [args.chunk_size] + ([] if args.no_unfused else [None])
    plan = [(s, b, p, h) for s in students for b in batches for p in policies for h in heads]
    if args.quick:
        plan = plan[:1]
    rows, start, digest = [], time.perf_counter(), source_digest()
    for student, batch, policy, chunk in plan:
        spec = row_spec(teacher=args.teacher, student=student, batch=batch, seq=args.seq, remat=policy,
                        chunk_size=chunk)
        left = args.budget_s - (time.perf_counter() - start)
        key = {"student": student, "teacher": args.teacher, "batch": batch, "seq": args.seq, "remat": policy,
               "chunk_size": spec["loss"]["chunk_size"], "loss_head": "fused" if chunk else "unfused"}
        if left < 10:
            row = {**key, "skipped": f"run budget of {args.budget_s:.0f} s spent"}
        else:
            row = {**key, **run_row(spec, min(args.row_limit_s, left))}
        rows.append(row)
        status = row.get("skipped") or f"total {gb(row['total_bytes'])} GB, compile {row['compile_s']} s"
        print(f"[{time.perf_counter() - start:6.0f} s] {student} b={batch} remat={policy} "
              f"{key['loss_head']}: {status}", file=sys.stderr, flush=True)
    print(table(rows))
    digest_end = source_digest()
    if digest_end != digest:
        print(f"WARNING: jaxdistill's sources changed during the run ({digest} -> {digest_end}): the rows "
              "may measure different code", file=sys.stderr)
    if args.json:
        write_json_atomic(args.json, {
            "benchmark": "step_memory", "note": NOTE, "limit_bytes": LIMIT, "seq": args.seq,
            "teacher": args.teacher, "loss": "forward_kl, temperature 2.0", "dtype": "fp32 params, bf16 compute",
            "fused_chunk_size": args.chunk_size, "total": "argument_bytes + temp_bytes",
            "wall_s": round(time.perf_counter() - start, 1), "argv": sys.argv[1:] if argv is None else argv,
            "source_digest": digest, "source_digest_end": digest_end, "rows": rows})


if __name__ == "__main__":
    main()
