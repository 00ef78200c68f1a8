"""Behaviour of the MViT trunk: rel-pos interpolation, Swin masking, checkpointing, errors."""
import pytest
import torch

from mvit_backbone import MViT, mvitv2_variant
from mvit_backbone.layers import MultiScaleAttention, rel_pos_lookup, resize_rel_pos


def test_resize_rel_pos_is_identity_at_own_size():
    table = torch.randn(111, 16)
    assert resize_rel_pos(table, 111) is table
    # the lookup at the built size uses the table as is: offset 0 is the centre row
    lookup = rel_pos_lookup(56, 56, table)
    assert torch.equal(lookup[10, 10], table[55])
    assert torch.equal(lookup[0, 55], table[0])
    # interpolation keeps the end points of a linear ramp and stays linear
    ramp = torch.linspace(0, 1, 13)[:, None].repeat(1, 4)
    big = resize_rel_pos(ramp, 51)
    assert big.shape == (51, 4)
    assert torch.all(big[1:, 0] >= big[:-1, 0])


def test_swin_mask_blocks_attention_across_wrapped_border():
    """The shifted window holding the bottom-right corner also holds the top/left rows after
    the roll; a corner query must get no gradient from them, but does from its own region."""
    torch.manual_seed(0)
    size, window = 16, 8
    attn = MultiScaleAttention(
        16, 16, num_heads=2, window_size=window, shift_windows=True,
        use_rel_pos=True, rel_pos_zero_init=False, input_size=(size, size),
    )
    x = torch.randn(1, size * size, 16, requires_grad=True)
    out, shape = attn(x, (size, size))
    assert shape == (size, size)
    corner = (size - 1) * size + (size - 1)
    out[0, corner].sum().backward()
    grad = x.grad[0].abs().sum(-1).reshape(size, size)
    half = window // 2
    assert grad[:half, :].sum() == 0  # top rows: wrapped into the corner's window
    assert grad[:, :half].sum() == 0  # left columns: idem
    assert grad[size - half:, size - half:].sum() > 0  # its own region contributes
    # without the shift the corner window is an ordinary window: rows above it contribute
    plain = MultiScaleAttention(
        16, 16, num_heads=2, window_size=window, shift_windows=False,
        use_rel_pos=True, input_size=(size, size),
    )
    plain.load_state_dict(attn.state_dict())
    x2 = x.detach().clone().requires_grad_(True)
    plain(x2, (size, size))[0][0, corner].sum().backward()
    g2 = x2.grad[0].abs().sum(-1).reshape(size, size)
    assert g2[window:window + half, window:].sum() > 0
    assert g2[:half].sum() == 0


@pytest.mark.parametrize("mode", ["hwin", "swin", "window", "none"])
def test_window_modes_run_on_odd_sizes(mode):
    torch.manual_seed(0)
    model = MViT(**mvitv2_variant("T"), window_mode=mode).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 333, 517))
    assert out["scale3"].shape == (1, 192, 42, 65)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_swin_differs_from_plain_windows():
    torch.manual_seed(0)
    swin = MViT(**mvitv2_variant("T"), window_mode="swin", adaptive_window_size=16).eval()
    plain = MViT(**mvitv2_variant("T"), window_mode="window", adaptive_window_size=16).eval()
    plain.load_state_dict(swin.state_dict())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a, b = swin(x)["scale3"], plain(x)["scale3"]
    assert (a - b).abs().max() > 1e-3


def test_activation_checkpointing_same_outputs_and_grads():
    torch.manual_seed(0)
    args = dict(mvitv2_variant("T"), adaptive_window_size=16, rel_pos_zero_init=False)
    plain = MViT(**args).train()
    ckpt = MViT(**args, use_act_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 128, 160)
    outs = []
    for model in (plain, ckpt):
        out = model(x)
        sum((v * (i + 1)).sum() for i, v in enumerate(out.values())).backward()
        outs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = outs
    for k in o1:
        torch.testing.assert_close(o1[k], o2[k], atol=1e-6, rtol=0)
    assert g1.keys() == g2.keys()
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-5, rtol=1e-4)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = MViT(**mvitv2_variant("T"), drop_path_rate=0.5)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x)["scale5"], model(x)["scale5"]
    assert torch.equal(a, b)


class TestBadInput:
    model = MViT(**mvitv2_variant("T"))

    def test_wrong_channels(self):
        with pytest.raises(ValueError, match="3 input channels, got 1"):
            self.model(torch.randn(1, 1, 64, 64))

    def test_3d_tensor(self):
        with pytest.raises(ValueError, match="4-D tensor.*got a 3-D tensor"):
            self.model(torch.randn(3, 64, 64))

    def test_video_tensor_to_image_model(self):
        with pytest.raises(ValueError, match="got a 5-D tensor"):
            self.model(torch.randn(1, 3, 4, 64, 64))

    def test_smaller_than_a_patch(self):
        with pytest.raises(ValueError, match="smaller than one patch"):
            self.model(torch.randn(1, 3, 3, 64))

    def test_unknown_window_mode(self):
        with pytest.raises(ValueError, match="window_mode must be one of"):
            MViT(**mvitv2_variant("T"), window_mode="shifted")

    def test_unknown_variant(self):
        with pytest.raises(ValueError, match="unknown MViTv2 variant 'X'"):
            mvitv2_variant("X")

    def test_unknown_out_feature(self):
        with pytest.raises(ValueError, match="unknown out_feature 'res4'"):
            MViT(**mvitv2_variant("T"), out_features=("res4",))
