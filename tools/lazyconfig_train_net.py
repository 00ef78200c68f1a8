#!/usr/bin/env python
"""Train or evaluate a LazyConfig detector (configs/COCO-*/, configs/Demo/), on one or many
processes. Processes are started by detectron2's ``launch`` (NCCL on GPUs, gloo on CPUs;
``--num-gpus`` is the number of processes per machine). ``--register-coco NAME JSON IMAGE_DIR``
registers a COCO-format dataset, to be named in ``dataloader.train.dataset.names=NAME`` etc.;
the demo config registers its synthetic shapes itself. Without a GPU a config whose
``train.device`` is cuda runs on the CPU.
``--check-data`` decodes every training image first; ``--skip-bad-data`` skips broken data.
"""
from functools import partial

from mvit_backbone.engine import argument_parser, do_eval_only, do_train, launch_main
from mvit_backbone.engine.cli import (
    check_datasets_registered,
    load_lazy_config,
    register_config_datasets,
    run_tool,
    use_cpu_without_gpu,
)

EXAMPLE = ("tools/lazyconfig_train_net.py --config-file configs/COCO-InstanceSegmentation/"
           "mask_rcnn_mvitv2_t_3x.py --num-gpus 8 train.init_checkpoint=/path/MViTv2_T_in1k.pyth")


def main(args):
    from detectron2.engine import default_setup

    cfg = load_lazy_config(args.config_file, args.opts)
    use_cpu_without_gpu(cfg)
    register_config_datasets(cfg)
    check_datasets_registered(cfg, ("test",) if args.eval_only else ("train", "test"))
    default_setup(cfg, args)
    if args.eval_only:
        do_eval_only(cfg)
    else:
        do_train(cfg, resume=args.resume, skip_bad_data=args.skip_bad_data,
                 check_data=args.check_data)


if __name__ == "__main__":
    args = argument_parser(__doc__, EXAMPLE).parse_args()
    run_tool(partial(launch_main, main), args)
