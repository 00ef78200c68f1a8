"""The synthetic ImageFolder writer and the dataset's handling of unreadable files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvit_backbone.classification.train import CorruptImageError, build_dataset, load_rgb
from mvit_backbone.data.image_folder import CLASSES, write_synthetic_image_folder


def test_writes_real_image_folder(tmp_path: Path) -> None:
    root = write_synthetic_image_folder(tmp_path / "syn", train_per_class=3, val_per_class=2,
                                        image_size=40, seed=7)
    assert len(CLASSES) >= 10
    for split, n in (("train", 3), ("val", 2)):
        dirs = sorted(p.name for p in (root / split).iterdir())
        assert dirs == sorted(CLASSES)
        for d in dirs:
            files = sorted((root / split / d).glob("*.png"))
            assert len(files) == n
            with Image.open(files[0]) as im:
                assert im.format == "PNG" and im.size == (40, 40) and im.mode == "RGB"
    ds = build_dataset(root, "train", transform=None)
    assert len(ds) == 3 * len(CLASSES) and ds.classes == sorted(CLASSES)


def test_deterministic_and_reused(tmp_path: Path) -> None:
    a = write_synthetic_image_folder(tmp_path / "a", 2, 1, image_size=32, num_classes=4, seed=3)
    b = write_synthetic_image_folder(tmp_path / "b", 2, 1, image_size=32, num_classes=4, seed=3)
    f = Path("train") / CLASSES[2] / "00001.png"
    assert np.array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f)))
    stamp = (a / f).stat().st_mtime_ns
    write_synthetic_image_folder(tmp_path / "a", 2, 1, image_size=32, num_classes=4, seed=3)
    assert (a / f).stat().st_mtime_ns == stamp  # same spec: nothing rewritten


def test_relation_classes_differ_only_in_layout(tmp_path: Path) -> None:
    """'left of' and 'right of' images hold the same red and blue objects: mean colour alone
    cannot separate them (class means within a few levels), layout can (red centroid x)."""
    root = write_synthetic_image_folder(tmp_path / "s", 40, 1, image_size=48, num_classes=2, seed=0)

    def stats(cls: str) -> tuple[np.ndarray, float]:
        means, xs = [], []
        for p in sorted((root / "train" / cls).glob("*.png")):
            a = np.asarray(Image.open(p)).astype(np.float32)
            red = (a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)
            xs.append(np.nonzero(red)[1].mean() - np.nonzero((a[..., 2] > 180) & (a[..., 0] < 80))[1].mean())
            means.append(a.mean(axis=(0, 1)))
        return np.mean(means, axis=0), float(np.mean(np.array(xs) < 0))

    mean_left, frac_left_l = stats(CLASSES[0])
    mean_right, frac_left_r = stats(CLASSES[1])
    assert np.abs(mean_left - mean_right).max() < 12
    assert frac_left_l == 1.0 and frac_left_r == 0.0


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = write_synthetic_image_folder(tmp_path / "c", 2, 1, image_size=32, num_classes=2, seed=0)
    bad = root / "val" / CLASSES[1] / "00000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ds = build_dataset(root, "val", transform=None)
    ds[0]  # the good file still loads
    with pytest.raises(CorruptImageError, match=str(bad)):
        ds[1]
    with pytest.raises(CorruptImageError, match="00000.png"):
        load_rgb(str(bad))
