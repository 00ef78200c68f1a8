"""The command line shared by the training tools: detectron2's arguments plus dataset
registration and the data-checking flags, and the hand-over to detectron2's ``launch`` (one
process per GPU/CPU worker). A run stopped by bad data or a non-finite loss ends with its
one-line reason (and exit status 1), not a traceback."""
from __future__ import annotations

import argparse
from typing import Callable

from detectron2.engine import default_argument_parser, launch

from ..data.checks import DatasetError
from .data import register_coco_datasets
from .loop import TrainingStopped


def argument_parser(description: str | None = None,
                    example: str | None = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus ``--register-coco NAME JSON IMAGE_DIR``,
    ``--check-data``, ``--skip-bad-data`` and ``--debug``; ``--help`` shows the defaults, the
    tool's ``description`` and one ``example``."""
    from .cli import HelpFormatter

    parser = default_argument_parser()
    parser.description, parser.formatter_class = description, HelpFormatter
    if example:
        parser.epilog = f"example:\n  {example}"
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format dataset under NAME (repeatable)")
    parser.add_argument("--check-data", action="store_true",
                        help="before training, decode every training image and check its size")
    parser.add_argument("--skip-bad-data", action="store_true",
                        help="skip broken images and annotation entries (a warning each, a count "
                             "at the end) instead of stopping with an error naming the file")
    return parser


def _registered_main(main: Callable[[argparse.Namespace], object], args: argparse.Namespace):
    # runs in every worker process: registrations do not cross process boundaries
    try:
        register_coco_datasets(args.register_coco, skip_bad_data=args.skip_bad_data)
        return main(args)
    except (DatasetError, TrainingStopped) as e:
        raise SystemExit(f"error: {e}") from None


def launch_main(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """Run ``main(args)`` in ``--num-gpus`` processes per machine (``--num-machines`` machines),
    after registering the ``--register-coco`` datasets in each of them."""
    launch(_registered_main, args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(main, args))
