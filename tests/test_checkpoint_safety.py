"""No weights file runs code: a pickle whose ``__reduce__`` would create a marker file is refused,
with an error naming the file, by every entry point that reads weights (the library functions
and the command-line tools run in this process), and damaged files get one clear error."""
import json
import pickle
import runpy
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from mvit_backbone import create_model, load_checkpoint
from mvit_backbone.checkpoint import CheckpointReadError, SafeDetectionCheckpointer, read_checkpoint
from mvit_backbone.data.image_folder import write_synthetic_image_folder

REPO = Path(__file__).resolve().parent.parent
DETECTOR_CONFIG = "configs/COCO-InstanceSegmentation/mask_rcnn_mvitv2_t_3x.py"
# a slim trunk keeps building the detector fast; the loading code is the same
SLIM_DETECTOR = [
    "train.device=cpu", "model.backbone.bottom_up.embed_dim=16", "model.backbone.bottom_up.depth=4",
    "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]", "model.roi_heads.num_classes=2",
    "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
    "dataloader.train.total_batch_size=1",
    "dataloader.train.dataset.names=ckpt_tiny", "dataloader.test.dataset.names=ckpt_tiny",
]


class CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears if the payload runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_hostile(path: Path, marker: Path, kind: str) -> Path:
    """A weights file with the payload beside real weights, in the serialisation ``kind``."""
    weights = {"patch_embed.proj.weight": torch.zeros(8, 3, 7, 7)}
    if kind == "pkl":  # detectron2 model-zoo style: numpy arrays in a plain pickle
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in weights.items()},
                         "__author__": CreatesMarker(marker)}, f)
    elif kind == "legacy":
        torch.save({"model": weights, "extra": CreatesMarker(marker)}, path,
                   _use_new_zipfile_serialization=False)
    elif kind == "pyth":  # official layout: model_state plus a pickled config object
        torch.save({"model_state": weights, "cfg": CreatesMarker(marker)}, path)
    else:
        torch.save({"model": weights, "extra": CreatesMarker(marker)}, path)
    return path


HOSTILE_KINDS = {  # file name -> serialisation
    "model.pkl": "pkl", "model.pth": "zip", "model.pt": "zip", "MViTv2_T_in1k.pyth": "pyth",
    "legacy.pth": "legacy", "legacy.pyth": "legacy",
}


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload_ran"


def test_the_payload_runs_when_unpickled_plainly(tmp_path, marker):
    """The control: the hostile files really create the marker under a plain unpickler."""
    path = write_hostile(tmp_path / "model.pkl", marker, "pkl")
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("name", HOSTILE_KINDS)
def test_load_checkpoint_and_detectron2_checkpointer_refuse(tmp_path, marker, name):
    path = write_hostile(tmp_path / name, marker, HOSTILE_KINDS[name])
    with pytest.raises(CheckpointReadError, match=rf"{name} is refused: .*global (io|builtins)\.open"):
        load_checkpoint(create_model("mvitv2_nano"), path)
    with pytest.raises(CheckpointReadError, match=rf"{name} is refused"):
        SafeDetectionCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert not marker.exists()


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> Path:
    """Two 64x96 images with one box each, registered as ``ckpt_tiny``."""
    from mvit_backbone.engine import register_coco_dataset

    root = tmp_path_factory.mktemp("coco")
    images, annotations = [], []
    for i in range(2):
        Image.new("RGB", (96, 64), (40 * i, 90, 140)).save(root / f"{i}.jpg")
        images.append(dict(id=i + 1, file_name=f"{i}.jpg", width=96, height=64))
        annotations.append(dict(id=i + 1, image_id=i + 1, category_id=1, iscrowd=0,
                                bbox=[10, 10, 30, 20], area=600,
                                segmentation=[[10, 10, 40, 10, 40, 30, 10, 30]]))
    (root / "instances.json").write_text(json.dumps(dict(
        images=images, annotations=annotations, categories=[dict(id=1, name="box")])))
    register_coco_dataset("ckpt_tiny", str(root / "instances.json"), str(root))
    return root


def _run_tool(script: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(REPO / script), run_name="__main__")


def _lazy_args(tiny_coco: Path, out: Path, *extra: str) -> list[str]:
    return ["--config-file", str(REPO / DETECTOR_CONFIG), "--debug",
            "--register-coco", "ckpt_tiny", str(tiny_coco / "instances.json"), str(tiny_coco),
            *extra, *SLIM_DETECTOR, f"train.output_dir={out}", "train.max_iter=1"]


def test_predict_tool_refuses(tmp_path, marker, tiny_coco, monkeypatch):
    weights = write_hostile(tmp_path / "model_final.pth", marker, "zip")
    argv = ["--config-file", str(REPO / DETECTOR_CONFIG), "--weights", str(weights), "--debug",
            "--output", str(tmp_path / "out"), str(tiny_coco / "0.jpg"), *SLIM_DETECTOR]
    with pytest.raises(CheckpointReadError, match="model_final.pth is refused"):
        _run_tool("tools/predict.py", argv, monkeypatch)
    assert not marker.exists()


def test_lazyconfig_eval_only_and_init_checkpoint_refuse(tmp_path, marker, tiny_coco, monkeypatch):
    weights = write_hostile(tmp_path / "model_final.pkl", marker, "pkl")
    for mode in (["--eval-only"], []):  # --eval-only, then training from init_checkpoint
        with pytest.raises(CheckpointReadError, match="model_final.pkl is refused"):
            _run_tool("tools/lazyconfig_train_net.py",
                      _lazy_args(tiny_coco, tmp_path / "out", *mode,
                                 f"train.init_checkpoint={weights}"), monkeypatch)
    assert not marker.exists()


