"""Unfused vs chunked distillation loss (forward + backward from hidden states): compiled temporary
memory for V in {32768, 151936} x N in {4096, 16384} (compile only), and wall time at V=32768,
N=4096. Prints one JSON line. Also: `jaxdistill bench jaxdistill/configs/bench/loss_memory.yaml --json`.

    python benchmarks/loss_memory.py [--chunk-size 1024] [--hidden 1024] [--iters 3]
"""

import argparse
import json

from jaxdistill.bench import bench_loss_memory


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--divergence", default="forward_kl")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(bench_loss_memory(hidden=args.hidden, teacher_hidden=args.hidden,
                                       chunk_size=args.chunk_size, divergence=args.divergence,
                                       iters=args.iters)))


if __name__ == "__main__":
    main()
