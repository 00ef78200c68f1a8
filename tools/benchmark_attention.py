"""Compare attention mechanisms (pooling, fixed windows, Swin, Hwin; MViTv2 Table 4) by cost and,
with --train, accuracy. The rows are mvit_backbone.benchmark.ATTENTION_VARIANTS; the logic is in
mvit_backbone/benchmark/attention.py.

Writes <out>/<workload>_<size>_<device>.{md,csv,json,png} per workload and prints the tables.

Examples (docs/BENCHMARKS.md lists the commands it reports):
    .venv/bin/python tools/benchmark_attention.py                      # classification, 224²
    .venv/bin/python tools/benchmark_attention.py --workloads backbone --sizes 1024 800x1333
    .venv/bin/python tools/benchmark_attention.py --workloads maskrcnn --rows MViTv2-S --train
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from mvit_backbone.benchmark.attention import (
    DEFAULT_DET_CONFIG,
    WORKLOADS,
    ClassificationBudget,
    load_paper_numbers,
    run_attention_benchmark,
    select_rows,
    split_row,
    train_classification_accuracy,
    train_detection_accuracy,
    write_outputs,
)

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "reference" / "paper_numbers.json"


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=["classification"])
    p.add_argument("--rows", nargs="*", help="substrings of row names (default: every row)")
    p.add_argument("--sizes", nargs="+", type=_size, default=[(1024, 1024), (800, 1333)],
                   help="HxW or S: input sizes of the backbone workload")
    p.add_argument("--det-size", type=_size, default=(224, 320),
                   help="input of the Mask R-CNN workload (default: the demo config's scale)")
    p.add_argument("--det-config", default=DEFAULT_DET_CONFIG,
                   help="LazyConfig of the Mask R-CNN workload (its trunk takes the row's attention)")
    p.add_argument("--batch", type=int, default=None,
                   help="inference batch (default: 8 classification, 1 detection)")
    p.add_argument("--train-batch", type=int, default=None,
                   help="training-step batch, also of the memory step (default: 4 classification, "
                        "1 detection)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per row (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cpu", "cuda"])
    p.add_argument("--kernels", default="auto", choices=["auto", "reference"],
                   help="execution policy of the trunk (reference: explicit attention, as the "
                        "paper's implementation)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--timing", nargs="*", choices=["train", "infer"], default=["train", "infer"],
                   help="steps to time (none: no timing)")
    p.add_argument("--train", action="store_true",
                   help="also train every row for the same budget and report its accuracy")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--data-dir", default="", help="ImageFolder root (train/, val/) for --train; "
                   "default: the synthetic image set")
    p.add_argument("--epochs", type=int, default=ClassificationBudget.epochs)
    p.add_argument("--train-per-class", type=int, default=ClassificationBudget.train_per_class)
    p.add_argument("--width-div", type=int, default=ClassificationBudget.width_div,
                   help="divide every row's width by this for --train (1: the real models)")
    p.add_argument("--train-size", type=int, default=ClassificationBudget.img_size,
                   help="image side for --train (windows scale with it; 224: the paper's)")
    p.add_argument("--train-batch-size", type=int, default=ClassificationBudget.batch_size)
    p.add_argument("--det-iters", type=int, default=60, help="Mask R-CNN iterations for --train")
    p.add_argument("--det-val-images", type=int, default=40)
    p.add_argument("--det-dataset-overrides", nargs="*", default=[],
                   help="LazyConfig key=value pointing the loaders/evaluator at a registered COCO set")
    p.add_argument("--paper", default=str(PAPER), help="paper_numbers.json (shown beside ours)")
    p.add_argument("--out", default="output/attention_benchmark")
    args = p.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = select_rows(args.rows)
    paper = load_paper_numbers(args.paper)
    out = Path(args.out)
    for workload in args.workloads:
        detection = workload != "classification"
        batch = args.batch or (1 if detection else 8)
        train_batch = args.train_batch or (1 if detection else 4)
        workload_rows = rows
        if workload == "maskrcnn":
            workload_rows = [r for r in rows if split_row(r)[0] != "ViT-B"]
            if len(workload_rows) < len(rows):
                print("maskrcnn: ViT-B rows skipped (the FPN needs a multi-scale trunk)")
        sizes = {"classification": [(224, 224)], "backbone": args.sizes,
                 "maskrcnn": [args.det_size]}[workload]
        for size in sizes:
            results = run_attention_benchmark(
                workload_rows, workload, size, batch=batch, train_batch=train_batch,
                repeats=args.repeats, warmup=args.warmup, device=args.device,
                kernels=args.kernels, det_config=args.det_config, flops=not args.no_flops,
                memory=not args.no_memory, timing=args.timing, paper_numbers=paper)
            meta = dict(workload=workload, input=f"{size[0]}x{size[1]}", device=args.device,
                        threads=torch.get_num_threads(), kernels=args.kernels,
                        inference_batch=batch, train_batch=train_batch, repeats=args.repeats,
                        warmup=args.warmup, load_average=[round(x, 2) for x in os.getloadavg()])
            if workload == "maskrcnn":
                meta["config"] = args.det_config
            if args.train and workload == "classification":
                budget = replace(ClassificationBudget(), epochs=args.epochs,
                                 train_per_class=args.train_per_class, width_div=args.width_div,
                                 img_size=args.train_size, batch_size=args.train_batch_size)
                top1 = train_classification_accuracy(
                    workload_rows, args.seeds, out, budget, args.data_dir, args.kernels)
                for r in results:
                    r.accuracy_runs = top1[r.row]
                    r.accuracy = sum(top1[r.row]) / len(top1[r.row])
                meta["training"] = (f"{budget.epochs} epoch(s) at {budget.img_size}², batch "
                                    f"{budget.batch_size}, lr {budget.lr}, width / "
                                    f"{budget.width_div}, seeds {args.seeds}, "
                                    + (args.data_dir or f"synthetic set {budget.train_per_class}"
                                       f"+{budget.val_per_class} images per class"))
            if args.train and workload == "maskrcnn":
                aps = train_detection_accuracy(
                    workload_rows, args.seeds, out, args.det_config, args.det_iters,
                    args.det_val_images, args.det_dataset_overrides, args.kernels)
                for r in results:
                    r.accuracy_runs = [box for box, _ in aps[r.row]]
                    r.accuracy = sum(r.accuracy_runs) / len(r.accuracy_runs)
                    r.mask_ap = sum(mask for _, mask in aps[r.row]) / len(aps[r.row])
                meta["training"] = (f"{args.det_iters} iterations, seeds {args.seeds}, "
                                    f"{args.det_val_images} val images")
            prefix = out / f"{workload}_{size[0]}x{size[1]}_{args.device}"
            print(write_outputs(results, prefix, args.device, meta))
            print(f"written: {prefix}.md .csv .json .png")


if __name__ == "__main__":
    main()
