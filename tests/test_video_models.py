"""Video models: parity with torchvision's and pytorchvideo's MViT, PySlowFast files, parameters
and FLOPs against the papers, 2-D -> 3-D inflation, any clip size, and the kernel policies.

Reference models get random weights; ours load them through ``load_checkpoint`` from a file on
disk (format auto-detected), so both compute the same function. The parity the papers' models
are checked at (16 x 224², batch 2) is slow on CPU and marked ``slow``; the same models and
weights are also compared at a small clip (4 x 64²) in the default run.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis, parameter_count
from pytorchvideo.models.vision_transformers import create_multiscale_vision_transformers

from mvit_backbone import create_model, list_models, load_checkpoint
from mvit_backbone.benchmark import build_video_model
from mvit_backbone.video import VIDEO_MODELS
from test_classification_complexity import within_printed
from test_flops import gflops, uncounted_attention
from test_kernels import _AsDict, _assert_policies_agree

NUM_CLASSES = 10


def torchvision_model(name: str, frames: int, size: int) -> nn.Module:
    """torchvision's counterpart of our ``name`` with random weights, for clips frames x size²
    (torchvision builds 16 x 224²; its v2 runs other clips on its own interpolated rel-pos)."""
    torch.manual_seed(0)
    if (frames, size) == (16, 224) or name == "mvitv2_s_16x4":
        return build_video_model("torchvision", name, frames, size, NUM_CLASSES).eval()
    # mvit_v1_b has absolute positions of 16 x 224²: build the same blocks for another clip
    from unittest import mock

    import torchvision.models.video.mvit as tv_mvit

    build = tv_mvit._mvit

    def sized(**kwargs):
        return build(**dict(kwargs, spatial_size=(size, size), temporal_size=frames))

    with mock.patch.object(tv_mvit, "_mvit", sized):
        return tv_mvit.mvit_v1_b(num_classes=NUM_CLASSES).eval()


def pytorchvideo_mvit_b(frames: int, size: int) -> nn.Module:
    """pytorchvideo's MViT-B 16x4 (the configuration of its docstring and model zoo)."""
    torch.manual_seed(0)
    return create_multiscale_vision_transformers(
        spatial_size=size, temporal_size=frames,
        embed_dim_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
        atten_head_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
        pool_q_stride_size=[[1, 1, 2, 2], [3, 1, 2, 2], [14, 1, 2, 2]],
        pool_kv_stride_adaptive=[1, 8, 8], pool_kvq_kernel=[3, 3, 3],
        head_num_classes=NUM_CLASSES,
    ).eval()


# reference name -> (build the reference, our model name, extra arguments of ours)
REFERENCES = {
    # built for 16 x 224² (rel-pos tables of that grid), run at any clip, as ours
    "torchvision mvit_v2_s": (lambda t, s: torchvision_model("mvitv2_s_16x4", t, s), "mvitv2_s_16x4",
                              {"num_frames": 16, "img_size": 224}),
    "torchvision mvit_v1_b": (lambda t, s: torchvision_model("mvitv1_b_16x4", t, s), "mvitv1_b_16x4", {}),
    # pytorchvideo normalises the pooled Q/K/V with nn.LayerNorm's default eps (1e-5, the
    # blocks' norms 1e-6); ours is built the same way
    "pytorchvideo MViT-B 16x4": (pytorchvideo_mvit_b, "mvitv1_b_16x4",
                                 {"pool_norm_layer": nn.LayerNorm}),
}
FORMATS = {"torchvision mvit_v2_s": "torchvision", "torchvision mvit_v1_b": "torchvision",
           "pytorchvideo MViT-B 16x4": "pytorchvideo"}


def ours_for(name: str, frames: int, size: int, **kwargs) -> nn.Module:
    """Our model built for clips of ``frames`` x ``size``² (``kwargs`` may say otherwise)."""
    kwargs = dict(dict(num_frames=frames, img_size=size), **kwargs)
    return create_model(name, num_classes=NUM_CLASSES, **kwargs).eval()


def assert_parity(reference_name: str, frames: int, size: int, batch: int, tmp_path) -> None:
    build, name, extra = REFERENCES[reference_name]
    reference = build(frames, size)
    path = tmp_path / "reference.pth"
    torch.save(reference.state_dict(), path)
    ours = ours_for(name, frames, size, **extra)
    report = load_checkpoint(ours, path, strict=True)
    assert report.format == FORMATS[reference_name]
    assert not report.interpolated and not report.inflated
    x = torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == (batch, NUM_CLASSES)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_video_models_are_registered_with_create_model():
    assert set(VIDEO_MODELS) <= set(list_models())
    model = create_model("mvitv2_video_nano", num_classes=7)
    assert model(torch.randn(2, 3, 8, 64, 64)).shape == (2, 7)


