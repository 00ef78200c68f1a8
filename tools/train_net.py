#!/usr/bin/env python
"""Train or evaluate a yacs (YAML) detectron2 config, with MViTv2 backbones available:

    python tools/train_net.py --config-file <model zoo>/COCO-InstanceSegmentation/\
mask_rcnn_R_50_FPN_3x.yaml MODEL.BACKBONE.NAME build_mvitv2_fpn_backbone MODEL.MVITV2.VARIANT T

``--register-coco NAME JSON IMAGE_DIR`` registers a COCO-format dataset for DATASETS.TRAIN/TEST.
"""
from detectron2.engine import default_argument_parser, launch

from mvit_backbone.engine import register_coco_datasets, run_yacs


def main(args):
    register_coco_datasets(args.register_coco)
    return run_yacs(args)


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"))
    args = parser.parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
