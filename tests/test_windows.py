"""Windows: runs of equal windows without padded queries, and the window padding options
against detectron2's padding."""
import pytest
import torch

from mvit_backbone import MViT
from mvit_backbone.layers import MultiScaleAttention, window_runs


def test_window_runs_skip_padded_queries():
    # 20 query rows, window 8: two full windows and one of 4 rows; keys padded to whole windows
    assert window_runs(20, 8, 10, 4, pad_keys=True) == [(0, 8, 0, 4, 2), (16, 4, 8, 4, 1)]
    assert window_runs(20, 8, 10, 4, pad_keys=False) == [(0, 8, 0, 4, 2), (16, 4, 8, 2, 1)]
    # smaller than one window: a single window of the map's size
    assert window_runs(6, 8, 3, 4, pad_keys=False) == [(0, 6, 0, 3, 1)]
    with pytest.raises(ValueError, match="different numbers of windows"):
        window_runs(17, 8, 4, 4, pad_keys=True)


def _models(**kw):
    # a small hwin model: 4 stages of one block, windows 16, 8, 4 on the stage grids
    args = dict(embed_dim=32, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3),
                adaptive_window_size=16, rel_pos_zero_init=False)
    torch.manual_seed(0)
    d2_pad = MViT(**args, window_padding="detectron2", **kw).eval()
    minimal = MViT(**args, window_padding="minimal", **kw).eval()
    minimal.load_state_dict(d2_pad.state_dict())
    return d2_pad, minimal


@pytest.mark.parametrize("window_mode", ["hwin", "swin"])
def test_minimal_padding_equals_detectron2_on_window_multiples(window_mode):
    """Pooled grids that are window multiples need no padding: both options agree exactly."""
    d2_pad, minimal = _models(window_mode=window_mode)
    x = torch.randn(1, 3, 256, 192)  # stage grids 64x48, 32x24, 16x12: windows 16, 8, 4
    with torch.no_grad():
        a, b = d2_pad(x), minimal(x)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5)


def test_minimal_padding_differs_where_detectron2_pads():
    """detectron2's zero keys take part in the softmax; without them border windows differ."""
    d2_pad, minimal = _models()
    x = torch.randn(1, 3, 200, 232)
    with torch.no_grad():
        a, b = d2_pad(x)["scale2"], minimal(x)["scale2"]
    assert a.shape == b.shape
    assert (a - b).abs().max() > 1e-4


def test_unknown_options_raise():
    with pytest.raises(ValueError, match="window_padding must be one of"):
        MultiScaleAttention(16, 16, window_padding="none")
    with pytest.raises(ValueError, match="pool_mode must be one of"):
        MultiScaleAttention(16, 16, pool_mode="sum")
    with pytest.raises(ValueError, match="2-D inputs only"):
        MultiScaleAttention(16, 16, pool_kernel=(3, 3, 3), window_size=8)
