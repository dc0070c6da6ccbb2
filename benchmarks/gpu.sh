#!/usr/bin/env bash
# The distillation step on one lent H100/H200, in one call of at most 8 minutes:
#   1. nvidia-smi's summary line; checks that the machine's own JAX sees a GPU (exit 1 if not:
#      nothing heavy is installed here) and that jaxdistill imports from this checkout;
#   2. jaxdistill bench jaxdistill/configs/bench/gpu_qwen3_0.6b.yaml --json, then gpu_qwen3_1.7b.yaml,
#      each under `timeout`, in-process so the JAX allocator's peak (memory_stats()) can be read after it;
#   3. the PyTorch reference at the same shapes (benchmarks/torch_reference.py CONFIG --device cuda
#      --dtype bfloat16 --json) where torch with CUDA imports;
#   4. a summary table: MFU (each run's FLOPs per step / median step time / the 989 TFLOP/s dense bf16
#      datasheet peak of the H100 SXM / H200, as jaxdistill.perf), tokens/s, peak GPU memory, step ms.
# Every result is one JSON line in $OUT/gpu_results.jsonl when OUT is set, else in
# benchmarks/results/gpu_results.jsonl (a failed or timed-out run is a line with "error").
#
#   bash benchmarks/gpu.sh            (PYTHON=python3 by default: the interpreter that holds JAX + torch)
#
# jaxdistill's pure-Python dependencies that a GPU image may lack (draccus, gguf, mergedeep, toml) are
# installed from local wheels if a folder of them is there: JAXDISTILL_WHEELS (default .whl).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
RESULTS=${OUT:-$REPO/benchmarks/results}
mkdir -p "$RESULTS"
JSONL=$RESULTS/gpu_results.jsonl
: >"$JSONL"
BUDGET_S=${GPU_BUDGET_S:-465}   # the whole script: 8 minutes less room for the summary
JAX_LIMIT_S=150                 # per JAX run: import, random init (4B teacher), compile, 13 steps
TORCH_LIMIT_S=75                # per PyTorch reference run
CONFIGS=(jaxdistill/configs/bench/gpu_qwen3_0.6b.yaml jaxdistill/configs/bench/gpu_qwen3_1.7b.yaml)

say() { printf '[gpu.sh %3ds] %s\n' "$SECONDS" "$*"; }

# Let JAX's allocator take 92% of the GPU instead of its default 75%: the 4B teacher (bf16 weights), the
# student's AdamW state and the step's activations need the room (peak_bytes_in_use, reported below,
# counts what the step really used, not the reservation).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.92}
# XLA's latency-hiding scheduler (a flag of xla/debug_options_flags.cc): schedules asynchronous work
# (copies, collectives) to overlap compute. Dropped below if this XLA rejects it as unknown.
OUR_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"
USER_XLA_FLAGS=${XLA_FLAGS:-}
export XLA_FLAGS="${USER_XLA_FLAGS:+$USER_XLA_FLAGS }$OUR_XLA_FLAGS"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}   # this checkout's jaxdistill, not installed
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

say "results: $JSONL; python: $(command -v "$PYTHON" || echo "$PYTHON (not found)")"

# 1. The GPU, and JAX on it.
if command -v nvidia-smi >/dev/null 2>&1; then
  say "nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | head -n 1)"
else
  say "nvidia-smi: not found"
fi

JAX_CHECK='import jax; d = jax.devices(); print(jax.__version__, d); raise SystemExit(0 if d[0].platform == "gpu" else 3)'
check_rc=0
check_out=$("$PYTHON" -c "$JAX_CHECK" 2>&1) || check_rc=$?
if [[ $check_rc -ne 0 ]] && grep -q "Unknown flag.*${OUR_XLA_FLAGS%%=*}" <<<"$check_out"; then
  say "this XLA rejects $OUR_XLA_FLAGS; running without it"
  if [[ -n $USER_XLA_FLAGS ]]; then export XLA_FLAGS=$USER_XLA_FLAGS; else unset XLA_FLAGS; fi
  check_rc=0
  check_out=$("$PYTHON" -c "$JAX_CHECK" 2>&1) || check_rc=$?
