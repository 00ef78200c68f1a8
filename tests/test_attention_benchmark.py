"""Attention mechanisms side by side (MViTv2 Table 4) and the mean attention distance (MViTv1
Fig. A.6): the rows against the paper's FLOPs and memory order, the distance on cases whose
answer is known, and both tools end to end."""
from __future__ import annotations

import itertools
import json
import math
import runpy
import sys

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from mvit_backbone import create_model
from mvit_backbone.benchmark import ATTENTION_VARIANTS
from mvit_backbone.benchmark.attention import (
    build_row_model,
    row_memory_subprocess,
    scaled_windows,
    split_row,
)
from mvit_backbone.benchmark.attention_distance import dynamic_range, mean_attention_distance
from test_classification_complexity import paper_numbers
from test_flops import gflops, uncounted_attention

TABLE4A = "attention_mechanisms_table4a_in1k"
# the ones the default suite counts (about 10 s each here); the others are slow
FAST_FLOP_ROWS = ("MViTv2-S/pooling+hwin",)


def test_rows_are_named_after_table4():
    table = paper_numbers()[TABLE4A]
    printed = {f"{m}/{k}" for m, rows in table.items() if not m.startswith("_") for k in rows}
    assert printed | {"ViT-B/pooling+hwin"} == set(ATTENTION_VARIANTS)
    assert "pooling+hwin" in paper_numbers()["attention_mechanisms_table4b_coco_mask_rcnn"]["ViT-B"]


def _flop_rows():
    table = paper_numbers()[TABLE4A]
    for row in ATTENTION_VARIANTS:
        model, mechanism = split_row(row)
        if mechanism in table[model]:
            marks = () if row in FAST_FLOP_ROWS else (pytest.mark.slow,)
            yield pytest.param(row, table[model][mechanism]["gflops"], marks=marks, id=row)


@pytest.mark.parametrize("row, paper_gflops", list(_flop_rows()))
def test_flops_match_table4a(row, paper_gflops):
    """Every row the paper prints, at 224², as built by default: within 3%."""
    torch.manual_seed(0)
    model = build_row_model(row).eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
    count = gflops(analysis)
    assert not uncounted_attention(analysis), analysis.unsupported_ops()
    assert count == pytest.approx(paper_gflops, rel=0.03), f"{row}: {count:.2f} vs {paper_gflops}"


def test_vit_b_is_vit_b():
    """ViT-B/16: 86.6M parameters with 1000 classes; "pooling" keeps the width, adds a scale."""
    with torch.device("meta"):
        full = create_model("vit_b")
        pooled = build_row_model("ViT-B/pooling")
    assert sum(p.numel() for p in full.parameters()) == pytest.approx(86.57e6, rel=1e-3)
    assert [c.dim_out for c in pooled.block_configs] == [768] * 12
    assert [c.attention.num_heads for c in pooled.block_configs] == [12] * 12
    assert pooled.block_configs[6].attention.stride_q == (2, 2)
    assert [c.attention.stride_kv for c in pooled.block_configs] == [(2, 2)] * 6 + [(1, 1)] * 6
    hwin = build_row_model("ViT-B/hwin", num_classes=10, depth=12, embed_dim=24, num_heads=2)
    assert [c.attention.window_size for c in hwin.block_configs] == [7] * 5 + [0, 7, 7, 0, 7, 7, 0]


def test_windows_scale_with_the_training_image():
    assert scaled_windows("MViTv2-S/pooling+swin", 64) == {"adaptive_window_size": 8}
    assert scaled_windows("ViT-B/hwin", 128) == {"adaptive_window_size": 4}
    assert scaled_windows("ViT-B/full", 96) == {}
    with pytest.raises(ValueError, match="does not scale"):
        scaled_windows("MViTv2-S/pooling+hwin", 100)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # five fresh processes each building and training a full model
def test_peak_training_memory_orders_as_table4a():
    """Peak memory of a training step (fresh process per row, batch 2, explicit attention as
    the paper's implementation): ViT-B full > Hwin > window; MViTv2-S pooling > pooling+Hwin."""
    mib = {row: row_memory_subprocess(row, "classification", 224, 224, batch=2, kernels="reference")
           for row in ("ViT-B/full", "ViT-B/hwin", "ViT-B/fixed_window",
                       "MViTv2-S/pooling", "MViTv2-S/pooling+hwin")}
    print("peak training memory, MiB:", mib)
    assert mib["ViT-B/full"] > mib["ViT-B/hwin"] > mib["ViT-B/fixed_window"], mib
    assert mib["MViTv2-S/pooling"] > mib["MViTv2-S/pooling+hwin"], mib


# --------------------------------------------------------------------------- attention distance


def tiny_vit(**kw) -> torch.nn.Module:
    """A one-block ViT on 64² images: a 4x4 grid of 16-pixel patches, 16 channels."""
    kw = dict(dict(depth=1, last_block_indexes=(0,)), **kw)
    return create_model("vit_b", num_classes=0, embed_dim=16, num_heads=1, img_size=64,
                        pretrain_img_size=64, drop_path_rate=0.0, **kw)


CELLS = [(7.5 + 16 * i, 7.5 + 16 * j) for i in range(4) for j in range(4)]
LARGEST = 16 * 3 * math.sqrt(2)


def expected_uniform(keys_of) -> float:
    """Mean over the 4x4 queries of the mean distance to their keys, normalised."""
    means = [sum(math.dist(q, k) for k in keys_of(q)) / len(keys_of(q)) for q in CELLS]
    return sum(means) / len(means) / LARGEST


