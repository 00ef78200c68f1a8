"""Pre-train the demo's MViTv2 backbone on synthetic shapes (per-pixel classification).

Makes the shipped weights/mvitv2_demo_shapes_pretrain.pth with its defaults:

    .venv/bin/python tools/demo_pretrain.py --out weights/mvitv2_demo_shapes_pretrain.pth
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

import torch

from mvit_backbone.engine.demo import DEFAULT_WEIGHTS, PretrainConfig, pretrain_backbone


def main() -> None:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_WEIGHTS, help="output checkpoint path")
    parser.add_argument("--iters", type=int, default=defaults.iters)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=1, help="data-rendering processes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared 2-core machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(defaults, iters=args.iters, batch_size=args.batch_size,
                              lr=args.lr, seed=args.seed)
    meta = pretrain_backbone(args.out, cfg, num_workers=args.workers)
    print(json.dumps({k: meta[k] for k in ("held_out", "train_seconds")}, indent=1))


if __name__ == "__main__":
    main()
