"""The oneDNN linear and fused MLP: same outputs and gradients as F.linear and timm's Mlp, and
less kept for backward."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp as TimmMlp

from mvit_backbone.kernels.linear import TOKEN_CHUNK, linear, mlp_forward, onednn_applies
from mvit_backbone.layers import Mlp

needs_onednn = pytest.mark.skipif(
    not onednn_applies(torch.zeros(1), torch.zeros(1)), reason="oneDNN linear not available"
)


def _grads(fn, params, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().requires_grad_(True)
    out = fn(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return (out.detach(), x.grad, *(p.grad for p in params))


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_nn_linear(bias):
    torch.manual_seed(0)
    ours = nn.Linear(96, 288, bias=bias)
    ref = nn.Linear(96, 288, bias=bias)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 300, 96)
    got = _grads(lambda t: linear(t, ours.weight, ours.bias), list(ours.parameters()), x)
    for a, b in zip(got, _grads(ref, list(ref.parameters()), x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("tokens", [50, 2 * TOKEN_CHUNK + 100], ids=["one_chunk", "three_chunks"])
def test_mlp_matches_timm_mlp_forward_backward_and_inference(tokens):
    """Also over several token chunks (the GELU and its gradient are computed per chunk)."""
    torch.manual_seed(0)
    ours = Mlp(64, 256, 96)
    ref = TimmMlp(64, 256, 96)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, tokens, 64)
    pairs = list(zip(_grads(lambda t: mlp_forward(ours, t), list(ours.parameters()), x),
                     _grads(ref, list(ref.parameters()), x)))
    for a, b in pairs[:2]:  # output and input gradient
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in pairs[2:]:  # parameter gradients
        if tokens <= TOKEN_CHUNK:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            # sums over 3 x 4196 tokens, which ours adds up chunk by chunk: float rounding
            # of that order, compared relative to the gradient's scale
            assert (a - b).abs().max() <= 5e-5 * b.abs().max(), a.shape
    with torch.no_grad():
        torch.testing.assert_close(mlp_forward(ours, x), ref(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_mlp_keeps_only_input_and_pre_activation_for_backward():
    """The fused MLP stores x and fc1's output; timm's stores GELU's output too."""
    torch.manual_seed(0)
    x = torch.randn(1000, 32, requires_grad=True)

    def saved_numel(module, fn):
        params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        storages = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                storages[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sum(storages.values()) // 4

    ours, ref = Mlp(32, 128, 32), TimmMlp(32, 128, 32)
    assert saved_numel(ours, lambda t: mlp_forward(ours, t)) == 1000 * (32 + 128)
    assert saved_numel(ref, ref) == 1000 * (32 + 128 + 128)


def test_onednn_applies_to_cpu_float32_without_autocast_only():
    weight = torch.randn(4, 8)
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_applies(x, weight)
    assert not onednn_applies(x.double(), weight.double())
    # other dtypes still compute the same Linear (on F.linear)
    torch.testing.assert_close(linear(x.double(), weight.double()), F.linear(x.double(), weight.double()))
