"""Benchmark our MViTv2-S video model against torchvision's mvit_v2_s with the same weights, in
one run: forward and forward+backward at batch 1 and 2 on 16x224² clips, peak memory of each
configuration in a fresh subprocess. Writes OUT.md, .csv, .json and .png. The logic is in
mvit_backbone.benchmark.video.

Example (docs/BENCHMARKS.md reports it):
    PYTHONPATH=. .venv/bin/python tools/benchmark_video.py
"""
from __future__ import annotations

import argparse
import os

import torch

from mvit_backbone.benchmark import MODES, TORCHVISION_NAMES, run_video_benchmark, write_video_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mvitv2_s_16x4", choices=sorted(TORCHVISION_NAMES))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per model (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", default=None,
                   help="output prefix (default: output/benchmark_video_MODEL_FRAMESxSIZE_DEVICE)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    out = args.out or os.path.join(
        "output", f"benchmark_video_{args.model}_{args.frames}x{args.size}_{args.device}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    results = run_video_benchmark(args.model, args.frames, args.size, args.batches, args.modes,
                                  args.repeats, args.device, memory=not args.no_memory)
    for path in write_video_results(results, out, args.device):
        print("wrote", path)


if __name__ == "__main__":
    main()
