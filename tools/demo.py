"""The demo: synthetic COCO-format shapes -> Mask R-CNN with MViTv2 -> bbox/segm AP + a PNG.

    .venv/bin/python tools/demo.py --minutes 13          # what `make demo` runs
    .venv/bin/python tools/demo.py --minutes 60          # a longer run
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from mvit_backbone.engine.demo import DEFAULT_CONFIG, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=13.0,
                        help="wall-clock budget of the whole run (data, training, evaluation)")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--output-dir", default=None, help="default: the config's train.output_dir")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="train exactly this many iterations instead of filling the budget")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="train the backbone from scratch (ignore train.init_checkpoint)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; default: 2 on an idle machine, 1 when the load "
                             "average is above 1.5 (2 threads fighting for busy cores are slower)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="LazyConfig overrides, e.g. demo.splits.train=[800,0]")
    args = parser.parse_args()
    threads = args.threads or (1 if os.getloadavg()[0] > 1.5 else min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    summary = run_demo(args.config, args.minutes, args.output_dir, args.opts, args.max_iter,
                       pretrained=not args.no_pretrained)
    summary["threads"] = threads
    print(json.dumps({k: summary[k] for k in ("bbox", "segm", "train", "seconds", "png",
                                              "load_average", "threads")}, indent=1))


if __name__ == "__main__":
    main()
