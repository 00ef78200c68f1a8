#!/usr/bin/env python
"""Draw a trained LazyConfig detector's predictions on images and write PNGs:

    python tools/predict.py --config-file configs/COCO-InstanceSegmentation/\
mask_rcnn_mvitv2_t_3x.py --weights output/model_final.pth --output out/ img1.jpg img2.jpg
"""
import argparse

from detectron2.config import LazyConfig
from detectron2.utils.logger import setup_logger

from mvit_backbone.engine import predict_images, register_coco_datasets


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint to load")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"))
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    setup_logger()
    register_coco_datasets(args.register_coco)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    for path in predict_images(cfg, args.weights, args.images, args.output, args.score_thresh):
        print(path)


if __name__ == "__main__":
    main()