@pytest.mark.parametrize("options", [
    {}, dict(window_mode="window", adaptive_window_size=2),
    dict(window_mode="swin", adaptive_window_size=2, depth=2, last_block_indexes=(1,)),
], ids=["global", "window", "swin"])
def test_attention_on_own_position_is_distance_zero(options):
    """Queries and keys are one-hot per position (absolute positions only, Q scaled up): each
    query attends to itself."""
    model = tiny_vit(**options)
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.pos_embed.zero_()
        model.pos_embed[0, torch.arange(16), torch.arange(16)] = 10.0
        for block in model.blocks:
            w = block.attn.qkv.weight
            w.zero_()
            block.attn.qkv.bias.zero_()
            w[:16], w[16:32], w[32:] = 100 * torch.eye(16), torch.eye(16), torch.eye(16)
    distances = mean_attention_distance(model, torch.zeros(2, 3, 64, 64))
    assert len(distances) == len(model.blocks)
    assert all(d.shape == (1,) and float(d) < 1e-4 for d in distances), distances


def same_window(q, k, size=32):
    return all((a - 7.5) // size == (b - 7.5) // size for a, b in zip(q, k))


@pytest.mark.parametrize("options, keys_of", [
    ({}, lambda q: CELLS),
    (dict(window_mode="window", adaptive_window_size=2),
     lambda q: [k for k in CELLS if same_window(q, k)]),
    # K/V pooled by 2 (kernel 3, padding 1): pooled keys at the centres of grid cells 0 and 2
    (dict(kv_stride=2), lambda q: [(7.5 + 32 * i, 7.5 + 32 * j) for i in range(2) for j in range(2)]),
], ids=["global", "window", "kv_stride2"])
def test_uniform_attention_gives_the_mean_distance_of_the_grid(options, keys_of):
    """Zero Q and K: every query spreads its attention evenly over the keys it may see."""
    model = tiny_vit(**options)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.zero_()
        model.blocks[0].attn.qkv.bias.zero_()
    (distance,) = mean_attention_distance(model, torch.randn(2, 3, 64, 64))
    assert float(distance) == pytest.approx(expected_uniform(keys_of), rel=1e-5)


def test_pooled_keys_sit_at_their_kernel_centres():
    """6x6 grid, K/V stride 2: the pooled keys are cells 0, 2, 4 of each axis (not 0.5, 2.5, ...)."""
    model = create_model("vit_b", num_classes=0, embed_dim=16, num_heads=1, depth=1,
                         last_block_indexes=(0,), img_size=96, pretrain_img_size=96, kv_stride=2)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.zero_()
        model.blocks[0].attn.qkv.bias.zero_()
    (distance,) = mean_attention_distance(model, torch.randn(1, 3, 96, 96))
    cells = [(7.5 + 16 * i, 7.5 + 16 * j) for i in range(6) for j in range(6)]
    keys = [(7.5 + 32 * i, 7.5 + 32 * j) for i in range(3) for j in range(3)]
    expected = sum(math.dist(q, k) for q, k in itertools.product(cells, keys)) / (36 * 9)
    assert float(distance) == pytest.approx(expected / (16 * 5 * math.sqrt(2)), rel=1e-5)


def test_distance_of_pooling_and_shifted_window_models_is_in_range():
    """Every head of an MViTv2 with pooling and Swin windows gets a distance in (0, 1)."""
    model = create_model("mvitv2_t", num_classes=0, embed_dim=16, depth=4,
                         last_block_indexes=(0, 1, 2, 3), window_mode="swin",
                         adaptive_window_size=8, img_size=64)
    distances = mean_attention_distance(model, torch.randn(1, 3, 64, 64))
    assert [d.shape[0] for d in distances] == [1, 2, 4, 8]
    assert all(((d > 0) & (d < 1)).all() for d in distances)
    assert dynamic_range(distances) > 0


# --------------------------------------------------------------------------- tools end to end


def run_tool(path: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [path, *argv])
    runpy.run_path(path, run_name="__main__")


def test_attention_distance_tool_writes_its_files(tmp_path, monkeypatch, capsys):
    run_tool("tools/attention_distance.py",
             ["--images", "2", "--size", "64", "--out", str(tmp_path)], monkeypatch)
    summary = json.loads((tmp_path / "attention_distance.json").read_text())
    assert (tmp_path / "attention_distance.png").stat().st_size > 0
    assert set(summary["models"]) == {"vit_b", "mvitv2_s"}
    assert len(summary["models"]["mvitv2_s"]["per_block"]) == 16
    assert "range ratio mvitv2_s / vit_b" in capsys.readouterr().out


def test_benchmark_tool_writes_its_files(tmp_path, monkeypatch, capsys):
    run_tool("tools/benchmark_attention.py",
             ["--rows", "MViTv2-S/pooling_stride8", "--no-memory", "--no-flops", "--batch", "1",
              "--train-batch", "1", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)],
             monkeypatch)
    prefix = tmp_path / "classification_224x224_cpu"
    for suffix in (".md", ".csv", ".json", ".png"):
        assert prefix.with_suffix(suffix).stat().st_size > 0
    (result,) = json.loads(prefix.with_suffix(".json").read_text())["results"]
    assert result["row"] == "MViTv2-S/pooling_stride8" and result["train_steps_per_s"] > 0
    assert result["paper"]["gflops"] == 6.3
    assert "| MViTv2-S/pooling_stride8 | 224×224 |" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1024, 1024), (800, 1333)], ids=["1024", "800x1333"])
def test_every_row_runs_as_a_backbone_at_detection_sizes(size):
    """Windows and strides of every row fit the stage grids of both detection sizes (width / 8)."""
    from mvit_backbone.benchmark.attention import reduced_width

    for row in ATTENTION_VARIANTS:
        model = build_row_model(row, "backbone", **reduced_width(row, 8)).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, *size))
        assert out["scale2"].shape[-2:] == tuple(-(-s // model.patch_stride[0]) for s in size), row
