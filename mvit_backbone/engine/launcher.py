"""The command line shared by the training tools: detectron2's arguments plus dataset
registration, and the hand-over to detectron2's ``launch`` (one process per GPU/CPU worker)."""
from __future__ import annotations

import argparse
from typing import Callable

from detectron2.engine import default_argument_parser, launch

from .data import register_coco_datasets


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus ``--register-coco NAME JSON IMAGE_DIR``."""
    parser = default_argument_parser()
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format dataset under NAME (repeatable)")
    return parser


def _registered_main(main: Callable[[argparse.Namespace], object], args: argparse.Namespace):
    # runs in every worker process: registrations do not cross process boundaries
    register_coco_datasets(args.register_coco)
    return main(args)


def launch_main(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """Run ``main(args)`` in ``--num-gpus`` processes per machine (``--num-machines`` machines),
    after registering the ``--register-coco`` datasets in each of them."""
    launch(_registered_main, args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(main, args))
