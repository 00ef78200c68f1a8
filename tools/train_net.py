#!/usr/bin/env python
"""Train or evaluate a yacs (YAML) detectron2 config, with MViTv2 backbones available:

    python tools/train_net.py --config-file <model zoo>/COCO-InstanceSegmentation/\
mask_rcnn_R_50_FPN_3x.yaml MODEL.BACKBONE.NAME build_mvitv2_fpn_backbone MODEL.MVITV2.VARIANT T

``--register-coco NAME JSON IMAGE_DIR`` registers a COCO-format dataset for DATASETS.TRAIN/TEST.
"""

from mvit_backbone.engine import argument_parser, launch_main, run_yacs


def main(args):
    return run_yacs(args)


if __name__ == "__main__":
    launch_main(main, argument_parser().parse_args())