# the default run checks mvit_v1_b's logits through the PySlowFast file test below
@pytest.mark.parametrize("reference_name", [
    "torchvision mvit_v2_s",
    pytest.param("torchvision mvit_v1_b", marks=pytest.mark.slow),
    "pytorchvideo MViT-B 16x4",
])
def test_logits_equal_reference_on_a_small_clip(reference_name, tmp_path):
    assert_parity(reference_name, frames=4, size=64, batch=2, tmp_path=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("reference_name", list(REFERENCES))
def test_logits_equal_reference_16x224_batch2(reference_name, tmp_path):
    assert_parity(reference_name, frames=16, size=224, batch=2, tmp_path=tmp_path)


# --------------------------------------------------------------------------- PySlowFast files
# torchvision's names -> PySlowFast's (slowfast/models/video_model_builder.py, class MViT and
# slowfast/models/attention.py): the stem is patch_embed.proj, positions are cls_token and
# pos_embed_{spatial,temporal,class}, attention is qkv (or q, k, v), proj, pool_x / norm_x,
# rel_pos_{h,w,t}; blocks have proj (the projected skip), mlp.fc1 / fc2; then norm and
# head.projection
PYSLOWFAST_NAMES = (
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^pos_encoding\.class_token$", "cls_token"),
    (r"^pos_encoding\.spatial_pos$", "pos_embed_spatial"),
    (r"^pos_encoding\.temporal_pos$", "pos_embed_temporal"),
    (r"^pos_encoding\.class_pos$", "pos_embed_class"),
    (r"\.attn\.project\.0\.", ".attn.proj."),
    (r"\.attn\.pool_([qkv])\.pool\.", r".attn.pool_\1."),
    (r"\.attn\.pool_([qkv])\.norm_act\.0\.", r".attn.norm_\1."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"^(blocks\.\d+)\.project\.", r"\1.proj."),
    (r"^head\.1\.", "head.projection."),
)
TORCHVISION = {"mvitv2_s_16x4": "mvit_v2_s", "mvitv1_b_16x4": "mvit_v1_b"}
PYSLOWFAST_SHAPES = {"cls_token": 3, "pos_embed_spatial": 3, "pos_embed_temporal": 3,
                     "pos_embed_class": 3}  # (1, N, C) in PySlowFast


def pyslowfast_state(torchvision_state: dict, separate_qkv: bool) -> dict:
    state = {}
    for key, value in torchvision_state.items():
        for pattern, replacement in PYSLOWFAST_NAMES:
            key = re.sub(pattern, replacement, key)
        if key in PYSLOWFAST_SHAPES:
            value = value.reshape(1, -1, value.shape[-1])
        if separate_qkv and ".attn.qkv." in key:  # PySlowFast's MVIT.SEPARATE_QKV
            for part, chunk in zip("qkv", value.chunk(3)):
                state[key.replace(".qkv.", f".{part}.")] = chunk.clone()
            continue
        state[key] = value
    return state


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_our_names_are_pyslowfast_names(name):
    """Our state dict has exactly PySlowFast's keys and shapes (built on the meta device)."""
    with torch.device("meta"):
        reference = build_video_model("torchvision", name, num_classes=NUM_CLASSES)
        ours = create_model(name, num_classes=NUM_CLASSES)
    state = pyslowfast_state(reference.state_dict(), separate_qkv=False)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in ours.state_dict().items()}


@pytest.mark.parametrize("name,separate_qkv", [
    pytest.param("mvitv2_s_16x4", False, marks=pytest.mark.slow), ("mvitv1_b_16x4", True)])
def test_pyslowfast_pyth_file_loads(name, separate_qkv, tmp_path):
    """A PySlowFast checkpoint (``.pyth``: ``model_state`` beside the epoch, optimizer state and
    config) loads by name and computes torchvision's logits."""
    frames, size = 4, 64
    reference = torchvision_model(name, frames, size)
    state = pyslowfast_state(reference.state_dict(), separate_qkv)
    ours = ours_for(name, frames, size, **REFERENCES[f"torchvision {TORCHVISION[name]}"][2])
    path = tmp_path / f"k400_{name}.pyth"
    torch.save({"epoch": 200, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []},
                "cfg": "MVIT:\n  DEPTH: 16\n"}, path)
    report = load_checkpoint(ours, path, strict=True)
    assert report.format == "official"
    if separate_qkv:
        assert report.converted["blocks.3.attn.q.weight"] == "blocks.3.attn.qkv.weight"
    x = torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-4, rtol=0)


