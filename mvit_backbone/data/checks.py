"""Finding broken data before and during training, for the detection (COCO json) and
classification (image folder) loaders.

The policy, per problem (``docs/RELIABILITY.md`` has the table):

- converted, silently: grayscale, palette and RGBA images (decoded as RGB / BGR);
- dropped with one warning naming the annotation file and a count, always: an empty or
  degenerate box (width or height <= 0, not finite) and a polygon of fewer than 3 points (the
  annotation goes when no polygon is left); images without annotations are kept (detectron2's
  training loader leaves them out and logs how many);
- an error naming the file, or with ``skip_bad_data`` skipped with one warning naming the file
  and a count at the end: a missing, empty (0 bytes), undecodable or truncated image, an image
  whose size disagrees with the annotation file, an image or annotation entry without a needed
  field, duplicate image ids, a category id not in ``categories``;
- an error naming the file, always: an annotation file that is missing, not json, or has no
  ``images`` / ``annotations`` / ``categories`` list.

Cheap checks (fields, ids, file presence and size) run when a dataset is registered; decoding
every image is the optional ``--check-data`` pass (:func:`check_image_files`); what is left is
caught where an image is read (:class:`~mvit_backbone.engine.data.GuardedMapper`, the
classification dataset).
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from PIL import Image

logger = logging.getLogger("mvit_backbone.data")

SKIP_HINT = "pass --skip-bad-data to skip such files"


class DatasetError(ValueError):
    """A dataset file on disk is missing, unreadable or inconsistent; the message names it."""


@dataclass(frozen=True)
class Problem:
    """One broken item: ``file`` is the file at fault (an image, or the annotation file)."""

    file: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}: {self.what}"


class SkipCounter:
    """Counts skipped files across DataLoader worker processes (shared memory made before the
    workers fork) and warns once per file in the process that meets it."""

    def __init__(self) -> None:
        self._count = multiprocessing.get_context("fork").Value("i", 0)
        self._warned: set[str] = set()

    def skip(self, problem: Problem) -> None:
        if problem.file not in self._warned:
            self._warned.add(problem.file)
            logger.warning("skipped %s", problem)
        with self._count.get_lock():
            self._count.value += 1

    @property
    def count(self) -> int:
        return self._count.value


def worker_message(error: BaseException) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker (whose message is
    the worker's whole traceback), the original message alone."""
    lines = str(error).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return lines[-1].split(f"{type(error).__name__}: ", 1)[-1]
    return str(error)


def fail_or_skip(problems: list[Problem], skip_bad_data: bool, where: str) -> None:
    """Raise :class:`DatasetError` listing ``problems`` (the first few), or, with
    ``skip_bad_data``, warn once per problem and once with the count."""
    if not problems:
        return
    if not skip_bad_data:
        shown = "\n  ".join(str(p) for p in problems[:5])
        more = f"\n  ... {len(problems) - 5} more" if len(problems) > 5 else ""
        raise DatasetError(f"{len(problems)} broken item(s) in {where} ({SKIP_HINT}):\n  "
                           f"{shown}{more}")
    for p in problems:
        logger.warning("skipped %s", p)
    logger.warning("%s: skipped %d broken item(s)", where, len(problems))


def image_problem(path: str, expected_hw: tuple[int, int] | None = None) -> str | None:
    """Why ``path`` cannot be used as an image (None when it can): missing, empty, not an image,
    truncated, or (``expected_hw``) of another height and width. Decodes the whole file."""
    if not os.path.isfile(path):
        return "does not exist"
    if os.path.getsize(path) == 0:
        return "is empty (0 bytes)"
    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"cannot be decoded ({type(e).__name__}: {e})"
    if expected_hw is not None and (size[1], size[0]) != tuple(expected_hw):
        return (f"is {size[0]}x{size[1]} (width x height) but the annotation file says "
                f"{expected_hw[1]}x{expected_hw[0]}")
    return None


