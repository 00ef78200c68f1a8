"""load_checkpoint: formats, prefixes, interpolation, reports and clear errors."""
import pickle

import pytest
import timm
import torch

from mvit_backbone import MViT, create_model, load_checkpoint, mvitv2_variant


@pytest.fixture(scope="module")
def timm_tiny():
    torch.manual_seed(0)
    return timm.create_model("mvitv2_tiny").eval()


def test_timm_checkpoint_file_converts_and_matches(tmp_path, timm_tiny):
    path = tmp_path / "timm_tiny.pth"
    torch.save({"state_dict": timm_tiny.state_dict()}, path)
    ours = create_model("mvitv2_t").eval()
    report = load_checkpoint(ours, str(path))
    assert report.format == "timm"
    assert report.converted["stages.2.blocks.1.attn.qkv.weight"] == "blocks.4.attn.qkv.weight"
    assert report.converted["head.fc.weight"] == "head.projection.weight"
    assert not report.missing and not report.unexpected
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), timm_tiny(x), atol=1e-4, rtol=0)


def test_official_pyth_with_pickled_config(tmp_path):
    torch.manual_seed(0)
    src = create_model("mvitv2_t", num_classes=10)
    path = tmp_path / "MViTv2_T_in1k.pyth"
    # official checkpoints carry the training config next to the weights
    torch.save({"model_state": src.state_dict(), "cfg": {"MVIT": {"DEPTH": 10}}, "epoch": 3}, path)
    dst = create_model("mvitv2_t", num_classes=10)
    report = load_checkpoint(dst, str(path))
    assert report.format == "official" and len(report.loaded) == len(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_classifier_into_detection_backbone_and_detectron2_prefix(tmp_path):
    torch.manual_seed(0)
    clf = create_model("mvitv2_t")
    backbone = MViT(**mvitv2_variant("T"))
    with pytest.raises(ValueError, match="strict loading failed"):
        load_checkpoint(backbone, clf.state_dict())
    report = load_checkpoint(backbone, clf.state_dict(), strict=False)
    assert set(report.unexpected) == {"norm.weight", "norm.bias", "head.projection.weight",
                                      "head.projection.bias"}
    assert report.missing == [f"scale{s}_norm.{p}" for s in (2, 3, 4, 5) for p in ("weight", "bias")]
    assert torch.equal(backbone.blocks[3].attn.rel_pos_h, clf.blocks[3].attn.rel_pos_h)

    # a detectron2 detection checkpoint (.pkl of numpy arrays under "model") into a bare backbone
    d2_state = {f"backbone.bottom_up.{k}": v.numpy() for k, v in backbone.state_dict().items()}
    d2_state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 1024).numpy()
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": d2_state, "__author__": "test"}, f)
    fresh = MViT(**mvitv2_variant("T"))
    report = load_checkpoint(fresh, str(path), strict=False)
    assert report.unexpected == ["roi_heads.box_predictor.cls_score.weight"]
    assert not report.missing
    assert torch.equal(fresh.scale3_norm.weight, backbone.scale3_norm.weight)


def test_rel_pos_and_abs_pos_interpolated_for_new_resolution():
    torch.manual_seed(0)
    src = create_model("mvitv1_b16", num_classes=5)
    dst = create_model("mvitv1_b16", num_classes=5, img_size=320, pretrain_img_size=320)
    report = load_checkpoint(dst, src.state_dict())
    assert report.interpolated["pos_embed"] == ((1, 1 + 56 * 56, 96), (1, 1 + 80 * 80, 96))
    src2 = create_model("mvitv2_t", num_classes=5)
    dst2 = create_model("mvitv2_t", num_classes=5, img_size=384)
    report2 = load_checkpoint(dst2, src2.state_dict())
    assert report2.interpolated["blocks.0.attn.rel_pos_h"] == ((111, 96), (191, 96))
    assert "rel_pos_h" in str(report2)
    with torch.no_grad():
        assert torch.isfinite(dst2(torch.randn(1, 3, 384, 384))).all()


class TestBadCheckpoints:
    def test_missing_file(self, tmp_path):
        path = tmp_path / "nope.pth"
        with pytest.raises(ValueError, match=f"checkpoint file not found: {path}"):
            load_checkpoint(create_model("mvitv2_t"), str(path))

    def test_corrupt_file(self, tmp_path):
        path = tmp_path / "broken.pth"
        path.write_bytes(b"\x80\x02this is not a checkpoint")
        with pytest.raises(ValueError, match="broken.pth cannot be read: broken pickle"):
            load_checkpoint(create_model("mvitv2_t"), str(path))

    def test_not_an_mvit(self):
        with pytest.raises(ValueError, match="no MViT weights found"):
            load_checkpoint(create_model("mvitv2_t"), {"model": {"conv1.weight": torch.zeros(3)}})

    def test_no_state_dict(self):
        with pytest.raises(ValueError, match="holds no state dict"):
            load_checkpoint(create_model("mvitv2_t"), {"epoch": 3, "cfg": {"a": 1}})

    def test_wrong_width(self):
        wide = create_model("mvitv2_t", num_classes=10, embed_dim=64)
        with pytest.raises(ValueError, match=r"(?s)does not fit the model.*patch_embed.proj.weight: "
                           r"checkpoint \[64, 3, 7, 7\] vs model \[96, 3, 7, 7\].*and \d+ more"):
            load_checkpoint(create_model("mvitv2_t", num_classes=10), wide.state_dict())
