"""Pre-train the demo's MViTv2 backbone on synthetic shapes (per-pixel classification).

Makes the shipped weights/mvitv2_demo_shapes_pretrain.pth with its defaults:

    .venv/bin/python tools/demo_pretrain.py --out weights/mvitv2_demo_shapes_pretrain.pth
"""
from __future__ import annotations

import dataclasses
import json
import logging

import torch

from mvit_backbone.engine.cli import tool_parser
from mvit_backbone.engine.demo import DEFAULT_WEIGHTS, PretrainConfig, pretrain_backbone


def main() -> None:
    defaults = PretrainConfig()
    parser = tool_parser(__doc__, "tools/demo_pretrain.py --out weights/mvitv2_demo_shapes_pretrain.pth",
                         config_file="none", opts=False)
    parser.add_argument("--out", default=DEFAULT_WEIGHTS, help="output checkpoint path")
    parser.add_argument("--iters", type=int, default=defaults.iters, help="training iterations")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="scenes per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
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