def test_lazyconfig_resume_refuses(tmp_path, marker, tiny_coco, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    write_hostile(out / "model_0000009.pth", marker, "legacy")
    (out / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(CheckpointReadError, match="model_0000009.pth is refused"):
        _run_tool("tools/lazyconfig_train_net.py", _lazy_args(tiny_coco, out, "--resume"),
                  monkeypatch)
    # last_checkpoint may not lead out of the output folder
    elsewhere = write_hostile(tmp_path / "elsewhere.pth", marker, "zip")
    (out / "last_checkpoint").write_text(str(elsewhere))
    with pytest.raises(CheckpointReadError, match="may only name a checkpoint file in"):
        _run_tool("tools/lazyconfig_train_net.py", _lazy_args(tiny_coco, out, "--resume"),
                  monkeypatch)
    assert not marker.exists()


def test_train_imagenet_weights_and_resume_refuse(tmp_path, marker, monkeypatch):
    data = write_synthetic_image_folder(tmp_path / "data", train_per_class=2, val_per_class=1,
                                        image_size=32, num_classes=2, seed=0)
    common = ["--data-dir", str(data), "--output-dir", str(tmp_path / "out"), "--epochs", "1",
              "--batch-size", "2", "--set", "model=mvitv2_nano", "--set", "img_size=32",
              "--set", "num_workers=0"]
    weights = write_hostile(tmp_path / "weights.pyth", marker, "pyth")
    # the entry point ends with the one-line message (SystemExit), not a traceback
    with pytest.raises(SystemExit, match="error: .*weights.pyth is refused"):
        _run_tool("projects/MViTv2/train_imagenet.py", [*common, "--weights", str(weights)],
                  monkeypatch)
    resume = write_hostile(tmp_path / "checkpoint_last.pth", marker, "zip")
    with pytest.raises(SystemExit, match="error: .*checkpoint_last.pth is refused"):
        _run_tool("projects/MViTv2/train_imagenet.py", [*common, "--resume", str(resume)],
                  monkeypatch)
    assert not marker.exists()


# ------------------------------------------------------------------ damaged and foreign files


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


DAMAGED = {
    "empty.pth": (b"", "the file is empty"),
    "config.pth": (b'{"model": {"w": [1, 2]}}', "not a PyTorch, pickle or safetensors file"),
    "truncated.pkl": (pickle.dumps({"w": np.zeros(64)}, protocol=2)[:60], "pickle data was truncated"),
    "huge_header.safetensors": (struct.pack("<Q", 2**60) + b"{}", "header declares 1152921504606846976 bytes"),
    "lying.safetensors": (_safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}, b"\0" * 16),
        "tensor 'w' .* declares bytes 0..4398046511104 but the file holds 16 bytes"),
    "bad_json.safetensors": (struct.pack("<Q", 4) + b"{no}", "header is not JSON"),
}


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_files_get_one_error_naming_them(tmp_path, name):
    content, problem = DAMAGED[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointReadError, match=rf"{name} cannot be read: .*{problem}"):
        read_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_absurd_declared_tensor_size_is_refused_without_allocating(tmp_path, legacy):
    """The pickle inside declares 2**31 - 2**24 floats (8 GB) for a 4-float storage."""
    import resource
    import zipfile

    small, bad = tmp_path / "small.pth", tmp_path / "absurd.pth"
    torch.save({"w": torch.zeros(4)}, small, _use_new_zipfile_serialization=not legacy)
    declared = b"J\x00\x00\x00\x7f"  # BININT 0x7f000000
    if legacy:
        data = small.read_bytes()
        bad.write_bytes(data.replace(b"cpuq\x06K\x04N", b"cpuq\x06" + declared + b"N"))
    else:
        with zipfile.ZipFile(small) as src, zipfile.ZipFile(bad, "w") as dst:
            for name in src.namelist():
                data = src.read(name)
                if name.endswith("data.pkl"):
                    data = data.replace(b"cpuq\x06K\x04", b"cpuq\x06" + declared)
                dst.writestr(name, data)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointReadError, match="absurd.pth cannot be read: damaged or truncated"):
        read_checkpoint(bad)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 512 * 1024  # KiB


def test_truncated_torch_file_through_init_checkpoint(tmp_path):
    from mvit_backbone.engine import load_weights

    path = tmp_path / "truncated.pth"
    torch.save(create_model("mvitv2_nano").state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointReadError, match="truncated.pth cannot be read: damaged or truncated"):
        load_weights(create_model("mvitv2_nano"), str(path))


def test_our_saved_checkpoints_load_with_weights_only(tmp_path):
    """Detection trainer checkpoints (model, optimizer, scheduler, iteration) are plain."""
    from detectron2.engine import SimpleTrainer, hooks
    from detectron2.solver import LRMultiplier
    from fvcore.common.param_scheduler import CosineParamScheduler

    model = create_model("mvitv2_nano", num_classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.zero_grad()
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    optimizer.step()
    trainer = SimpleTrainer(model, [], optimizer)
    trainer.register_hooks([hooks.LRScheduler(optimizer, LRMultiplier(
        optimizer, CosineParamScheduler(1, 0), max_iter=10))])
    SafeDetectionCheckpointer(model, str(tmp_path), trainer=trainer).save("model_0000000", iteration=0)
    saved = torch.load(tmp_path / "model_0000000.pth", weights_only=True)
    assert set(saved) == {"model", "trainer", "iteration"}
    assert saved["trainer"]["optimizer"]["state"]
    assert saved["trainer"]["hooks"]["LRScheduler"]["base_lrs"] == [1e-3]
