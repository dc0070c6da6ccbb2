"""The JAX distillation step (`jaxdistill bench CONFIG --json`) against the PyTorch + transformers step
(`python benchmarks/torch_reference.py CONFIG --json`) on the same workloads, on this machine.

    python benchmarks/compare.py [--rounds 3] [--steps N] [--warmup N] [--configs A.yaml B.yaml]
                                 [--json OUT.json] [--no-cache-check] [--malloc huge-pages|default]

For each config (default `jaxdistill/configs/bench/cpu_small.yaml` and `cpu_task.yaml`), `--rounds`
rounds; each round runs both implementations, each in a fresh subprocess, one after the other (the
order alternates between rounds so neither always runs first on a warming or loading machine).
`--steps`/`--warmup` are passed through as `steps=`/`warmup=`. Per config it reports the median over
rounds of: each side's step_ms_median, the speed ratio (torch step ms / jax step ms; > 1: JAX faster),
the useful-tokens/s ratio (jax / torch; > 1: JAX delivers more supervised tokens per second, which also
counts packing against padding on the finance workload), each side's MFU against its own measured
matmul ceiling (JAX: jax.lax.dot_general, torch: torch.matmul, both at the step's own shapes), and JAX's
compile_s. The compile-cache check runs `jaxdistill bench` on cpu_small (steps=1 warmup=0) twice more with one new,
empty `compilation_cache=DIR` (cold, then warm) and reports each first_step_s (compile + first step),
each process_to_first_step_s (from the process's start: imports, the models' init, compile, first
step; run through `python -m jaxdistill.cli`, so the `jaxdistill` command's one re-execution, an
interpreter start, is not in it) and cold / warm of both. Both sides run in one environment: by default
with glibc's huge pages for malloc (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, which the `jaxdistill`
command sets for itself; PyTorch gains from it too), `--malloc default` without. The summary is printed
as a markdown table for benchmarks/RESULTS.md; `--json OUT` writes all raw results and the summary
(atomically: a temporary file, then os.replace).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jaxdistill.launch import TUNABLES  # noqa: E402  (no heavy imports)
CONFIGS = ["jaxdistill/configs/bench/cpu_small.yaml", "jaxdistill/configs/bench/cpu_task.yaml"]
JAX = [sys.executable, "-m", "jaxdistill.cli", "bench"]  # = `jaxdistill bench`, in this interpreter's env
TORCH = [sys.executable, str(ROOT / "benchmarks" / "torch_reference.py")]


def run_json(command: list[str], *, timeout: float = 3600, env: dict | None = None) -> dict:
    """Run one benchmark subprocess; its last stdout line that parses as a JSON object, plus wall_s.
    A failure is returned as {"error": ...} with the tail of stderr (the comparison goes on)."""
    print("$", " ".join(command), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "command": command}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and proc.returncode == 0:
            return {**result, "wall_s": wall}
    return {"error": f"exit {proc.returncode}, no JSON result", "stderr_tail": proc.stderr[-2000:],
            "command": command, "wall_s": wall}


def _median(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(raw: dict[str, dict[str, list[dict]]]) -> dict[str, dict]:
    """Per config: medians over rounds and the ratios (see the module doc)."""
    out = {}
    for config, sides in raw.items():
        jax_ok = [r for r in sides["jax"] if "error" not in r]
        torch_ok = [r for r in sides["torch"] if "error" not in r]
        s = {"rounds_ok": {"jax": len(jax_ok), "torch": len(torch_ok)},
             "jax_step_ms": _median(jax_ok, "step_ms_median"), "torch_step_ms": _median(torch_ok, "step_ms_median"),
             "jax_useful_tokens_per_s": _median(jax_ok, "useful_tokens_per_s"),
             "torch_useful_tokens_per_s": _median(torch_ok, "useful_tokens_per_s"),
             "jax_mfu": _median(jax_ok, "mfu"), "torch_mfu": _median(torch_ok, "mfu"),
             "jax_compile_s": _median(jax_ok, "compile_s"),
             "jax_useful_tokens_per_step": _median(jax_ok, "useful_tokens_per_step"),
             "torch_useful_tokens_per_step": _median(torch_ok, "useful_tokens_per_step")}
        s["speed_ratio_torch_over_jax"] = _ratio(s["torch_step_ms"], s["jax_step_ms"])
        s["useful_tps_ratio_jax_over_torch"] = _ratio(s["jax_useful_tokens_per_s"], s["torch_useful_tokens_per_s"])
        out[config] = s
    return out


def cache_check(config: str, passthrough: list[str], env: dict | None = None) -> dict:
    """Two `jaxdistill bench` runs sharing one new compilation cache directory: cold, then warm."""
    directory = tempfile.mkdtemp(prefix="jaxdistill-compile-cache-")
    try:
        runs = [run_json([*JAX, config, "--json", *passthrough, f"compilation_cache={directory}"], env=env)
                for _ in ("cold", "warm")]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    cold, warm = (r.get("first_step_s") for r in runs)
    cold_p, warm_p = (r.get("process_to_first_step_s") for r in runs)
    return {"config": config, "cold": runs[0], "warm": runs[1], "cold_first_step_s": cold,
            "warm_first_step_s": warm, "cold_compile_s": runs[0].get("compile_s"),
            "warm_compile_s": runs[1].get("compile_s"), "ratio_cold_over_warm": _ratio(cold, warm),
            "cold_process_to_first_step_s": cold_p, "warm_process_to_first_step_s": warm_p,
            "ratio_process_cold_over_warm": _ratio(cold_p, warm_p)}


def _fmt(x, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def markdown(summary: dict, cache: dict | None, meta: dict) -> str:
    lines = [f"Machine: {meta['machine']}; JAX {meta['jax']}, PyTorch {meta['torch']} ({meta['torch_threads']} "
             f"threads), transformers {meta['transformers']}; {meta['rounds']} round(s), fresh subprocess per run.",
             f"Both sides: GLIBC_TUNABLES={meta.get('glibc_tunables') or '(unset)'} (glibc.malloc.hugetlb takes effect "
             "with glibc >= 2.35 and transparent huge pages set to madvise or always).",
             "", f"Command: `{meta['command']}`", "",
             "| config | JAX step (ms) | torch step (ms) | torch / JAX time | JAX useful tok/s | torch useful tok/s "
             "| useful tok/s JAX / torch | JAX MFU | torch MFU | JAX compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for config, s in summary.items():
        lines.append(f"| {Path(config).stem} | {_fmt(s['jax_step_ms'])} | {_fmt(s['torch_step_ms'])} "
                     f"| {_fmt(s['speed_ratio_torch_over_jax'], '.2f')} | {_fmt(s['jax_useful_tokens_per_s'], ',.0f')} "
                     f"| {_fmt(s['torch_useful_tokens_per_s'], ',.0f')} | {_fmt(s['useful_tps_ratio_jax_over_torch'], '.2f')} "
                     f"| {_fmt(s['jax_mfu'], '.2f')} | {_fmt(s['torch_mfu'], '.2f')} | {_fmt(s['jax_compile_s'], '.1f')} |")
    if cache is not None:
        lines += ["", f"Compile cache ({Path(cache['config']).stem}, one new `compilation_cache=DIR`): first step "
                      f"(compile + run) cold {_fmt(cache['cold_first_step_s'], '.2f', ' s')}, warm "
                      f"{_fmt(cache['warm_first_step_s'], '.2f', ' s')}, cold / warm "
                      f"{_fmt(cache['ratio_cold_over_warm'], '.1f')}x (compile_s {_fmt(cache['cold_compile_s'], '.2f')}"
                      f" -> {_fmt(cache['warm_compile_s'], '.2f')}); from process start to the first step done "
                      f"(imports, the models' init, compile, run): cold {_fmt(cache['cold_process_to_first_step_s'], '.2f', ' s')}"
                      f", warm {_fmt(cache['warm_process_to_first_step_s'], '.2f', ' s')}, cold / warm "
                      f"{_fmt(cache['ratio_process_cold_over_warm'], '.1f')}x."]
    return "\n".join(lines)


def _meta(args, argv) -> dict:
    versions = {}
    for name in ("jax", "torch", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    threads = "?"
    if versions["torch"] != "not installed":
        import torch

        threads = torch.get_num_threads()
    return {"machine": f"{platform.machine()} {platform.processor() or platform.platform()}, {os.cpu_count()} CPU(s)",
            **versions, "torch_threads": threads, "rounds": args.rounds,
            "command": "python benchmarks/compare.py " + " ".join(argv), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps= for both sides (default: the YAML's)")
    parser.add_argument("--warmup", type=int, default=None, help="warmup= for both sides (default: the YAML's)")
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write raw results + summary here")
    parser.add_argument("--no-cache-check", action="store_true")
    parser.add_argument("--malloc", choices=("huge-pages", "default"), default="huge-pages",
                        help="huge-pages (default): both sides run with GLIBC_TUNABLES=%s, what the `jaxdistill` "
                             "command sets for itself (jaxdistill/launch.py); default: glibc as it comes. A "
                             "GLIBC_TUNABLES already in the environment is kept either way" % TUNABLES)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    passthrough = ([f"steps={args.steps}"] if args.steps is not None else []) + \
                  ([f"warmup={args.warmup}"] if args.warmup is not None else [])
    env = dict(os.environ)
    if args.malloc == "huge-pages":
        env.setdefault("GLIBC_TUNABLES", TUNABLES)
    raw: dict[str, dict[str, list[dict]]] = {}
    for config in args.configs:
        raw[config] = {"jax": [], "torch": []}
        for r in range(args.rounds):
            order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
            for side in order:
                command = [*(JAX if side == "jax" else TORCH), config, "--json", *passthrough]
                result = run_json(command, env=env)
                raw[config][side].append({**result, "round": r})
                if "error" in result:
                    print(f"  {side} failed: {result['error']}\n{result.get('stderr_tail', '')}", file=sys.stderr)
    cache = None if args.no_cache_check else cache_check(CONFIGS[0], ["steps=1", "warmup=0"], env)
    summary = summarize(raw)
    meta = {**_meta(args, argv), "glibc_tunables": env.get("GLIBC_TUNABLES")}
    table = markdown(summary, cache, meta)
    if args.json is not None:
        write_json_atomic(args.json, {"meta": meta, "summary": summary, "cache_check": cache, "raw": raw})
    print(table)
    failed = any("error" in r for sides in raw.values() for runs in sides.values() for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
