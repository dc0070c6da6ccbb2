"""Step-speed changes, measured side by side: each variant is `jaxdistill bench CONFIG --json` in its own
subprocess, from its own source tree (e.g. a `git worktree` of the previous commit) with its own
overrides, alternated round by round so that every variant sees the same machine load.

    python benchmarks/step_changes.py --config jaxdistill/configs/bench/cpu_small.yaml --rounds 3 \\
        --variant before=/tmp/wt_old: --variant after=.: --variant after-remat-full=.:remat=full

A variant is NAME=TREE:OVERRIDES (overrides comma-separated key=value). Prints, per variant, the median
over rounds of the step's median time, the median % of the step-weighted matmul ceiling (measured in
each run's own process) and the ratio to the first variant; `--json OUT` keeps every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_variant(tree: str, config: str, overrides: list[str]) -> dict:
    tree = str(Path(tree).resolve())
    env = {**os.environ, "PYTHONPATH": tree}
    cmd = [sys.executable, "-m", "jaxdistill.cli", "bench", str(Path(config).resolve()), "--json", *overrides]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jaxdistill/configs/bench/cpu_small.yaml")
    parser.add_argument("--variant", action="append", required=True, help="NAME=TREE:k=v,k=v")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="out")
    args = parser.parse_args()
    variants = []
    for text in args.variant:
        name, rest = text.split("=", 1)
        tree, _, overrides = rest.partition(":")
        variants.append((name, tree, [o for o in overrides.split(",") if o]))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):
        for name, tree, overrides in variants:
            result = run_variant(tree, args.config, overrides)
            runs[name].append(result)
            print(f"round {r + 1} {name}: {result['step_ms_median']:.1f} ms, {100 * result['mfu']:.1f}% of "
                  f"{result['peak_flops'] / 1e9:.0f} GFLOP/s", flush=True)
    first = statistics.median(x["step_ms_median"] for x in runs[variants[0][0]])
    print(f"\n| variant | step ms (median of {args.rounds}) | % of ceiling | ceiling GFLOP/s | vs {variants[0][0]} |")
    print("|---|---|---|---|---|")
    for name, _, overrides in variants:
        ms = statistics.median(x["step_ms_median"] for x in runs[name])
        mfu = statistics.median(x["mfu"] for x in runs[name])
        peak = statistics.median(x["peak_flops"] for x in runs[name])
        print(f"| {name} {' '.join(overrides)} | {ms:.1f} | {100 * mfu:.1f}% | {peak / 1e9:.0f} | {first / ms:.2f}x |")
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(runs, indent=1))
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
