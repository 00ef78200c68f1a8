"""Parameters and FLOPs of the MViTv2 image models against MViTv2 Table 1, counted as the
papers did: fvcore's ``parameter_count`` and ``FlopCountAnalysis`` (one multiply-add = one
FLOP) at 224x224, 1000 classes. Targets come from ``../shared/reference/paper_numbers.json``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fvcore.nn import FlopCountAnalysis, parameter_count
from fvcore.nn.jit_handles import get_shape

import mvit_backbone

PAPER = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "paper_numbers.json"


def table1() -> dict:
    if not PAPER.is_file():
        pytest.fail(f"paper figures not found at {PAPER.resolve()} (shared/ must sit beside the clone)")
    return json.loads(PAPER.read_text())["mvitv2_image_variants_table1"]


def sdpa_flop_handle(inputs, outputs) -> int:
    """fvcore has no handle for ``aten::scaled_dot_product_attention``; count it as the two
    matmuls it replaces: q·kᵀ (B, h, Lq, D) x (B, h, D, Lk) and attn·v (B, h, Lq, Lk) x (B, h, Lk, Dv)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    lq, d, lk, dv = q[-2], q[-1], k[-2], v[-1]
    return batch * lq * lk * (d + dv)


def count_gflops(model: torch.nn.Module, size: int = 224) -> float:
    flops = FlopCountAnalysis(model.eval(), torch.zeros(1, 3, size, size))
    flops.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_handle)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return flops.total() / 1e9


@pytest.mark.parametrize("variant", ["T", "S", "B"])
def test_params_and_flops_match_table1(variant: str) -> None:
    target = table1()[variant]
    model = mvit_backbone.create_model(f"mvitv2_{variant.lower()}", num_classes=1000)
    params_m = parameter_count(model)[""] / 1e6
    gflops = count_gflops(model)
    assert params_m == pytest.approx(target["params_m"], rel=0.01), f"{variant}: {params_m:.2f}M params"
    assert gflops == pytest.approx(target["gflops"], rel=0.01), f"{variant}: {gflops:.3f} GFLOPs"


def test_flop_count_sees_attention() -> None:
    """The attention matmuls are a real share of the count: without them T is ~0.7 G lower."""
    model = mvit_backbone.create_model("mvitv2_t", num_classes=1000).eval()
    plain = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
    plain.unsupported_ops_warnings(False)
    plain.uncalled_modules_warnings(False)
    by_op = plain.by_operator()
    with_attention = count_gflops(model)
    counted_attention = by_op.get("matmul", 0) + by_op.get("bmm", 0)
    # one of the two paths (explicit matmuls or SDPA) carries the attention FLOPs
    assert with_attention - plain.total() / 1e9 > 0.3 or counted_attention / 1e9 > 0.3


@pytest.mark.parametrize("variant", ["L", pytest.param("H", marks=pytest.mark.slow)])
def test_params_match_table1_large(variant: str) -> None:
    target = table1()[variant]
    model = mvit_backbone.create_model(f"mvitv2_{variant.lower()}", num_classes=1000)
    params_m = parameter_count(model)[""] / 1e6
    assert params_m == pytest.approx(target["params_m"], rel=0.01), f"{variant}: {params_m:.2f}M params"
