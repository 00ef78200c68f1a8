"""Compile, export and mixed precision of the MViT trunk: no graph breaks, torch.export and ONNX
(onnxruntime equal to PyTorch), bf16 autocast without NaNs."""
import os

import pytest
import torch

from mvit_backbone import MViT, create_model
from mvit_backbone.export import export_onnx, onnx_max_abs_error

SMALL = dict(embed_dim=32, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3),
             adaptive_window_size=16, rel_pos_zero_init=False)


def _backbone(**kw) -> MViT:
    torch.manual_seed(0)
    return MViT(**SMALL, **kw).eval()


def _classifier(**kw):
    torch.manual_seed(0)
    return create_model("mvitv2_t", num_classes=10, embed_dim=32, depth=4, num_heads=1,
                        last_block_indexes=(0, 1, 2, 3), **kw).eval()


@pytest.mark.parametrize("train", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["eval", "train"])
def test_trunk_has_no_graph_breaks(train):
    model = _backbone(window_mode="swin").train(train)
    explain = torch._dynamo.explain(model)(torch.randn(1, 3, 160, 192))
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1


def test_torch_export_backbone_and_classifier():
    for model, x in ((_backbone(), torch.randn(1, 3, 160, 192)),
                     (_classifier(), torch.randn(2, 3, 224, 224))):
        program = torch.export.export(model, (x,))
        with torch.no_grad():
            want = model(x)
            got = program.module()(x)
        want = want if isinstance(want, dict) else {"logits": want}
        got = got if isinstance(got, dict) else {"logits": got}
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["backbone", pytest.param("classifier", marks=pytest.mark.slow)])
def test_onnx_matches_pytorch(kind, tmp_path):
    model, x = ((_backbone(), torch.randn(1, 3, 160, 192)) if kind == "backbone"
                else (_classifier(), torch.randn(1, 3, 224, 224)))
    path = os.path.join(tmp_path, f"{kind}.onnx")
    report = export_onnx(model, x, path)
    assert report.peak_rss_mib > 0 and report.file_mib > 0
    assert onnx_max_abs_error(path, model, [x, torch.randn_like(x)]) < 1e-4


def test_bf16_autocast_has_no_nans():
    model = _backbone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 384, 512) * 10)
    for name, y in out.items():
        assert torch.isfinite(y).all(), name


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hwin", "swin"])
def test_bf16_autocast_detection_size(mode):
    """MViTv2-T at 800x1333 under bf16 autocast, forward and backward: finite and close to
    fp32."""
    torch.manual_seed(0)
    from mvit_backbone.benchmark import reference_kwargs

    model = MViT(**reference_kwargs("T"), window_mode=mode).train()
    x = torch.randn(1, 3, 800, 1333)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        sum(o.float().sum() for o in out.values()).backward()
    assert all(torch.isfinite(o).all() for o in out.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        ref = model.eval()(x)
    for name in ref:
        rel = (out[name].float() - ref[name]).norm() / ref[name].norm()
        assert rel < 0.05, (name, rel.item())


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    model = _backbone(window_mode="hwin")
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(1, 3, 160, 192)
    with torch.no_grad():
        want, got = model(x), compiled(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["backbone", "classifier"])
def test_onnx_full_size_models(kind, tmp_path):
    """MViTv2-T classifier at 224² and MViTv2-T backbone at 512²: onnxruntime equals PyTorch."""
    from mvit_backbone.benchmark import build_model

    torch.manual_seed(0)
    if kind == "backbone":
        model, x = build_model("ours", "T"), torch.randn(1, 3, 512, 512)
    else:
        model, x = create_model("mvitv2_t"), torch.randn(1, 3, 224, 224)
    path = os.path.join(tmp_path, f"{kind}.onnx")
    export_onnx(model, x, path)
    assert onnx_max_abs_error(path, model, [x]) < 1e-4
