"""A 6-point sweep (`jaxdistill sweep`) against the same 6 runs as independent `jaxdistill distill`
processes, wall time side by side in one invocation, on the small from-scratch configuration
(jaxdistill/configs/tiny.yaml, shortened): 3 compression ratios x 2 KL temperatures.

    independent, own caches   each run a fresh process with its own cache directory (separate jobs,
                              as a plain script would run them): each trains its teacher, compiles
                              everything, evaluates its teacher
    independent, one cache    fresh processes sharing one cache directory (the teacher is prepared and
                              evaluated once; every process still starts JAX and compiles its steps)
    sweep                     one `jaxdistill sweep` process: one teacher preparation and evaluation,
                              compiled steps reused across points of equal shapes (persistent cache)

    python benchmarks/sweep_speed.py [--out DIR]

Prints one JSON object last: seconds of each variant and the ratios sweep / independent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from jaxdistill.jobs.sweep import override_args

SET = {"data.subsample": 400, "teacher.prepare_steps": 30, "train.steps": 12, "train.log_every": 4,
       "train.checkpoint_every": 12, "pruning.start": 2, "pruning.interval": 3, "pruning.stages": 3,
       "eval.limit": 40, "eval.suites": ["in_domain"]}
RATIOS, TEMPERATURES = (0.2, 0.35, 0.5), (1.0, 2.0)


def _cli(*args, cache: Path, cwd: Path) -> float:
    env = {**os.environ, "JAXDISTILL_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxdistill.cli", *args], env=env, cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Work directory (default: a temporary one).")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="sweep-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    points = [{"pruning.final_ratio": r, "loss.temperature": t} for t in TEMPERATURES for r in RATIOS]
    spec = {"name": "bench", "sweep_dir": str(work / "sweep"), "base": "tiny.yaml", "set": SET,
            "grid": {"loss.temperature": list(TEMPERATURES), "pruning.final_ratio": list(RATIOS)}}
    (work / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    common = override_args(SET)

    def independent(shared: bool, tag: str) -> float:
        total = 0.0
        for i, point in enumerate(points):
            cache = work / f"cache-{tag}" if shared else work / f"cache-{tag}-{i}"
            total += _cli("distill", str(_tiny()), *common,
                          *override_args(point), f"run_dir={work / f'{tag}-{i}'}",
                          cache=cache, cwd=work)
        return total

    seconds = {"independent_own_caches": independent(False, "own"),
               "independent_one_cache": independent(True, "one"),
               "sweep": _cli("sweep", str(work / "sweep.yaml"), cache=work / "cache-sweep", cwd=work)}
    result = {**{k: round(v, 1) for k, v in seconds.items()}, "points": len(points),
              "sweep_vs_own_caches": round(seconds["sweep"] / seconds["independent_own_caches"], 3),
              "sweep_vs_one_cache": round(seconds["sweep"] / seconds["independent_one_cache"], 3),
              "machine": f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d")}
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


def _tiny() -> Path:
    from jaxdistill.config import packaged_config

    return packaged_config("tiny.yaml")


if __name__ == "__main__":
    main()
