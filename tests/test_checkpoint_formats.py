"""Each checkpoint format, written from the reference model with random weights, loads into ours
with the same outputs; conversions round-trip (ours -> detectron2 -> stock detectron2's MViT,
ours <-> timm); the load report names a wrong head and a missing block."""
import pickle
import runpy
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import MViT as D2MViT
from safetensors.torch import save_file
from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

from mvit_backbone import MViT, create_model, load_checkpoint
from mvit_backbone.checkpoint import read_checkpoint
from mvit_backbone.checkpoint.convert import convert_checkpoint

REPO = Path(__file__).resolve().parent.parent
ATOL = 1e-5
# A slim MViTv2 (width 32, stages of 1, 2, 1, 1 blocks) at 64x64: every layout feature
# (stage boundaries inside and between stages, shortcut projections, rel-pos) at little cost.
DEPTHS = (1, 2, 1, 1)
SLIM = dict(embed_dim=32, depth=5, num_heads=1, last_block_indexes=(0, 2, 3, 4), img_size=64)
D2_ARGS = dict(SLIM, norm_layer=partial(nn.LayerNorm, eps=1e-6), rel_pos_zero_init=False,
               adaptive_window_size=8, residual_pooling=True)
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _randomize(model: nn.Module) -> nn.Module:
    """Perturb every parameter (norms, rel-pos tables included) so that each one matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _ours_classifier(num_classes: int = 7) -> nn.Module:
    return create_model("mvitv2_nano", num_classes=num_classes, **SLIM).eval()


@pytest.fixture(scope="module")
def timm_model() -> nn.Module:
    cfg = MultiScaleVitCfg(depths=DEPTHS, embed_dim=32, num_heads=1)
    return _randomize(MultiScaleVit(cfg, img_size=(64, 64), num_classes=7))


@pytest.fixture(scope="module")
def d2_model() -> nn.Module:
    torch.manual_seed(0)
    return _randomize(D2MViT(**D2_ARGS))


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err < ATOL, f"max abs diff {err}"


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_timm_files_load_with_timm_outputs(tmp_path, timm_model, suffix):
    path = tmp_path / f"mvitv2_slim{suffix}"
    state = timm_model.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif suffix == ".bin":  # the Hugging Face hub's pytorch_model.bin: a bare state dict
        torch.save(state, path)
    else:
        torch.save({"state_dict": state}, path)
    ours = _ours_classifier()
    report = load_checkpoint(ours, path)
    assert report.format == "timm" and not report.missing and not report.unexpected
    assert report.converted["stages.1.blocks.1.attn.qkv.weight"] == "blocks.2.attn.qkv.weight"
    assert report.converted["stages.2.blocks.0.shortcut_proj_attn.weight"] == "blocks.3.proj.weight"
    with torch.no_grad():
        _assert_close(ours(X), timm_model(X))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_detectron2_files_load_with_detectron2_outputs(tmp_path, d2_model, suffix):
    state = {f"backbone.bottom_up.{k}": v for k, v in d2_model.state_dict().items()}
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 16)
    path = tmp_path / f"model_final{suffix}"
    if suffix == ".pkl":  # detectron2's model zoo: numpy arrays in a plain pickle
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()},
                         "__author__": "Detectron2 Model Zoo"}, f)
    else:
        torch.save({"model": state, "iteration": 10}, path)
    ours = MViT(**D2_ARGS).eval()
    report = load_checkpoint(ours, path, strict=False)
    assert report.format == "detectron2" and not report.missing
    assert report.unexpected == ["roi_heads.box_predictor.cls_score.weight"]
    with torch.no_grad():
        expected, got = d2_model(X), ours(X)
    for name in expected:
        _assert_close(got[name], expected[name])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_official_pyth_loads(tmp_path, legacy):
    """facebookresearch/mvit writes model_state, optimizer_state, the config as a YAML string
    and the epoch; our names are the official ones, so our model stands for theirs."""
    reference = _randomize(_ours_classifier())
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "MViTv2_slim_in1k.pyth"
    torch.save({"model_state": reference.state_dict(), "optimizer_state": optimizer.state_dict(),
                "cfg": "MVIT:\n  DEPTH: 5\n", "epoch": 3}, path,
               _use_new_zipfile_serialization=not legacy)
    ours = _ours_classifier()
    report = load_checkpoint(ours, path)
    assert report.format == "official" and len(report.loaded) == len(reference.state_dict())
    with torch.no_grad():
        _assert_close(ours(X), reference(X))


def test_report_names_wrong_head_and_missing_block():
    source = _randomize(_ours_classifier(num_classes=5))
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.2.")}
    ours = _ours_classifier(num_classes=7)
    head_before = ours.head.projection.weight.clone()
    report = load_checkpoint(ours, state, strict=False)
    assert set(report.dropped) == {"head.projection.weight", "head.projection.bias"}
    assert "classifier of another class count (checkpoint [5, 256] vs model [7, 256])" in str(report)
    assert report.missing == [k for k in ours.state_dict() if k.startswith("blocks.2.")]
    assert not report.unexpected
    assert torch.equal(ours.head.projection.weight, head_before)
    assert torch.equal(ours.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    with pytest.raises(ValueError, match=r"strict loading failed:(?s:.*)missing in checkpoint "
                                         r"\(\d+\): blocks\.2\.norm1\.weight"):
        load_checkpoint(_ours_classifier(num_classes=7), state)
    # with the block present, a head of another class count alone is not an error
    report = load_checkpoint(_ours_classifier(num_classes=7), source.state_dict())
    assert set(report.dropped) == {"head.projection.weight", "head.projection.bias"}


def test_ours_to_detectron2_runs_in_stock_detectron2(tmp_path, d2_model):
    ours = MViT(**D2_ARGS).eval()
    ours.load_state_dict(d2_model.state_dict())
    src = tmp_path / "ours.safetensors"
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, src)
    for suffix in (".pth", ".pkl"):
        dst = tmp_path / f"detectron2{suffix}"
        summary = convert_checkpoint(src, dst, to="detectron2")
        assert summary["source_layout"] == "official"
        detector = nn.Module()  # the backbone where a detectron2 detector has it
        detector.backbone = nn.Module()
        detector.backbone.bottom_up = D2MViT(**D2_ARGS).eval()
        DetectionCheckpointer(detector).load(str(dst))  # stock detectron2, not our reader
        with torch.no_grad():
            expected, got = ours(X), detector.backbone.bottom_up(X)
        for name in expected:
            _assert_close(got[name], expected[name])


def test_timm_ours_timm_round_trip(tmp_path, timm_model, monkeypatch):
    timm_file = tmp_path / "timm.pth"
    torch.save(timm_model.state_dict(), timm_file)
    monkeypatch.setattr(sys, "argv", ["convert_checkpoint.py", str(timm_file)])
    runpy.run_path(str(REPO / "tools/convert_checkpoint.py"), run_name="__main__")
    ours_file = tmp_path / "timm_ours.safetensors"  # the tool's default output
    ours = _ours_classifier()
    assert not load_checkpoint(ours, ours_file).converted  # already in our names
    back = convert_checkpoint(ours_file, tmp_path / "back.safetensors", to="timm")["path"]
    original, returned = timm_model.state_dict(), read_checkpoint(back)
    assert set(returned) == set(original)
    assert all(torch.equal(returned[k], original[k]) for k in original)
    with torch.no_grad():
        _assert_close(ours(X), timm_model(X))


def test_convert_refuses_unknown_suffix(tmp_path, timm_model):
    src = tmp_path / "timm.pth"
    torch.save(timm_model.state_dict(), src)
    with pytest.raises(ValueError, match=r"out\.npz: the output suffix must be one of"):
        convert_checkpoint(src, tmp_path / "out.npz")
