"""COCO-format datasets on disk: registration with detectron2 (with the cheap checks of
:mod:`mvit_backbone.data.checks`), the ``--check-data`` pass, and the training mapper that names
(or skips) an image it cannot read."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Callable, Iterable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..checkpoint import atomic_write_text
from ..data.checks import (
    SKIP_HINT,
    DatasetError,
    Problem,
    SkipCounter,
    check_image_files,
    clean_coco,
    fail_or_skip,
)

logger = logging.getLogger("mvit_backbone.data")


def read_coco_json(json_file: str, dataset_name: str) -> dict[str, Any]:
    """The json of a COCO instances file; :class:`DatasetError` naming it if it is missing or
    not json."""
    if not os.path.isfile(json_file):
        raise DatasetError(f"dataset {dataset_name!r}: annotation file {json_file} does not exist")
    try:
        with open(json_file) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(
            f"dataset {dataset_name!r}: annotation file {json_file} is not valid json: {e}"
        ) from e
    if not isinstance(content, dict):
        raise DatasetError(f"dataset {dataset_name!r}: annotation file {json_file} does not hold "
                           "a COCO object")
    return content


def _cleaned_json_path(json_file: str) -> str:
    """Where the cleaned copy of ``json_file`` goes (beside nothing of the user's data)."""
    stat = os.stat(json_file)
    key = f"{os.path.abspath(json_file)}:{stat.st_mtime_ns}:{stat.st_size}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), "mvit_backbone_cleaned_coco")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{os.path.splitext(os.path.basename(json_file))[0]}-{digest}.json")


def load_coco_instances(json_file: str, image_root: str, dataset_name: str) -> list[dict]:
    """detectron2's ``load_coco_json``, with a :class:`DatasetError` (a ``ValueError``) naming
    the file when it is unusable."""
    try:
        return load_coco_json(json_file, image_root, dataset_name)
    except (KeyError, TypeError, AssertionError) as e:
        raise DatasetError(
            f"dataset {dataset_name!r}: annotation file {json_file} has a malformed entry: "
            f"{type(e).__name__}: {e}"
        ) from e


def register_coco_dataset(name: str, json_file: str, image_root: str,
                          skip_bad_data: bool = False) -> None:
    """Register a COCO-format instance dataset (as ``register_coco_instances`` does), after the
    cheap checks of :func:`~mvit_backbone.data.checks.clean_coco` (fields, ids, categories,
    image files present and non-empty; no image is decoded).

    With ``skip_bad_data`` the broken entries are dropped (one warning each, and a count) and a
    cleaned copy of the json is what detectron2 reads and evaluates against. Registering a name
    twice replaces the earlier entry.

    Raises:
        DatasetError: the annotation file is missing or not COCO json, or (without
            ``skip_bad_data``) it has broken entries; the message names the files.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    content = read_coco_json(json_file, name)
    try:
        content, changed = clean_coco(content, json_file, image_root, skip_bad_data)
    except DatasetError as e:
        raise DatasetError(f"dataset {name!r}: {e}") from None
    source = json_file
    if changed:
        source = _cleaned_json_path(json_file)
        atomic_write_text(source, json.dumps(content))
        logger.info("dataset %r: reading the cleaned copy %s of %s", name, source, json_file)
    del content
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_instances(source, image_root, name))
    MetadataCatalog.get(name).set(json_file=source, image_root=image_root,
                                  evaluator_type="coco")


def register_coco_datasets(specs: Iterable[Sequence[str]] | None,
                           skip_bad_data: bool = False) -> list[str]:
    """Register each ``(name, json_file, image_root)``; returns the registered names."""
    names = []
    for spec in specs or ():
        if len(spec) != 3:
            raise ValueError(f"a COCO dataset is (name, json_file, image_root), got {spec!r}")
        register_coco_dataset(*spec, skip_bad_data=skip_bad_data)
        names.append(spec[0])
    return names


def check_datasets(names: Iterable[str]) -> list[Problem]:
    """The ``--check-data`` pass: decode every image of the registered datasets ``names`` and
    compare its size with the dataset's; returns the problems (each names the image)."""
    problems = []
    for name in names:
        dicts = DatasetCatalog.get(name)
        logger.info("checking %d images of dataset %r", len(dicts), name)
        problems += check_image_files(
            (d["file_name"], (d["height"], d["width"]) if "height" in d and "width" in d else None)
            for d in dicts
        )
    return problems


def report_checked_datasets(names: Sequence[str], skip_bad_data: bool) -> list[Problem]:
    """Run :func:`check_datasets`; raise naming the files unless ``skip_bad_data`` (then the
    training mapper skips them when it meets them). Returns the problems."""
    problems = check_datasets(names)
    fail_or_skip(problems, skip_bad_data, f"dataset(s) {', '.join(names)}")
    if not problems:
        logger.info("data check: every image of %s decodes with the size its dataset says",
                    ", ".join(names))
    return problems


class GuardedMapper:
    """A training mapper (detectron2's ``DatasetMapper``) whose failures on an image name it.

    An image that cannot be read or disagrees with its recorded size raises
    :class:`DatasetError` naming the file, or with ``skip_bad_data`` is skipped (one warning per
    file; detectron2's training loader then takes another image) and counted in ``skipped``.
    """

    def __init__(self, mapper: Callable[[dict], dict], skip_bad_data: bool = False):
        self.mapper, self.skip_bad_data = mapper, skip_bad_data
        self.skipped = SkipCounter()

    def __call__(self, dataset_dict: dict) -> dict | None:
        try:
            return self.mapper(dataset_dict)
        except (OSError, SyntaxError, ValueError) as e:  # SizeMismatchError is a ValueError
            problem = Problem(str(dataset_dict.get("file_name")),
                              f"cannot be used ({type(e).__name__}: {e})")
            if not self.skip_bad_data:
                raise DatasetError(f"{problem}; {SKIP_HINT}") from e
            self.skipped.skip(problem)
            return None
