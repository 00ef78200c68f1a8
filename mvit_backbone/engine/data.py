"""COCO-format datasets on disk: registration with detectron2 and clear errors for bad files."""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json


def load_coco_instances(json_file: str, image_root: str, dataset_name: str) -> list[dict]:
    """detectron2's ``load_coco_json``, with a ``ValueError`` naming the file when it is unusable.

    Raises:
        ValueError: the json is missing, is not valid json, or lacks the COCO instance keys
            (``images``, ``annotations``, ``categories``).
    """
    if not os.path.isfile(json_file):
        raise ValueError(f"dataset {dataset_name!r}: annotation file {json_file} does not exist")
    try:
        with open(json_file) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"dataset {dataset_name!r}: annotation file {json_file} is not valid json: {e}"
        ) from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(content, dict)
               or k not in content]
    if missing:
        raise ValueError(
            f"dataset {dataset_name!r}: annotation file {json_file} is not in COCO instance "
            f"format: missing key(s) {missing}"
        )
    del content
    try:
        return load_coco_json(json_file, image_root, dataset_name)
    except (KeyError, TypeError, AssertionError) as e:
        raise ValueError(
            f"dataset {dataset_name!r}: annotation file {json_file} has a malformed entry: "
            f"{type(e).__name__}: {e}"
        ) from e


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instance dataset (as ``register_coco_instances`` does).

    The json is read when the dataset is first used; problems then raise a ``ValueError`` that
    names the file. Registering a name twice replaces the earlier entry.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_instances(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco")


def register_coco_datasets(specs: Iterable[Sequence[str]] | None) -> list[str]:
    """Register each ``(name, json_file, image_root)``; returns the registered names."""
    names = []
    for spec in specs or ():
        if len(spec) != 3:
            raise ValueError(f"a COCO dataset is (name, json_file, image_root), got {spec!r}")
        register_coco_dataset(*spec)
        names.append(spec[0])
    return names
