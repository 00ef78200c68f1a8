"""The synthetic COCO writer of the demo: valid COCO files, sane contents, clear errors."""
from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from mvit_backbone.data import (
    SHAPE_CLASSES,
    DatasetError,
    ShapesConfig,
    render_scene,
    validate_coco_split,
    write_coco_split,
)
from mvit_backbone.data.coco_synthetic import split_paths


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    json_path = write_coco_split(root, "val", num_images=16, seed=3)
    return root, json_path


def test_split_loads_in_pycocotools_with_valid_annotations(split):
    root, json_path = split
    coco = COCO(str(json_path))
    cfg = ShapesConfig()
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    assert len(SHAPE_CLASSES) >= 3
    assert len(coco.getImgIds()) == 16
    per_image = Counter(a["image_id"] for a in coco.dataset["annotations"])
    for img in coco.loadImgs(coco.getImgIds()):
        h, w = img["height"], img["width"]
        assert cfg.height_range[0] <= h <= cfg.height_range[1]
        assert cfg.width_range[0] <= w <= cfg.width_range[1]
        assert 1 <= per_image[img["id"]] <= 6, img
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            for poly in ann["segmentation"]:
                xy = np.asarray(poly).reshape(-1, 2)
                assert len(xy) >= 3
                assert xy.min() >= 0 and (xy[:, 0] <= w - 1).all() and (xy[:, 1] <= h - 1).all()
            mask = coco.annToMask(ann)
            assert mask.shape == (h, w)
            assert mask.sum() == pytest.approx(ann["area"], rel=0.02)
            x, y, bw, bh = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min()) == (x, y)
            assert (xs.max() + 1, ys.max() + 1) == (x + bw, y + bh)
    # sizes, classes and instance counts vary
    assert len({(i["height"], i["width"]) for i in coco.dataset["images"]}) > 8
    assert set(Counter(a["category_id"] for a in coco.dataset["annotations"])) == {1, 2, 3, 4}
    assert len(set(per_image.values())) >= 3
    assert validate_coco_split(json_path, root / "val")["images"]


def test_masks_are_disjoint_visible_parts(split):
    """Later shapes occlude earlier ones: visible masks of one image do not overlap."""
    _, json_path = split
    coco = COCO(str(json_path))
    for img_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))]
        total = np.sum(masks, axis=0)
        assert (total > 1).sum() <= 0.01 * (total > 0).sum()


def test_some_shapes_overlap_and_are_cut_by_others():
    """Occlusion happens: some instance's visible mask is smaller than its convex hull."""
    rng = np.random.default_rng(0)
    occluded = 0
    for _ in range(20):
        _, instances = render_scene(rng)
        for inst in instances:
            ys, xs = np.nonzero(inst.mask)
            pts = np.stack([xs, ys], 1).astype(np.float32)
            hull = cv2.convexHull(pts)
            if inst.mask.sum() < 0.8 * cv2.contourArea(hull):
                occluded += 1
    assert occluded >= 3


def test_same_seed_same_split(tmp_path):
    a = write_coco_split(tmp_path / "a", "train", 3, seed=7)
    b = write_coco_split(tmp_path / "b", "train", 3, seed=7)
    c = write_coco_split(tmp_path / "c", "train", 3, seed=8)
    ann = lambda p: json.loads(p.read_text())["annotations"]  # noqa: E731
    assert ann(a) == ann(b)
    assert ann(a) != ann(c)


def test_corrupt_image_is_named(tmp_path):
    json_path = write_coco_split(tmp_path, "val", 3, seed=1)
    _, image_dir = split_paths(tmp_path, "val")
    bad = image_dir / "000002.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetError, match="000002.jpg.*corrupt"):
        validate_coco_split(json_path, image_dir)


def test_missing_image_is_named(tmp_path):
    json_path = write_coco_split(tmp_path, "val", 2, seed=1)
    (tmp_path / "val" / "000001.jpg").unlink()
    with pytest.raises(DatasetError, match="000001.jpg.*does not exist"):
        validate_coco_split(json_path, tmp_path / "val")


def test_broken_json_is_named(tmp_path):
    json_path = write_coco_split(tmp_path, "val", 2, seed=1)
    json_path.write_text(json_path.read_text()[:-40])
    with pytest.raises(DatasetError, match=r"val\.json is not valid JSON"):
        validate_coco_split(json_path, tmp_path / "val")
    json_path.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match=r"val\.json has no 'annotations'"):
        validate_coco_split(json_path, tmp_path / "val")


def test_polygon_outside_image_is_reported(tmp_path):
    json_path = write_coco_split(tmp_path, "val", 2, seed=1)
    data = json.loads(json_path.read_text())
    data["annotations"][0]["segmentation"][0][0] = 10_000.0
    json_path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="polygon outside its image"):
        validate_coco_split(json_path, tmp_path / "val")