fi
if [[ $check_rc -ne 0 ]]; then
  if [[ $check_rc -eq 3 ]]; then
    echo "ERROR: JAX on this machine sees no GPU. 'python -c \"import jax; print(jax.devices())\"' said:" >&2
  else
    echo "ERROR: JAX does not start here (rc $check_rc; XLA_FLAGS='${XLA_FLAGS:-}'):" >&2
  fi
  tail -n 5 <<<"$check_out" >&2
  echo "This script needs the machine's own CUDA build of JAX (jax + jax-cuda12/13-plugin); it installs none." >&2
  exit 1
fi
say "jax: $(tail -n 1 <<<"$check_out"); XLA_FLAGS=${XLA_FLAGS:-}"

if ! "$PYTHON" -c 'import jaxdistill.cli' >/dev/null 2>&1; then
  WHEELS=${JAXDISTILL_WHEELS:-$REPO/.whl}
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    say "jaxdistill does not import; installing the local wheels in $WHEELS (no index) into /tmp/jaxdistill-site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/jaxdistill-site "$WHEELS"/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/jaxdistill-site
  fi
  if ! err=$("$PYTHON" -c 'import jaxdistill.cli' 2>&1); then
    echo "ERROR: jaxdistill does not import here: $(tail -n 1 <<<"$err")" >&2
    echo "Bring its small pure-Python dependencies as wheels in $WHEELS (e.g. draccus, gguf, mergedeep, toml)." >&2
    exit 1
  fi
fi

left() { echo $((BUDGET_S - SECONDS)); }
limit_for() {  # the smaller of a run's own limit and what the budget has left
  local cap=$1 rest
  rest=$(left)
  echo $((rest < cap ? rest : cap))
}
run_capped() {  # impl config cap_s min_s command...: the command under the time budget; 1 if skipped or failed
  local impl=$1 config=$2 cap=$3 min=$4 limit rc=0 msg
  shift 4
  limit=$(limit_for "$cap")
  if ((limit < min)); then
    say "skip $impl $config: only ${limit}s of the budget left"
    record_error "$impl" "$config" "skipped: time budget spent"
    return 1
  fi
  say "$impl: $* (timeout ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  if ((rc != 0)); then
    msg=$([[ $rc -eq 124 || $rc -eq 137 ]] && echo "timed out after ${limit}s" || echo "failed (rc $rc)")
    say "$impl $config: $msg"
    record_error "$impl" "$config" "$msg"
    return 1
  fi
}
record_error() {  # impl config message
  "$PYTHON" -c 'import json, sys; print(json.dumps({"impl": sys.argv[1], "config": sys.argv[2], "error": sys.argv[3]}))' \
    "$1" "$2" "$3" >>"$JSONL"
}

# 2. jaxdistill bench CONFIG --json, in-process: the same code path as the CLI (click's main), then
# the allocator's peak (bench_step reports its own peak_bytes_in_use after the timed steps; that value
# is kept). The peak covers the whole process: random init of the teacher and student too.
read -r -d '' JAX_RUNNER <<'PY' || true
import contextlib, io, json, os, sys, time
config, jsonl = sys.argv[1], sys.argv[2]
t0 = time.time()
import jax
from jaxdistill.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    main(["bench", config, "--json"], standalone_mode=False)
result = json.loads(out.getvalue().strip().splitlines()[-1])
stats = jax.devices()[0].memory_stats() or {}
result.setdefault("peak_bytes_in_use", stats.get("peak_bytes_in_use"))
result.update(impl="jax", config=config, gpu_bytes_limit=stats.get("bytes_limit"), wall_s=time.time() - t0,
              xla_flags=os.environ.get("XLA_FLAGS", ""))
