#!/usr/bin/env python
"""The demo (what `make demo` runs): synthetic COCO-format shapes -> Mask R-CNN with MViTv2,
trained within a wall-clock budget -> bbox/segm AP, a PNG of predictions, and the trained model
(output/demo/model_final.pth). It ends by printing the commands that continue from the model:
predictions on your images, evaluation, resuming for longer, the analysis tool.
"""
from __future__ import annotations

import json
import os

import torch

from mvit_backbone.engine.cli import run_tool, tool_parser
from mvit_backbone.engine.demo import DEFAULT_CONFIG, run_demo


def main(args) -> None:
    threads = args.threads or (1 if os.getloadavg()[0] > 1.5 else min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    summary = run_demo(args.config_file, args.minutes, args.output_dir, args.opts, args.max_iter,
                       pretrained=not args.no_pretrained)
    summary["threads"] = threads
    print(json.dumps({k: summary[k] for k in ("bbox", "segm", "train", "seconds", "png",
                                              "checkpoint", "load_average", "threads")}, indent=1))
    print("\nNext, from the trained model:")
    for what, command in summary["next"]:
        print(f"  # {what}\n  {command}")


if __name__ == "__main__":
    parser = tool_parser(__doc__, config_file="optional",
                         example="tools/demo.py --minutes 60   # a longer run")
    parser.set_defaults(config_file=DEFAULT_CONFIG)
    parser.add_argument("--minutes", type=float, default=13.0,
                        help="wall-clock budget of the whole run (data, training, evaluation)")
    parser.add_argument("--output-dir", default=None, help="default: the config's train.output_dir")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="train exactly this many iterations instead of filling the budget")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="train the backbone from scratch (ignore train.init_checkpoint)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; default: 2 on an idle machine, 1 when the load "
                             "average is above 1.5 (2 threads fighting for busy cores are slower)")
    run_tool(main, parser.parse_args())
