#!/usr/bin/env python
"""Train or evaluate a yacs (YAML) detectron2 config, with MViTv2 backbones available.
``--register-coco NAME JSON IMAGE_DIR`` registers a COCO-format dataset for DATASETS.TRAIN/TEST.
Without a GPU a config whose MODEL.DEVICE is cuda runs on the CPU.
"""
from functools import partial

from mvit_backbone.engine import argument_parser, launch_main, run_yacs
from mvit_backbone.engine.cli import run_tool

EXAMPLE = ("tools/train_net.py --config-file <detectron2 model_zoo>/COCO-InstanceSegmentation/"
           "mask_rcnn_R_50_FPN_3x.yaml MODEL.BACKBONE.NAME build_mvitv2_fpn_backbone "
           "MODEL.MVITV2.VARIANT T")


if __name__ == "__main__":
    args = argument_parser(__doc__, EXAMPLE).parse_args()
    run_tool(partial(launch_main, run_yacs), args)
