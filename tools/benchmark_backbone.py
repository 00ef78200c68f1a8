"""Benchmark mvit_backbone.MViT against detectron2.modeling.MViT (same weights, one run), or
with --timm our MViTv2-T classifier against timm's mvitv2_tiny. The logic is in
mvit_backbone.benchmark.

Results go to --out (.md, .json, .png; default under output/, which git ignores);
docs/BENCHMARKS.md lists every command it reports, e.g.
    .venv/bin/python tools/benchmark_backbone.py --timm --out docs/benchmarks/mvitv2_t_vs_timm_224_cpu
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict

import torch

from mvit_backbone.benchmark import (
    MODES,
    WINDOW_BATCHES,
    attention_kernels,
    build_pair,
    compile_speedup,
    keep_freed_memory,
    kernel_floor,
    linear_kernels,
    page_faults,
    plot,
    plot_timm,
    run_benchmark,
    run_timm_benchmark,
    saved_activation_mib,
    timm_kernel_floor,
    timm_markdown,
    to_markdown,
)
from mvit_backbone.engine.cli import run_tool, tool_parser

logger = logging.getLogger("mvit_backbone.benchmark")


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


EXAMPLE = ("tools/benchmark_backbone.py --variants T B --sizes 512 1024 --batches 1 "
           "--out docs/benchmarks/mvitv2_TB_512_1024_b1_cpu")


def parse_args():
    p = tool_parser(__doc__, EXAMPLE, config_file="none", opts=False)
    p.add_argument("--variants", nargs="+", default=["T"], help="MViTv2 variants: T S B L H")
    p.add_argument("--sizes", nargs="+", type=_size, default=[(512, 512), (1024, 1024), (800, 1333)],
                   help="HxW or S (square)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2], help="batch sizes")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="inference (fwd) and/or a training step (fwd+bwd)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per model (median)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-only", action="store_true", help="skip the timings")
    p.add_argument("--out", default="output/benchmark_backbone",
                   help="output prefix: .md, .png, .json")
    p.add_argument("--compile", action="store_true",
                   help="instead: eager vs torch.compile forward of ours at the first size/batch")
    p.add_argument("--kernels", action="store_true",
                   help="instead: two window batches (T stage 1, B stage 3) through each attention "
                        "implementation, and (CPU) the Linear shapes on MKL and oneDNN")
    p.add_argument("--saved", action="store_true",
                   help="instead: MiB saved for backward by both models, per variant/size/batch")
    p.add_argument("--faults", action="store_true",
                   help="instead: page faults, user and system time per step (first size/batch)")
    p.add_argument("--floor", action="store_true",
                   help="instead: seconds of ours' matmul and attention kernels against "
                        "detectron2's whole step (the ratio if all else were free); with --timm, "
                        "both classifiers' kernel seconds against timm's step")
    p.add_argument("--timm", action="store_true",
                   help="instead: our mvitv2_t classifier against timm's mvitv2_tiny with the same "
                        "weights at 224², inference at batch 8 and a training step at batch 4 "
                        "(--repeats 10 recommended)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc keeps freed memory for reuse (no mmap, no trim) in this process, "
                        "so the timings carry no page-fault cost for either model; peak memory "
                        "is still measured in fresh default subprocesses")
    return p.parse_args()


def main(args) -> None:
    if args.repeats < 3:
        logger.warning("--repeats %d: a median of fewer than 3 timed repeats is mostly noise; "
                       "use 3 or more for figures worth comparing", args.repeats)

    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.timm and args.floor:
        for row in timm_kernel_floor(repeats=args.repeats):
            print(json.dumps(row))
        return
    if args.timm:
        results = run_timm_benchmark(repeats=args.repeats, device=args.device)
        _write_outputs(args.out, timm_markdown(results), results)
        plot_timm(results, args.out + ".png")
        return
    if args.saved:
        for variant in args.variants:
            ref, ours = build_pair(variant)
            for (h, w) in args.sizes:
                for batch in args.batches:
                    x = torch.randn(batch, 3, h, w)
                    d2_mib, ours_mib = saved_activation_mib(ref, x), saved_activation_mib(ours, x)
                    print(json.dumps(dict(variant=variant, height=h, width=w, batch=batch,
                                          d2_mib=d2_mib, ours_mib=ours_mib,
                                          ratio=ours_mib / d2_mib)))
        return
    if args.faults:
        (h, w), batch = args.sizes[0], args.batches[0]
        for variant in args.variants:
            for mode in args.modes:
                for row in page_faults(variant, h, w, batch, mode, args.repeats):
                    print(json.dumps(dict(variant=variant, height=h, width=w, batch=batch, **row)))
        return
    if args.floor:
        for variant in args.variants:
            for (h, w) in args.sizes:
                for batch in args.batches:
                    for mode in args.modes:
                        print(json.dumps(kernel_floor(variant, h, w, batch, mode, args.repeats)))
        return
    if args.kernels:
        for name, (windows, heads, q_window, kv_window) in WINDOW_BATCHES.items():
            print(name, json.dumps(attention_kernels(windows, heads, q_window, kv_window,
                                                     repeats=args.repeats, device=args.device)))
        if args.device == "cpu":
            for row in linear_kernels(repeats=args.repeats):
                print(json.dumps(row))
        return
    if args.compile:
        (h, w), batch = args.sizes[0], args.batches[0]
        for variant in args.variants:
            print(json.dumps(compile_speedup(variant, h, w, batch, args.repeats, args.device)))
        return
    results = run_benchmark(args.variants, args.sizes, args.batches, args.modes, args.repeats,
                            args.device, memory=not args.no_memory,
                            timing=not args.memory_only)
    _write_outputs(args.out, to_markdown(results, args.device), results)
    plot(results, args.out + ".png")


def _write_outputs(prefix: str, table: str, results: list) -> None:
    """``prefix.md`` (the table, also printed) and ``prefix.json`` (the result records)."""
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    with open(prefix + ".md", "w") as f:
        f.write(table)
    with open(prefix + ".json", "w") as f:
        json.dump([asdict(r) for r in results], f, indent=1)
    print(table)


if __name__ == "__main__":
    run_tool(main, parse_args())
