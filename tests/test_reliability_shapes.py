"""Any input size and batch through the trunk (property tests with hypothesis): every window
mode, both execution policies, rel-pos and abs-pos on and off, 2-D and 3-D. Each case must run,
give the output shapes the strides say, and no NaN or inf; sizes below one patch are a
ValueError saying the minimum; a batch of 0 gives empty outputs of the right shapes; a dtype
other than the weights' and NaN input are ValueErrors.

Slim trunks (width 8, one block per stage) keep the cases fast. The large-size test uses
16-pixel patches so that a 1400 x 1400 input stays cheap for global attention; the small-size
test uses detectron2's 7/4/3 patch embedding. ``make test-slow`` runs the same properties with
many more examples; the counts are printed (``-s``) and quoted in docs/RELIABILITY.md.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvit_backbone.detection import MViT
from mvit_backbone.mvit import WINDOW_MODES, MViTTrunk

POLICIES = ("auto", "reference")
CASES: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def report_case_counts():
    yield
    print(f"\nshape property cases run: {CASES} (total {sum(CASES.values())})")


@functools.lru_cache(maxsize=None)
def slim_backbone(patch: int, window_mode: str, kernels: str, rel_pos: bool, abs_pos: bool) -> MViT:
    torch.manual_seed(0)
    kernel, padding = (16, 0) if patch == 16 else (7, 3)
    model = MViT(
        patch_kernel=(kernel, kernel), patch_stride=(patch, patch), patch_padding=(padding, padding),
        embed_dim=8, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3),
        adaptive_window_size=8, adaptive_kv_stride=4, window_mode=window_mode, kernels=kernels,
        use_rel_pos=rel_pos, use_abs_pos=abs_pos, img_size=224, pretrain_img_size=224,
    )
    # rel-pos tables start at zero: make them count
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.02)
    return model.eval()


def expected_grids(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
                   padding: tuple[int, ...], stages: int) -> list[tuple[int, ...]]:
    """Patch conv output, then the spatial axes halve (rounding up) at every later stage."""
    grid = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding)]
    grids = [tuple(grid)]
    for _ in range(stages - 1):
        grid = grid[:-2] + [(n - 1) // 2 + 1 for n in grid[-2:]]
        grids.append(tuple(grid))
    return grids


def check_backbone(model: MViT, batch: int, height: int, width: int, key: str) -> None:
    conv = model.patch_embed.proj
    x = torch.randn(batch, 3, height, width)
    with torch.no_grad():
        out = model(x)
    grids = expected_grids((height, width), conv.kernel_size, conv.stride, conv.padding, 4)
    for (name, feature), grid, channels in zip(out.items(), grids, model.stage_channels):
        assert feature.shape == (batch, channels, *grid), (name, feature.shape, grid)
        assert feature.dtype == torch.float32
        assert torch.isfinite(feature).all(), name
    CASES[key] = CASES.get(key, 0) + 1


configs = st.tuples(st.sampled_from(WINDOW_MODES), st.sampled_from(POLICIES), st.booleans(),
                    st.booleans())


def property_test(max_examples: int, **strategies):
    """``@given(**strategies)`` with ``max_examples`` cases and no per-case deadline."""
    def decorate(test):
        return settings(max_examples=max_examples, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])(given(**strategies)(test))
    return decorate


large_sizes = dict(config=configs, batch=st.integers(0, 3), height=st.integers(16, 1400),
                   width=st.integers(16, 1400))
small_sizes = dict(config=configs, batch=st.integers(0, 3), height=st.integers(4, 160),
                   width=st.integers(4, 160))


def _large(config, batch, height, width):
    # large inputs at batch 3 would cost more than they add: the batch is tested at all sizes
    if height * width > 600 * 600:
        batch = min(batch, 1)
    check_backbone(slim_backbone(16, *config), batch, height, width, "2-D, patch 16, 16..1400")


def _small(config, batch, height, width):
    check_backbone(slim_backbone(4, *config), batch, height, width, "2-D, patch 4, 4..160")


@property_test(4, **large_sizes)
def test_any_size_up_to_1400(config, batch, height, width) -> None:
    _large(config, batch, height, width)


@property_test(10, **small_sizes)
def test_any_small_size_with_detectron2_patches(config, batch, height, width) -> None:
    _small(config, batch, height, width)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@property_test(200, **large_sizes)
def test_any_size_up_to_1400_many(config, batch, height, width) -> None:
    _large(config, batch, height, width)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@property_test(400, **small_sizes)
def test_any_small_size_with_detectron2_patches_many(config, batch, height, width) -> None:
    _small(config, batch, height, width)


@functools.lru_cache(maxsize=None)
def slim_video_trunk(kernels: str, rel_pos: bool, abs_pos: bool) -> MViTTrunk:
    torch.manual_seed(0)
    return MViTTrunk(
        patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
        qkv_pool_kernel=(3, 3, 3), embed_dim=8, depth=3, num_heads=1,
        last_block_indexes=(0, 1, 2), adaptive_kv_stride=4, window_mode="none", num_frames=4,
        img_size=32, pretrain_img_size=32, kernels=kernels, use_rel_pos=rel_pos,
        use_abs_pos=abs_pos,
    ).eval()


def _video(config, batch, frames, height, width):
    kernels, rel_pos, abs_pos = config
    trunk = slim_video_trunk(kernels, rel_pos, abs_pos)
    x = torch.randn(batch, 3, frames, height, width)
    with torch.no_grad():
        stages = trunk.forward_stages(x)
    grids = expected_grids((frames, height, width), (3, 7, 7), (2, 4, 4), (1, 3, 3), 3)
    for (tokens, grid), expected, channels in zip(stages, grids, trunk.stage_channels):
        assert grid == expected
        assert tokens.shape == (batch, math.prod(grid), channels)
        assert torch.isfinite(tokens).all()
    CASES["3-D, 2..12 frames, 4..96"] = CASES.get("3-D, 2..12 frames, 4..96", 0) + 1


video_cases = dict(config=st.tuples(st.sampled_from(POLICIES), st.booleans(), st.booleans()),
                   batch=st.integers(0, 2), frames=st.integers(2, 12), height=st.integers(4, 96),
                   width=st.integers(4, 96))


@property_test(6, **video_cases)
def test_any_video_size(config, batch, frames, height, width) -> None:
    _video(config, batch, frames, height, width)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@property_test(250, **video_cases)
def test_any_video_size_many(config, batch, frames, height, width) -> None:
    _video(config, batch, frames, height, width)


@property_test(6, mode=st.sampled_from(WINDOW_MODES), height=st.integers(1, 40),
               width=st.integers(1, 40))
def test_too_small_is_a_value_error_saying_the_minimum(mode, height, width) -> None:
    model = slim_backbone(16, mode, "auto", True, False)
    x = torch.randn(1, 3, height, width)
    if height >= 16 and width >= 16:
        assert model(x)["scale2"].shape[0] == 1
    else:
        with pytest.raises(ValueError, match="minimum size is 16 x 16"):
            model(x)
    video = slim_video_trunk("auto", True, False)
    with pytest.raises(ValueError, match="minimum size is 2 x 4 x 4"):
        video.forward_stages(torch.randn(1, 3, 1, 8, 8))


def test_batch_zero_matches_batch_one_shapes() -> None:
    model = slim_backbone(4, "hwin", "auto", True, True)
    one, zero = model(torch.randn(1, 3, 77, 131)), model(torch.randn(0, 3, 77, 131))
    for name in one:
        assert zero[name].shape == (0, *one[name].shape[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_to_a_float_model_is_a_clear_error(dtype) -> None:
    model = slim_backbone(4, "hwin", "auto", True, False)
    with pytest.raises(ValueError, match=f"input dtype {dtype} differs from the model's "
                                         r"torch.float32: cast the input"):
        model(torch.randn(1, 3, 32, 32, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision casts: allowed
        assert torch.isfinite(model(torch.randn(1, 3, 32, 32, dtype=dtype))["scale5"]).all()
    with pytest.raises(ValueError, match="floating-point input, got torch.uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_nan_input_is_a_clear_error_unless_switched_off() -> None:
    model = slim_backbone(4, "none", "reference", False, False)
    x = torch.randn(2, 3, 32, 32)
    x[1, 0, 5, 5] = math.nan
    x[0, 2, 1, 1] = math.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values \(2 of 6144\)"):
        model(x)
    model.check_finite_input = False
    try:
        out = model(x)["scale5"]
        assert torch.isnan(out[1]).any()  # what goes in comes out: the check was the guard
    finally:
        model.check_finite_input = True
