"""Parity with timm: timm's MViTv2 image models with random weights, converted into ours by
``mvit_backbone.load_checkpoint``, give the same logits in fp32 at 224x224."""
from __future__ import annotations

import pytest
import timm
import torch

import mvit_backbone

PAIRS = [
    ("mvitv2_tiny", "mvitv2_t"),
    pytest.param("mvitv2_small", "mvitv2_s", marks=pytest.mark.slow),
    pytest.param("mvitv2_base", "mvitv2_b", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("timm_name,our_name", PAIRS)
def test_timm_logits_match(timm_name: str, our_name: str) -> None:
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False, num_classes=1000).eval()
    # random weights everywhere, including the parts timm initialises to zero
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "rel_pos" in name or name.startswith("head"):
                p.normal_(0.0, 0.02)
    ours = mvit_backbone.create_model(our_name, num_classes=1000).eval()
    report = mvit_backbone.load_checkpoint(ours, reference.state_dict(), strict=True)
    assert report.format == "timm" and not report.missing and not report.unexpected
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert got.shape == expected.shape == (2, 1000)
    assert expected.abs().max() > 1e-2  # a head that outputs zeros would match trivially
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
