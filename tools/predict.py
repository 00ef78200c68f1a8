#!/usr/bin/env python
"""Draw a trained LazyConfig detector's predictions on images and write one PNG per image.
Labels are the class names of the registered dataset (default: the config's test dataset; the
demo config registers its shapes itself). Flags first, then the images, then any key=value
config overrides. Without a GPU a config whose train.device is cuda runs on the CPU.
"""
from mvit_backbone.engine import predict_images, register_coco_datasets
from mvit_backbone.engine.cli import (
    UserError,
    is_override,
    load_lazy_config,
    register_config_datasets,
    run_tool,
    tool_parser,
    use_cpu_without_gpu,
)

EXAMPLE = ("tools/predict.py --config-file configs/Demo/mask_rcnn_mvitv2_demo.py "
           "--weights output/demo/model_final.pth img1.jpg img2.jpg train.device=cpu")


def main(args) -> None:
    images = [t for t in args.inputs if not is_override(t)]
    opts = [t for t in args.inputs if is_override(t)]
    if not images:
        raise UserError("no image given: put the image files after the flags")
    cfg = load_lazy_config(args.config_file, opts)
    use_cpu_without_gpu(cfg)
    register_config_datasets(cfg, validate=False)
    registered = register_coco_datasets(args.register_coco)
    dataset = args.dataset or (registered[0] if registered else None)
    predictions = predict_images(cfg, args.weights, images, args.output, args.score_thresh,
                                 dataset)
    for p in predictions:
        if p.kept:
            print(f"{p.png}: {p.kept} detection(s) with score >= {args.score_thresh}")
        else:
            best = "none at all" if p.best_score is None else f"best score {p.best_score:.2f}"
            print(f"{p.png}: no detection with score >= {args.score_thresh} ({best}); "
                  f"a lower --score-thresh draws weaker ones")


if __name__ == "__main__":
    parser = tool_parser(__doc__, EXAMPLE, opts=False)
    parser.add_argument("--weights", required=True, help="checkpoint to load (e.g. model_final.pth)")
    parser.add_argument("--output", default="output/predictions", help="folder for the PNGs")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="draw detections with at least this score")
    parser.add_argument("--dataset", default=None,
                        help="registered dataset whose class names label the drawings; default: "
                             "the first --register-coco NAME, else the config's test dataset")
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format dataset (for its class names; repeatable)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, then config overrides key=value (e.g. train.device=cpu)")
    run_tool(main, parser.parse_args())