line = json.dumps(result)
with open(jsonl, "a") as f:
    f.write(line + "\n")
print(line)
PY

for config in "${CONFIGS[@]}"; do
  run_capped jax "$config" "$JAX_LIMIT_S" 30 "$PYTHON" -c "$JAX_RUNNER" "$config" "$JSONL" || true
done

# 3. The PyTorch reference at the same shapes, where torch with CUDA imports.
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  say "torch: not importable with CUDA here; no PyTorch reference"
elif [[ ! -f benchmarks/torch_reference.py ]]; then
  say "torch: benchmarks/torch_reference.py is missing; no PyTorch reference"
else
  for config in "${CONFIGS[@]}"; do
    log=$(mktemp)
    ok=0
    run_capped torch "$config" "$TORCH_LIMIT_S" 20 "$PYTHON" benchmarks/torch_reference.py "$config" \
      --device cuda --dtype bfloat16 --json >"$log" || ok=$?
    cat "$log"
    if ((ok == 0)) && ! "$PYTHON" -c '
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
result = json.loads(lines[-1])
result.update(impl="torch", config=sys.argv[2])
open(sys.argv[3], "a").write(json.dumps(result) + "\n")' "$log" "$config" "$JSONL"; then
      record_error torch "$config" "its last line is not a JSON object"
    fi
    rm -f "$log"
  done
fi

# 4. The summary.
say "summary ($JSONL)"
"$PYTHON" - "$JSONL" <<'PY'
import json, sys
PEAK = 989e12  # dense bf16, H100 SXM / H200 datasheet (jaxdistill.perf.DATASHEET_PEAK_TFLOPS)

def first(r, *keys):
    for k in keys:
        if r.get(k) is not None:
            return r[k]
    return None

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| impl | config | batch x seq | remat | MFU (989 TFLOP/s) | tokens/s | peak GPU GB | step ms | note |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    name = r.get("config", "").rsplit("/", 1)[-1]
    if "error" in r:
        print(f"| {r.get('impl')} | {name} | | | | | | | {r['error']} |")
        continue
    step_ms = first(r, "step_ms_median", "step_ms", "step_time_ms")
    if step_ms is None and first(r, "step_time_s", "step_s") is not None:
        step_ms = 1e3 * first(r, "step_time_s", "step_s")
    flops = r.get("flops_per_step")
    flops = sum(flops.values()) if isinstance(flops, dict) else flops
    # Both implementations against the same datasheet peak, from their FLOPs and step time (the
    # reports' own "mfu" may use another peak: torch_reference measures a matmul ceiling).
    mfu = flops / (step_ms / 1e3) / PEAK if flops and step_ms else None
    if mfu is None and "datasheet" in str(r.get("peak_source", "")):
        mfu = r.get("mfu")
    tokens = first(r, "tokens_per_s")
    if tokens is None and step_ms and r.get("batch") and r.get("seq"):
        tokens = r["batch"] * r["seq"] / (step_ms / 1e3)
    peak = first(r, "peak_bytes_in_use", "peak_memory_bytes", "peak_bytes", "max_memory_allocated",
                 "cuda_max_memory_allocated")
    fmt = lambda x, f: "n/a" if x is None else format(x, f)
    note = "" if r.get("mfu") is None else f"own MFU {100 * r['mfu']:.1f}% vs {r.get('peak_source', '?')}"
    print(f"| {r.get('impl')} | {name} | {r.get('batch')} x {r.get('seq')} | {r.get('remat', '')} | "
          f"{'n/a' if mfu is None else format(100 * mfu, '.1f') + '%'} | {fmt(tokens, ',.0f')} | "
          f"{fmt(None if peak is None else peak / 1e9, '.1f')} | {fmt(step_ms, '.1f')} | {note} |")
PY
say "done"
