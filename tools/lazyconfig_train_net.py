#!/usr/bin/env python
"""Train or evaluate a LazyConfig detector (configs/COCO-*/), on one or many processes.

    python tools/lazyconfig_train_net.py --config-file configs/COCO-InstanceSegmentation/\
mask_rcnn_mvitv2_t_3x.py --num-gpus 8 [--resume] [--eval-only] [key=value ...]

Processes are started by detectron2's ``launch`` (NCCL on GPUs, gloo on CPUs; ``--num-gpus``
is the number of processes per machine). ``--register-coco NAME JSON IMAGE_DIR`` registers a
COCO-format dataset, to be named in ``dataloader.train.dataset.names=NAME`` etc.
``--check-data`` decodes every training image first; ``--skip-bad-data`` skips broken data.
"""
from detectron2.config import LazyConfig
from detectron2.engine import default_setup

from mvit_backbone.engine import (
    apply_overrides,
    argument_parser,
    do_eval_only,
    do_train,
    launch_main,
)


def main(args):
    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        do_eval_only(cfg)
    else:
        do_train(cfg, resume=args.resume, skip_bad_data=args.skip_bad_data,
                 check_data=args.check_data)


if __name__ == "__main__":
    launch_main(main, argument_parser().parse_args())
