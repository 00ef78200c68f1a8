#!/usr/bin/env python
"""Train or evaluate a LazyConfig detector (configs/COCO-*/), on one or many processes.

    python tools/lazyconfig_train_net.py --config-file configs/COCO-InstanceSegmentation/\
mask_rcnn_mvitv2_t_3x.py --num-gpus 8 [--resume] [--eval-only] [key=value ...]

Processes are started by detectron2's ``launch`` (NCCL on GPUs, gloo on CPUs; ``--num-gpus``
is the number of processes per machine). ``--register-coco NAME JSON IMAGE_DIR`` registers a
COCO-format dataset, to be named in ``dataloader.train.dataset.names=NAME`` etc.
"""
from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, default_setup, launch

from mvit_backbone.engine import do_eval_only, do_train, register_coco_datasets


def main(args):
    register_coco_datasets(args.register_coco)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        do_eval_only(cfg)
    else:
        do_train(cfg, resume=args.resume)


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"))
    args = parser.parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
