"""Forward-pass tokens/s and MFU on the current backend; prints one JSON line.

    python benchmarks/forward.py                                   # cpu-small, fp32, this machine
    python benchmarks/forward.py --model qwen3-0.6b --batch 8 --seq 2048 --dtype bfloat16   # GPU/TPU
    python benchmarks/forward.py --model /path/to/hf_model_dir     # any local config.json

Peak: on CPU an fp32 matmul ceiling measured in-process at the workload's matmul shapes; on
accelerators the datasheet bf16 peak (override with --peak-tflops). See jaxdistill/bench.py.
"""

import argparse
import json

from jaxdistill.bench import PRESETS, bench_forward


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cpu-small",
                        help=f"preset ({', '.join(PRESETS)}) or a Hugging Face model directory")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="param and compute dtype (default: the model's)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    print(json.dumps(bench_forward(args.model, args.batch, args.seq, args.dtype, args.iters,
                                   args.peak_tflops)))


if __name__ == "__main__":
    main()