# --------------------------------------------------------------------- parameters and FLOPs
# our name -> (paper_numbers.json "video" entry, clip)
PAPER_MODELS = {
    "mvitv2_s_16x4": ("MViTv2-S_16x4", (16, 224)),
    "mvitv2_b_32x3": ("MViTv2-B_32x3", (32, 224)),
    "mvitv1_b_16x4": ("MViTv1-B_16x4", (16, 224)),
    "mvitv1_b_32x3": ("MViTv1-B_32x3", (32, 224)),
}


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_parameters_match_the_papers(name, paper_numbers):
    """K400 heads (400 classes), counted by fvcore as the papers did; built on the meta device."""
    target = paper_numbers["video"][PAPER_MODELS[name][0]]["params_m"]
    with torch.device("meta"):
        model = create_model(name, num_classes=400)
    count = parameter_count(model)[""] / 1e6
    assert count == pytest.approx(target, rel=0.01)


@pytest.mark.slow
def test_flops_are_counted_as_torchvision_counts_its_model():
    """fvcore counts every op of ours (no attention kernel left uncounted) and the same total as
    torchvision's mvit_v2_s, same clip (4 x 64²)."""
    x = torch.zeros(1, 3, 4, 64, 64)
    ours = FlopCountAnalysis(ours_for("mvitv2_s_16x4", 16, 224), x)
    reference = FlopCountAnalysis(torchvision_model("mvitv2_s_16x4", 4, 64), x)
    ours_g = gflops(ours)
    assert not uncounted_attention(ours), ours.unsupported_ops()
    assert ours_g == pytest.approx(gflops(reference), rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_flops_match_the_papers(name, paper_numbers):
    """fvcore FLOPs of one view (the default model, 400 classes) within 1% of the papers."""
    entry, (frames, size) = PAPER_MODELS[name]
    target = paper_numbers["video"][entry]["gflops"]
    analysis = FlopCountAnalysis(create_model(name, num_classes=400).eval(),
                                 torch.zeros(1, 3, frames, size, size))
    count = gflops(analysis)
    assert not uncounted_attention(analysis), analysis.unsupported_ops()
    assert within_printed(count, target), f"{name}: {count:.2f} GFLOPs vs the paper's {target}"


# -------------------------------------------------------------------------------- inflation
def test_inflated_image_model_on_identical_frames_equals_the_image_model(tmp_path):
    """An ImageNet MViTv2 inflated to video, on a clip of T identical frames x, gives the image
    model's logits on x.

    Why: the stem and every Q/K/V pooling conv hold the 2-D filter in their centre frame and
    zeros elsewhere, so each output frame is the 2-D filter of one input frame, and all frames'
    tokens are the image's tokens. In attention every key then appears T' times (once per
    frame) with the same spatial rel-pos, and the temporal rel-pos is zero: the softmax weight of
    each copy is 1/T' of the image's and the T' copies sum to the image's output. Norms, MLPs,
    skips and the spatial max-pool act per token or per frame; averaging all tokens averages T'
    copies of the image's. Hence the image's logits, up to float rounding (1e-5).

    It needs a model without a class token: a class token would be one key beside T' copies of
    the grid keys, its softmax share shrinking with T', so the video model's output would differ
    (checked below). The image model has none (MViTv2's ImageNet models pool by averaging), so
    the video model is built without one here.
    """
    torch.manual_seed(0)
    image_model = create_model("mvitv2_nano", num_classes=NUM_CLASSES).eval()
    path = tmp_path / "in1k_nano.pth"
    torch.save({"model": image_model.state_dict()}, path)
    video_model = create_model("mvitv2_video_nano", num_classes=NUM_CLASSES, use_cls_token=False).eval()
    report = load_checkpoint(video_model, path, strict=True)
    assert "patch_embed.proj.weight" in report.inflated
    assert "blocks.1.attn.pool_q.weight" in report.inflated
    assert report.inflated["blocks.0.attn.rel_pos_t"].startswith("zeros")
    assert "blocks.0.attn.rel_pos_h" in report.interpolated  # built for 224², video nano 64²
    assert "inflated 2-D -> 3-D patch_embed.proj.weight" in str(report)
    torch.testing.assert_close(video_model.patch_embed.proj.weight[:, :, 1],
                               image_model.patch_embed.proj.weight)
    assert not video_model.patch_embed.proj.weight[:, :, [0, 2]].any()

    frame = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    clip = frame[:, :, None].expand(-1, -1, 8, -1, -1).contiguous()
    with torch.no_grad():
        expected, got = image_model(frame), video_model(clip)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    with_class_token = create_model("mvitv2_video_nano", num_classes=NUM_CLASSES).eval()
    load_checkpoint(with_class_token, path, strict=False)
    with torch.no_grad():
        assert not torch.allclose(with_class_token(clip), expected, atol=1e-3)


def test_mvitv1_image_checkpoint_inflates_to_separate_space_and_time_positions():
    """An MViTv1 image checkpoint (one ``pos_embed`` with the class position first) into the
    video model: ``pos_embed_class`` and ``pos_embed_spatial`` come from it, the temporal
    positions start at zero, and the report says so."""
    small = dict(depth=3, last_block_indexes=(0, 1, 2), num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    image_model = create_model("mvitv1_b16", img_size=64, pretrain_img_size=64, **small)
    # the image model pools Q in every block; build the video model's blocks alike
    video_model = create_model("mvitv1_b_16x4", num_frames=4, img_size=64,
                               pool_q_unstrided=True, **small)
    report = load_checkpoint(video_model, image_model.state_dict(), strict=True)
    pos = image_model.pos_embed
    torch.testing.assert_close(video_model.pos_embed_class, pos[:, :1])
    torch.testing.assert_close(video_model.pos_embed_spatial, pos[:, 1:])
    assert not video_model.pos_embed_temporal.any()
    assert set(report.inflated) >= {"pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}


# -------------------------------------------------------------------- any clip, any size
@pytest.mark.parametrize("name", ["mvitv2_video_nano", "mvitv1_b_16x4"])
@pytest.mark.parametrize("clip", [(8, 64, 64), (5, 48, 80), (2, 32, 32), (12, 96, 64)])
def test_any_clip_length_and_frame_size_runs(name, clip):
    small = {} if name == "mvitv2_video_nano" else dict(
        embed_dim=16, depth=4, last_block_indexes=(0, 1, 2, 3), num_frames=8, img_size=64)
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, **small).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *clip))
    assert logits.shape == (1, NUM_CLASSES) and torch.isfinite(logits).all()