def check_image_files(items: Iterable[tuple[str, tuple[int, int] | None]]) -> list[Problem]:
    """Decode every ``(path, expected (height, width) or None)``; the problems found."""
    problems = []
    for path, expected in items:
        what = image_problem(path, expected)
        if what is not None:
            problems.append(Problem(path, what))
    return problems


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _box_problem(bbox: Any) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
        return f"bbox {bbox!r} is not 4 finite numbers"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"bbox {list(bbox)} is empty or degenerate"
    return None


def clean_coco(data: dict[str, Any], json_file: str, image_root: str,
               skip_bad_data: bool = False) -> tuple[dict[str, Any], bool]:
    """Cheap checks of a COCO instances dict (no image is decoded); returns the dict without
    what was dropped, and whether anything was.

    Raises:
        DatasetError: the file lacks a top-level list; or, without ``skip_bad_data``, any problem
            of the "error or skip" kind (see the module docstring), naming the files.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"annotation file {json_file} has no '{key}' list")
    problems: list[Problem] = []
    category_ids = set()
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetError(f"annotation file {json_file}: category {c!r} needs 'id' and 'name'")
        category_ids.add(c["id"])

    id_counts = Counter(e.get("id") for e in data["images"] if isinstance(e, dict))
    images, bad_ids = [], set()
    for entry in data["images"]:
        missing = [k for k in ("id", "file_name", "height", "width")
                   if not isinstance(entry, dict) or k not in entry]
        if missing:
            problems.append(Problem(json_file, f"image entry {entry!r} lacks {missing}"))
            if isinstance(entry, dict):
                bad_ids.add(entry.get("id"))
            continue
        path = os.path.join(image_root, entry["file_name"])
        if id_counts[entry["id"]] > 1:  # all are dropped: their annotations cannot be told apart
            if entry["id"] not in bad_ids:
                problems.append(Problem(json_file, f"image id {entry['id']} is used by "
                                                   f"{id_counts[entry['id']]} images ({path}, ...)"))
        elif not os.path.isfile(path):
            problems.append(Problem(path, f"does not exist (listed in {json_file})"))
        elif os.path.getsize(path) == 0:
            problems.append(Problem(path, f"is empty (0 bytes) (listed in {json_file})"))
        else:
            images.append(entry)
            continue
        bad_ids.add(entry["id"])
    kept_ids = {e["id"] for e in images} - bad_ids

    annotations, dropped = [], []
    for ann in data["annotations"]:
        missing = [k for k in ("image_id", "category_id", "bbox")
                   if not isinstance(ann, dict) or k not in ann]
        if missing:
            problems.append(Problem(json_file, f"annotation {ann!r} lacks {missing}"))
            continue
        if ann["category_id"] not in category_ids:
            problems.append(Problem(json_file, f"annotation {ann.get('id')} has category_id "
                                               f"{ann['category_id']}, not in 'categories' "
                                               f"{sorted(category_ids)}"))
            continue
        if ann["image_id"] not in kept_ids:
            if ann["image_id"] not in bad_ids:
                problems.append(Problem(json_file, f"annotation {ann.get('id')} refers to image id "
                                                   f"{ann['image_id']}, which is not in 'images'"))
            continue
        box = _box_problem(ann["bbox"])
        if box is not None:
            dropped.append(f"annotation {ann.get('id')}: {box}")
            continue
        segm = ann.get("segmentation")
        if isinstance(segm, list):
            polygons = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
            if len(polygons) < len(segm):
                dropped.append(f"annotation {ann.get('id')}: {len(segm) - len(polygons)} polygon(s) "
                               "of fewer than 3 points")
                if not polygons:
                    continue
                ann = {**ann, "segmentation": polygons}
        annotations.append(ann)

    fail_or_skip(problems, skip_bad_data, f"dataset {json_file}")
    if dropped:
        logger.warning("%s: dropped %d degenerate annotation part(s), e.g. %s", json_file,
                       len(dropped), "; ".join(dropped[:3]))
    changed = bool(problems or dropped)
    if changed:
        data = {**data, "images": [e for e in images if e["id"] in kept_ids],
                "annotations": annotations}
    return data, changed