def test_checkpoint_of_another_clip_size_interpolates():
    """Weights trained on 8 x 64² clips load into a model built for 16 x 96²: temporal and
    spatial rel-pos tables and separate absolute positions are interpolated and listed."""
    torch.manual_seed(0)
    v2_small, v2_large = (create_model("mvitv2_video_nano", num_frames=t, img_size=s)
                          for t, s in ((8, 64), (16, 96)))
    report = load_checkpoint(v2_large, v2_small.state_dict(), strict=True)
    assert report.interpolated["blocks.0.attn.rel_pos_t"] == ((7, 32), (15, 32))
    small = dict(embed_dim=16, depth=2, last_block_indexes=(0, 1))
    v1_small, v1_large = (create_model("mvitv1_b_16x4", num_frames=t, img_size=s, **small)
                          for t, s in ((8, 64), (16, 96)))
    report = load_checkpoint(v1_large, v1_small.state_dict(), strict=True)
    assert report.interpolated["pos_embed_temporal"] == ((1, 4, 16), (1, 8, 16))
    assert report.interpolated["pos_embed_spatial"] == ((1, 256, 16), (1, 576, 16))


# ----------------------------------------------------------------------- kernel policies
@pytest.mark.parametrize("name,clip", [
    ("mvitv2_video_nano", (2, 3, 4, 48, 48)),
    # batch x frames x pixels above the recompute threshold: the recomputing fast blocks
    pytest.param("mvitv2_video_nano", (2, 3, 16, 128, 128), marks=pytest.mark.slow),
    ("mvitv1_b_16x4", (2, 3, 6, 48, 64)),
])
def test_kernel_policies_give_equal_outputs_and_gradients(name, clip):
    """``kernels="auto"`` (oneDNN blocks, custom attention nodes) and ``"reference"`` give the
    same logits and gradients on video models (class token kept out of residual pooling in v2;
    separate positions and unpooled Q in v1)."""
    small = {} if name == "mvitv2_video_nano" else dict(
        embed_dim=16, depth=4, last_block_indexes=(0, 1, 2, 3), num_frames=8, img_size=64)
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, head_dropout=0.0, drop_path_rate=0.0,
                         **small).train()
    _assert_policies_agree(_AsDict(model, lambda m, x: {"logits": m(x)}), torch.randn(*clip))


def test_mvitv1_blocks_pool_the_query_only_at_stage_transitions():
    """MViTv1 (App. D): Q pooled at the first block of stages 2-4 only; K/V strides 1x8x8,
    1x4x4, 1x2x2, 1x1x1 by stage; channels expand in the MLP of a stage's last block."""
    with torch.device("meta"):
        model = create_model("mvitv1_b_16x4")
    pooled = [i for i, b in enumerate(model.blocks) if not isinstance(b.attn.pool_q, torch.nn.Identity)]
    assert pooled == [1, 3, 14]
    strides = [b.attn.cfg.stride_kv for b in model.blocks]
    assert strides[0] == (1, 8, 8) and strides[1] == (1, 4, 4) and strides[3] == (1, 2, 2)
    assert strides[14] == (1, 1, 1)
    assert model.blocks[0].mlp.fc2.out_features == 192 and model.blocks[0].attn.qkv.in_features == 96
